"""The monitor's feed against a real broker and a scripted brain on loopback."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import pytest

from llmo.broker.service import Broker
from llmo.proto.endpoints import Endpoints
from llmo.proto.messages import BRAIN, BatchCancel, Heartbeat, SnapshotRequest
from llmo.proto.pubsub import Published
from llmo.tui.feed import Feed, _Loop
from llmo.tui.model import Model
from llmo.tui.updates import Update
from tests.test_tui_support import FakeRig, batch_view, task_view, worker_view

pytestmark = pytest.mark.timeout(60)


class Harness:
    """A feed in a thread whose updates are folded into a model by ``until``."""

    def __init__(self, endpoints: Endpoints, *, take: bool = True, **kw) -> None:
        kw = {
            "flush_s": 0.05,
            "silence_s": 1.0,
            "snapshot_timeout_s": 0.5,
            "backoff_s": (0.2, 0.4),
            "resync_min_s": 0.2,
            **kw,
        }
        self.updates: queue.SimpleQueue[Update] = queue.SimpleQueue()
        self.seen: list[Update] = []
        self.take = take
        self.feed = Feed(endpoints, self._post, **kw)
        self.model = Model()
        self.thread = threading.Thread(target=self.feed.run, name="feed", daemon=True)
        self.thread.start()

    def _post(self, update: Update) -> None:
        self.updates.put(update)
        if self.take:
            self.feed.taken()

    def settle(self) -> None:
        """Until the feed has heard a publication and taken the snapshot after it: an
        event published from now on is not undone by a snapshot of the scripted brain,
        which may not fold it."""
        self.until(lambda m: self.feed.settled, what="the feed to settle")

    def until(self, check: Callable[[Model], bool], timeout: float = 5.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(self.model):
                return
            try:
                update = self.updates.get(timeout=0.05)
            except queue.Empty:
                continue
            self.seen.append(update)
            self.model.apply(update, time.time())
        link = self.model.link
        raise AssertionError(f"timed out waiting for {what or check}; link {link}")

    def close(self) -> None:
        self.feed.stop()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "the feed did not stop"


def rig_state(rig: FakeRig) -> None:
    rig.set_state(
        workers=[worker_view("gpu-1"), worker_view("gpu-2", "cold")],
        batches=[batch_view("B", "hello", {"done": 1, "running": 1, "ready": 1})],
        tasks=[
            task_view("B", "a", "done"),
            task_view("B", "b", "running", worker="gpu-1", attempt_id="B:b:1"),
            task_view("B", "c", "ready"),
        ],
        rev=10,
    )


@pytest.fixture
def setup(broker_factory):
    made: list = []

    def make(*, brain: bool = True, answering: bool = True, take: bool = True, **kw):
        broker = broker_factory(interval=0.2)
        endpoints = Endpoints(broker.endpoint, broker.pub_endpoint)
        rig = None
        if brain:
            rig = FakeRig(broker.endpoint, workers=("gpu-1", "gpu-2"))
            rig_state(rig)
            rig.answering = answering
            made.append(rig)
        harness = Harness(endpoints, take=take, **kw)
        made.append(harness)
        return broker, rig, harness

    yield make
    for thing in reversed(made):
        thing.close()


def test_joins_late_with_a_snapshot_then_follows_events(setup):
    _, rig, h = setup()
    h.until(lambda m: m.live and "B" in m.batches, what="the snapshot")
    h.settle()
    assert h.model.rev == 10
    assert h.model.tasks["B"]["b"].worker == "gpu-1"
    rig.event("B", "task_succeeded", "b", "done", worker="gpu-1")
    rig.event("B", "task_started", "c", "running", worker="gpu-2", attempt_id="B:c:1")
    h.until(lambda m: m.tasks["B"]["c"].state == "running", what="the events")
    assert h.model.batches["B"].split() == (2, 1, 0, 0)
    assert h.model.tasks["B"]["b"].state == "done"


def test_heartbeats_are_coalesced_while_the_app_is_busy(setup):
    _, rig, h = setup(take=False)
    h.updates.get(timeout=5)  # the app "is busy" with this one: it never says taken
    for i in range(200):
        rig.heartbeat("gpu-1", state="hot", tok_s=float(i))
    for i in range(100):
        rig.event("B", "task_noted", f"t{i}", "ready")
    rig.flush()
    time.sleep(0.5)  # the window in which no second update may be posted
    assert h.updates.empty(), "a second update was posted before the app took the first"
    h.feed.taken()
    merged: list[Update] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            merged.append(h.updates.get(timeout=0.1))
        except queue.Empty:
            continue
        h.feed.taken()
        if sum(e.event == "task_noted" for u in merged for e in u.events) == 100:
            break
    beats = [[hb.tok_s for hb in u.heartbeats if hb.src == "gpu-1"] for u in merged]
    assert all(len(b) <= 1 for b in beats), "an update carried two heartbeats of one worker"
    assert [b for b in beats if b][-1] == [199.0]
    assert sum(len(b) for b in beats) <= 3, "the heartbeats were not replaced while queued"
    noted = [e.task_id for u in merged for e in u.events if e.event == "task_noted"]
    assert noted == [f"t{i}" for i in range(100)]


def test_actions_come_back_with_the_brains_answer(setup):
    _, rig, h = setup()
    h.until(lambda m: m.live, what="the snapshot")
    h.settle()
    h.feed.act("cancel B", BatchCancel(dst=BRAIN, batch_id="B"))
    assert rig.wait_for(BatchCancel).batch_id == "B"
    h.until(lambda m: m.events and m.events[0].text == "cancel B: ok", what="the ack")
    rig.ack = lambda msg: (False, "batch B has already ended (complete)")
    h.feed.act("cancel B", BatchCancel(dst=BRAIN, batch_id="B"))
    h.until(lambda m: "already ended" in m.events[0].text, what="the refusal")
    assert h.model.events[0].level == "error"


def test_a_broker_without_a_brain_is_said_plainly(setup):
    _, _, h = setup(brain=False)
    h.until(lambda m: m.link.state == "no_brain", what="no brain")
    assert "no brain is connected" in h.model.link.detail
    assert h.model.link.retry_at > 0


def test_a_new_batch_and_a_selected_old_batch_bring_snapshots(setup):
    _, rig, h = setup()
    h.until(lambda m: m.live, what="the snapshot")
    h.settle()
    before = len(rig.snapshot_requests)
    rig.set_state(
        batches=[*rig.batches, batch_view("C", "two", {"ready": 1})],
        tasks=[*rig.tasks, task_view("C", "x", "ready")],
    )
    rig.event("C", "batch_accepted", state="running", detail={"plan": "two", "tasks": 1})
    h.until(lambda m: m.batches.get("C") is not None and m.batches["C"].history_path != "")
    assert len(rig.snapshot_requests) > before
    assert "x" in h.model.tasks["C"]
    h.feed.resync("C")
    h.until(lambda m: any(r.batch_id == "C" for r in rig.snapshot_requests), what="narrowed")


def test_a_dropped_link_shows_since_when_and_recovers_with_a_fresh_snapshot(setup):
    broker, rig, h = setup()
    h.until(lambda m: m.live, what="the snapshot")
    h.settle()
    stopped_at = time.time()
    broker.stop()
    h.until(lambda m: m.link.state == "down", timeout=6, what="the link going down")
    since = h.model.link.since
    # since: the last thing heard (the broker may publish a little while it stops)
    assert stopped_at - 1.0 <= since <= stopped_at + 1.0
    requests = len(rig.snapshot_requests)
    rig.event("B", "task_succeeded", "b", "done")  # happens while the link is down
    revived = Broker(broker.endpoint, broker.pub_endpoint, interval=0.2)
    thread = threading.Thread(target=revived.run, daemon=True)
    thread.start()
    try:
        h.until(lambda m: m.live, timeout=10, what="the link coming back")
        h.until(lambda m: m.tasks["B"]["b"].state == "done", what="the missed event")
        assert len(rig.snapshot_requests) > requests
    finally:
        revived.stop()
        thread.join(timeout=5)


def test_stopping_does_not_wait_for_an_unanswered_request(setup):
    _, rig, h = setup(answering=False, snapshot_timeout_s=5.0)
    rig.wait_for(SnapshotRequest)  # the first snapshot request is out and unanswered
    started = time.monotonic()
    h.close()
    # Waiting for the request would take its whole 5 s timeout.
    assert time.monotonic() - started < 5.0


def test_an_action_that_times_out_is_said_plainly(setup):
    _, _, h = setup(answering=False, action_timeout_s=0.3)
    h.feed.act("cancel B", BatchCancel(dst=BRAIN, batch_id="B"))

    def said(m: Model):
        return next((e for e in m.events if e.text.startswith("cancel B")), None)

    h.until(said, what="the action's outcome")
    line = said(h.model)
    assert "no answer from the broker" in line.text and line.level == "error"


def test_a_worker_registering_brings_a_snapshot_with_its_host(setup):
    _, rig, h = setup()
    h.until(lambda m: m.live, what="the snapshot")
    h.settle()
    before = len(rig.snapshot_requests)
    rig.set_state(workers=[worker_view("gpu-1", host="rig-a", pid=77), worker_view("gpu-2")])
    rig.event("", "worker_registered", worker="gpu-1", detail={"role": "worker", "slots": 1})
    h.until(lambda m: m.workers["gpu-1"].host == "rig-a", what="the worker's host")
    assert len(rig.snapshot_requests) > before
    assert h.model.workers["gpu-1"].pid == 77


class Publications:
    def __init__(self, *messages):
        self.items = [Published(seq=n, message=m, gap=0) for n, m in enumerate(messages, 1)]

    def recv(self, timeout=None):
        return self.items.pop(0) if self.items else None


def test_the_first_publication_heard_after_a_snapshot_brings_another():
    # The SUB socket connects in the background: what was published before the
    # subscription took effect is lost with no gap to show it, and a snapshot taken
    # before then may lack it. One taken after a publication arrived holds it.
    feed = Feed(Endpoints("tcp://127.0.0.1:1", "tcp://127.0.0.1:2"), lambda update: None)
    beat = Heartbeat(src="gpu-1", dst=BRAIN)
    loop = _Loop(feed, Publications(beat, beat), client=None)  # type: ignore[arg-type]
    loop.need_full, loop.last_full = False, feed.monotonic()  # as after the first snapshot
    loop.receive(0)
    assert loop.need_full
    loop.need_full = False
    loop.sub = Publications(beat)
    loop.receive(0)
    assert not loop.need_full  # the second publication proves nothing new
    before = _Loop(feed, Publications(beat), client=None)  # type: ignore[arg-type]
    before.need_full = False  # (as if the first snapshot were not due: it is, at start)
    before.receive(0)
    assert not before.need_full  # no snapshot yet: the first one, still to come, holds it


class Answers:
    """Requests answered from a list, for a feed loop without sockets."""

    def __init__(self, *replies):
        self.replies = list(replies)

    def request(self, msg, timeout=None):
        return self.replies.pop(0)


def test_a_snapshot_older_than_events_already_posted_is_followed_by_them_again():
    from llmo.proto.messages import BatchEvent, SnapshotReply

    feed = Feed(Endpoints("tcp://127.0.0.1:1", "tcp://127.0.0.1:2"), lambda update: None)
    events = [
        BatchEvent(rev=rev, batch_id="B", event="task_started", task_id=f"t{rev}", state="running")
        for rev in (9, 11, 12)
    ]
    loop = _Loop(feed, Publications(*events), client=None)  # type: ignore[arg-type]
    loop.receive(0)
    loop.last_flush = -1e9
    loop.flush(feed.monotonic())  # posted: the app has them
    late = BatchEvent(rev=13, batch_id="B", event="task_started", task_id="t13", state="running")
    loop.sub = Publications(late)
    loop.receive(0)  # heard, not posted yet
    loop.requests = Answers(SnapshotReply(reply_to="x", rev=10))  # type: ignore[assignment]
    loop.snapshot("")
    update = loop.pending.update()
    assert [r.rev for _, r in update.snapshots] == [10]
    assert [e.rev for e in update.events] == [11, 12, 13], "after the snapshot, newer ones again"
