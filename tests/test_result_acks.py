"""A finished task's result is released by the worker only when the brain says
it has it: the brain acknowledges each ``TaskDone`` and ``TaskFailed`` (after
its journal holds what the result changed), and the worker sends a result
again until it is acknowledged.

Without the acknowledgement a result that reached a brain which died before
journaling it was gone: the worker had released it once no error came back,
and its task ran again after the brain's restart.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from llmo.proto.errors import ErrorCode
from llmo.proto.messages import Ack, Error, Heartbeat, TaskDone, TaskFailed, TaskStarted
from llmo.worker.link import Link
from tests.brain_fixtures import Rig, plan_text
from tests.test_worker_link import job
from tests.waiting import wait_until
from tests.worker_fixtures import (  # noqa: F401  (fixtures)
    brain_factory,
    worker_factory,
)

pytestmark = pytest.mark.timeout(90)


# --- the brain's side: each result acknowledged, whatever became of it --------------------


def acks_of(rig: Rig, msg_id: str) -> list[Ack]:
    return [m for m in rig.of(Ack) if m.reply_to == msg_id]


def test_the_brain_acknowledges_a_result_it_recorded_and_one_it_no_longer_wants():
    rig = Rig()
    rig.worker("w")
    rig.submit(plan_text("a | cpu | run", "b | cpu | run | a"))
    a = rig.assigns()[0]
    rig.start(a)
    assert not rig.of(Ack)  # a start needs no acknowledgement
    rig.done(a)
    first = rig.state.batches[a.batch_id].tasks["a"]
    assert first.state == "done"
    acked = [m for m in rig.of(Ack) if m.dst == "w"]
    assert len(acked) == 1 and acked[0].ok

    rig.done(a)  # the same result again (its acknowledgement was lost): acknowledged again
    assert len([m for m in rig.of(Ack) if m.dst == "w"]) == 2
    assert rig.state.batches[a.batch_id].tasks["a"].state == "done"


def test_the_brain_acknowledges_a_failure_and_a_result_for_an_unknown_attempt():
    rig = Rig()
    rig.worker("w")
    rig.submit(plan_text("a | cpu | run"))
    a = rig.assigns()[0]
    rig.failed(a, exit_code=3)
    assert len([m for m in rig.of(Ack) if m.dst == "w"]) == 1
    rig.msg(TaskDone(batch_id="nope", task_id="x", attempt_id="nope:x:1"), src="w")
    assert len([m for m in rig.of(Ack) if m.dst == "w"]) == 2


# --- the worker's side: held until acknowledged --------------------------------------------


def sent_link(confirm_s: float = 1.0) -> tuple[Link, list]:
    sent: list = []

    def send(msg):
        stamped = dataclasses.replace(msg, id=f"s{len(sent)}")
        sent.append(stamped)
        return stamped

    def register():
        return Heartbeat(state="cold")

    return Link(send, register, confirm_s=confirm_s), sent


def test_an_unacknowledged_result_is_sent_again_and_released_by_its_ack():
    link, sent = sent_link(confirm_s=1.0)
    done = TaskDone(batch_id="b", task_id="t", attempt_id="b:t:1")
    link.deliver(done, now=0.0)
    assert len(sent) == 1
    link.tick(now=5.0)  # no error, no ack: not released, sent again
    assert link.held == 1 and len(sent) == 2
    assert link.unsettled() == ("b:t:1",)  # heartbeats keep listing the attempt
    link.on_ack(Ack(reply_to=sent[-1].id))
    assert link.held == 0
    link.tick(now=50.0)
    assert len(sent) == 2


def test_a_start_is_still_released_once_no_error_came_back():
    link, sent = sent_link(confirm_s=1.0)
    link.deliver(TaskStarted(batch_id="b", task_id="t", attempt_id="b:t:1"), now=0.0)
    link.tick(now=2.0)
    assert link.held == 0 and len(sent) == 1


def test_an_ack_for_an_earlier_copy_releases_the_result():
    link, sent = sent_link(confirm_s=1.0)
    link.deliver(TaskFailed(batch_id="b", task_id="t", attempt_id="b:t:1", reason="exit"), 0.0)
    link.tick(now=1.5)
    assert len(sent) == 2
    link.on_ack(Ack(reply_to=sent[0].id))  # the brain answers the first copy late
    assert link.held == 0


# --- real sockets: a brain that took the result and died before keeping it -----------------


def test_a_result_taken_by_a_brain_that_died_unacknowledged_reaches_the_next_brain(
    running_broker,
    brain_factory,  # noqa: F811
    worker_factory,  # noqa: F811
    tmp_path,
):
    first = brain_factory(running_broker.endpoint)
    first.ack_results = False  # it reads the result and dies before acknowledging it
    running = worker_factory(running_broker.endpoint)
    running_broker.wait_heard("gpu-t")
    msg = first.send(job(tmp_path, "kept", "echo kept"))
    done = first.expect(TaskDone, attempt_id=msg.attempt_id, timeout=20)
    assert "kept" in done.log_tail
    first.close()

    second = brain_factory(running_broker.endpoint)
    again = second.expect(TaskDone, attempt_id=msg.attempt_id, timeout=20)
    assert "kept" in again.log_tail
    link = running.worker.link
    assert wait_until(lambda: link.held == 0, 10)


def test_a_result_held_for_want_of_an_ack_is_listed_as_held_not_running(
    running_broker,
    brain_factory,  # noqa: F811
    worker_factory,  # noqa: F811
    tmp_path,
):
    brain = brain_factory(running_broker.endpoint)
    brain.ack_results = False  # the ack is lost: the worker sends the result again
    worker_factory(running_broker.endpoint, confirm_s=0.2)
    running_broker.wait_heard("gpu-t")
    msg = brain.send(job(tmp_path, "held", "echo held"))
    brain.expect(TaskDone, attempt_id=msg.attempt_id, timeout=20)
    brain.expect(TaskDone, attempt_id=msg.attempt_id, timeout=20)  # its second copy
    beat = brain.expect(Heartbeat, timeout=20, active=(msg.attempt_id,))
    assert beat.held == (msg.attempt_id,)  # ended: it takes no slot
    assert beat.slots_free == beat.slots_total


def test_a_message_from_the_brain_ends_an_outage_and_a_guessed_return_does_not(caplog):
    link, sent = sent_link(confirm_s=1.0)
    bounce = Error(code=ErrorCode.UNKNOWN_DESTINATION, reply_to="s0", peer="brain", src="broker")
    with caplog.at_level(logging.WARNING, logger="llmo.worker.link"):
        link.deliver(TaskDone(batch_id="b", task_id="t", attempt_id="b:t:1"), now=0.0)
        link.on_error(bounce, now=0.1)
        link.probe("hb1", now=1.0)
        link.tick(now=2.0)  # no error for the probe in time: guessed back, results go again
        assert not link.brain_missing and len(sent) == 3  # Register, then the result
        link.on_error(dataclasses.replace(bounce, reply_to=sent[-1].id), now=2.1)  # late bounce
        assert link.brain_missing
        said = [r for r in caplog.records if "not reachable" in r.getMessage()]
        assert len(said) == 1  # one outage, said once

        link.heard_brain(now=3.0)  # e.g. an assignment arrived: surely back
        assert not link.brain_missing
        assert [type(m).__name__ for m in sent[-2:]] == ["Heartbeat", "TaskDone"]
        link.on_error(dataclasses.replace(bounce, reply_to=sent[-1].id), now=4.0)
        said = [r for r in caplog.records if "not reachable" in r.getMessage()]
        assert len(said) == 2  # a new outage after the brain was heard
