"""The brain's time rules, on the pure core with a fake clock: a result is not
judged lost before it can arrive, and a brain that stood still judges no
worker by the silence it slept through. The broker's tracker follows the same
rule. (The process-level counterparts are in tests/faults/test_exactly_once.py.)"""

from __future__ import annotations

from llmo.brain.config import BrainConfig
from llmo.brain.events import Received, Resumed
from llmo.broker.liveness import Liveness
from llmo.proto.errors import ErrorCode
from llmo.proto.messages import Error, PeerDown, Register, TaskCancel, TaskDone
from llmo.worker.link import Link
from tests.brain_fixtures import Rig, plan_text


def hold(rig: Rig, a, seconds: float) -> None:
    """Let time pass, the worker heartbeating that it runs ``a``."""
    for _ in range(int(seconds)):
        rig.tick(1.0)
        rig.heartbeat(a.dst, active=(a.attempt_id,))


def running(rig: Rig, worker: str = "w1"):
    rig.worker(worker)
    batch = rig.submit(plan_text("a | cpu | a")).batch_id
    a = rig.assigns()[-1]
    rig.start(a)
    rig.heartbeat(worker, active=(a.attempt_id,))
    return batch, a


def test_after_a_restart_a_heartbeat_before_the_held_result_loses_nothing():
    rig = Rig(BrainConfig(lost_grace_s=2.0))
    batch, a = running(rig)
    hold(rig, a, 6.0)  # past the grace: the attempt is old when the brain goes down
    rig.now += 30.0  # the brain was down; the worker finished and holds the result
    rig.feed(Resumed())
    rig.heartbeat("w1", active=())  # the first heartbeat overtakes the held result
    rig.done(a)
    task = rig.task(batch, "a")
    assert task.state == "done" and task.attempts == 1, (task.state, task.attempts)
    assert len(rig.assigns()) == 1  # never assigned again
    assert rig.state.batches[batch].state == "complete"


def test_after_the_hush_an_attempt_missing_from_heartbeats_is_lost():
    rig = Rig(BrainConfig(lost_grace_s=2.0))
    batch, a = running(rig)
    hold(rig, a, 6.0)
    rig.now += 30.0
    rig.feed(Resumed())
    rig.heartbeat("w1", active=())
    assert len(rig.assigns()) == 1  # not yet: its result may still be on its way
    while len(rig.assigns()) == 1 and rig.now < 1_700_000_100.0:
        rig.tick(0.5)  # the worker truly lost it: still missing after the hush
        rig.heartbeat("w1", active=())
    assert rig.assigns()[-1].attempt_id.endswith(":2")
    assert rig.task(batch, "a").lost_workers == 1
    assert rig.state.hush_until <= rig.now


def test_a_brain_that_stood_still_declares_no_worker_down():
    rig = Rig()
    batch, a = running(rig)
    rig.tick(20.0)  # paused: the first timer after the gap has heard nothing yet
    assert rig.state.workers["w1"].alive
    assert any("stood still for 20.0s" in c.text for c in rig.commands if hasattr(c, "text"))
    rig.heartbeat("w1", active=(a.attempt_id,))  # the queued heartbeats arrive
    rig.tick(0.5)
    rig.done(a)
    assert rig.task(batch, "a").attempts == 1 and rig.task(batch, "a").state == "done"
    assert len(rig.assigns()) == 1


def test_after_a_pause_a_worker_still_silent_is_declared_down():
    rig = Rig()
    running(rig)
    rig.tick(20.0)
    assert rig.state.workers["w1"].alive
    for _ in range(4):  # no heartbeat within two intervals of the brain's return
        rig.tick(0.5)
    assert rig.state.workers["w1"].alive
    rig.tick(0.6)
    assert not rig.state.workers["w1"].alive


def test_the_broker_judges_no_peer_by_the_silence_it_slept_through():
    live = Liveness(interval=1.0, liveness=3)
    live.seen("w1", 100.0, heartbeat=True)
    live.seen("w2", 100.0, heartbeat=True)
    assert live.expire(100.5) == []
    assert live.expire(120.0) == []  # the broker stood still 19.5 s
    assert live.jumped == 19.5
    live.seen("w1", 120.5, heartbeat=True)
    assert live.expire(121.5) == []
    assert [peer for peer, _ in live.expire(122.5)] == ["w2"]  # w2 never came back


def test_a_heartbeat_lists_attempts_whose_result_is_held():
    sent = []

    def send(msg):
        sent.append(msg)
        return msg

    link = Link(send, lambda: Register(dst="brain"), confirm_s=2.0)
    done = TaskDone(src="w1", dst="brain", id="d1", batch_id="b", task_id="a", attempt_id="b:a:1")
    link.deliver(done, 0.0)
    assert link.unsettled() == ()  # on its way, ahead of any later heartbeat
    link.on_error(
        Error(src="broker", dst="w1", code=ErrorCode.UNKNOWN_DESTINATION, reply_to="d1"), 0.1
    )
    assert link.unsettled() == ("b:a:1",)  # bounced: held until the brain is back


def test_a_late_result_of_a_lost_attempt_is_accepted_and_the_newer_attempt_aborted():
    rig = Rig()
    batch, a = running(rig)
    rig.worker("w2")
    rig.feed(Received(PeerDown(src="broker", dst="brain", id="p1", peer="w1")))
    again = rig.assigns()[-1]
    assert again.dst == "w2" and again.attempt_id.endswith(":2")
    rig.start(again)
    rig.worker("w1")  # back; it had finished attempt 1 and held the result
    rig.done(a)
    task = rig.task(batch, "a")
    assert task.state == "done" and task.attempt_id == a.attempt_id, task.state
    assert task.attempts == 1
    cancels = rig.of(TaskCancel)
    assert [(c.dst, c.attempt_id, c.mode) for c in cancels] == [("w2", again.attempt_id, "abort")]
    rig.done(again)  # the aborted attempt's own late answer changes nothing
    assert rig.task(batch, "a").state == "done" and rig.task(batch, "a").attempts == 1
    assert rig.state.batches[batch].state == "complete"


def test_a_late_result_never_overrides_a_task_that_ended():
    rig = Rig()
    batch, a = running(rig)
    rig.worker("w2")
    rig.feed(Received(PeerDown(src="broker", dst="brain", id="p1", peer="w1")))
    again = rig.assigns()[-1]
    rig.start(again)
    rig.done(again, exit_code=0)
    rig.worker("w1")
    rig.done(a)
    task = rig.task(batch, "a")
    assert task.attempt_id == again.attempt_id and task.attempts == 1
    ran = [e for e in rig.commands if getattr(e, "text", "").startswith("accepted the late")]
    assert ran == []
