"""The submit tool's batch view: snapshot then events, nothing counted twice."""

from __future__ import annotations

import io

import pytest

from llmo.cli.watch import RESYNC_MIN_S, BatchView, Screen, bar, follow, render
from llmo.proto.messages import BatchEvent, BatchInfo, SnapshotReply, TaskInfo, TaskProgress
from llmo.proto.pubsub import Published


def snapshot(rev: int, state: str = "running") -> SnapshotReply:
    return SnapshotReply(
        reply_to="r",
        rev=rev,
        batches=(BatchInfo(id="B", plan="hello", state=state, history_path="/h/B"),),
        tasks=(
            TaskInfo(batch_id="B", id="make", state="done"),
            TaskInfo(batch_id="B", id="greet", state="expanded"),
            TaskInfo(batch_id="B", id="greet_a", state="running", template="greet"),
            TaskInfo(batch_id="B", id="greet_b", state="ready", template="greet"),
            TaskInfo(batch_id="OTHER", id="x", state="ready"),
        ),
    )


def event(rev: int, task: str = "", state: str = "", name: str = "task_succeeded", **detail):
    return BatchEvent(rev=rev, batch_id="B", event=name, task_id=task, state=state, detail=detail)


def test_seed_then_events_with_older_revisions_ignored():
    view = BatchView("B")
    assert view.seed(snapshot(10))
    view.apply(event(9, "greet_b", "failed"))  # older than the snapshot: already in it
    view.apply(event(11, "greet_a", "done"))
    view.apply(event(12, "greet_c", "ready", name="task_released"))  # a new item
    groups = view.groups()
    assert groups["greet"] == {"done": 1, "ready": 2}
    assert groups["make"] == {"done": 1}
    assert "x" not in view.tasks and "greet" not in groups["greet"]


def test_batch_end_and_unknown_batch():
    view = BatchView("B")
    assert not view.seed(SnapshotReply(reply_to="r", rev=1))
    view.seed(snapshot(3))
    view.apply(event(4, name="batch_completed", state="complete", counts={"done": 4}))
    assert view.finished and view.state == "complete"
    assert view.batch is not None and view.batch.counts == {"done": 4}


def test_tok_s_sums_recent_attempts_only():
    view = BatchView("B")
    msg = TaskProgress(batch_id="B", task_id="t", attempt_id="a1", tokens=10, tok_s=20.0)
    view.progress(msg, now=100.0)
    view.progress(TaskProgress(batch_id="B", task_id="u", attempt_id="a2", tok_s=5.0), 101.0)
    view.progress(TaskProgress(batch_id="X", task_id="u", attempt_id="a3", tok_s=99.0), 101.0)
    assert view.tok_s(102.0) == 25.0
    assert view.tok_s(105.5) == 5.0


def test_bar():
    assert bar({"done": 1, "ready": 1}, width=4) == "[##..]"
    assert bar({"failed": 1, "running": 1}, width=4) == "[!!>>]"


class FakeSubscriber:
    def __init__(self, items):
        self.items = list(items)

    def recv(self, timeout=None):
        return self.items.pop(0) if self.items else None


def test_follow_resyncs_on_a_gap_and_stops_at_the_end():
    snaps = [snapshot(1), snapshot(5, state="complete")]
    sub = FakeSubscriber(
        [
            Published(seq=1, message=event(2, "greet_a", "done"), gap=0),
            Published(seq=9, message=event(3, "greet_b", "running"), gap=7),
        ]
    )
    out = io.StringIO()
    view = follow(BatchView("B"), sub, lambda: snaps.pop(0) if snaps else None, Screen(out))
    assert view.finished and view.state == "complete"
    assert snaps == []  # the gap made it take the second snapshot
    assert "batch B (hello): complete" in out.getvalue()
    assert render(view, 1.0, 0.0)[0].startswith("batch B (hello): complete")


def test_a_failed_batch_points_to_its_escalation_and_summary(tmp_path, capsys):
    from llmo.cli.watch import report_end

    (tmp_path / "RUN_SUMMARY.md").write_text("# summary\n")
    (tmp_path / "ESCALATION.md").write_text("# escalation\n")
    view = BatchView("B", state="failed", history_path=str(tmp_path))
    assert report_end(view, False) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "batch B failed",
        f"summary: {tmp_path / 'RUN_SUMMARY.md'}",
        f"escalation: {tmp_path / 'ESCALATION.md'}",
    ]
    (tmp_path / "ESCALATION.md").unlink()
    view = BatchView("B", state="complete", history_path=str(tmp_path))
    assert report_end(view, False) == 0
    assert "escalation" not in capsys.readouterr().out


class TtyOut(io.StringIO):
    def isatty(self) -> bool:
        return True


class TimedSubscriber(FakeSubscriber):
    """Publications that arrive one a millisecond on a fake clock."""

    def __init__(self, items, clock: list[float]):
        super().__init__(items)
        self.clock = clock

    def recv(self, timeout=None):
        self.clock[0] += 0.001
        return super().recv(timeout)


def a_thousand_items(gap: int = 0) -> list[Published]:
    items = [
        Published(seq=i, message=event(10 + i, f"greet_{i:04d}", state), gap=gap)
        for i in range(1, 1001)
        for state in ("running", "done")
    ]
    end = event(5000, name="batch_completed", state="complete", counts={"done": 1000})
    return [*items, Published(seq=5000, message=end, gap=0)]


@pytest.mark.parametrize("tty", [True, False])
def test_a_burst_of_events_is_drawn_a_few_times_a_second_not_once_an_event(monkeypatch, tty):
    import llmo.cli.watch as watch

    rendered = []
    real_render = watch.render
    monkeypatch.setattr(watch, "render", lambda *a, **k: rendered.append(1) or real_render(*a, **k))
    clock = [0.0]
    out = TtyOut() if tty else io.StringIO()
    sub = TimedSubscriber(a_thousand_items(), clock)
    view = follow(
        BatchView("B"),
        sub,
        lambda: snapshot(10) if sub.items else snapshot(6000, state="complete"),
        Screen(out),
        clock=lambda: clock[0],
    )
    assert view.finished
    # 2,001 events over 2 s of the fake clock: ten draws a second at most, and the last one
    assert len(rendered) <= 2.0 * 10 + 2
    assert "batch B (hello): complete" in out.getvalue()


def test_gaps_in_a_burst_take_one_snapshot_then_wait_before_the_next():
    clock = [0.0]
    taken = []
    sub = TimedSubscriber(a_thousand_items(gap=1), clock)

    def take():
        taken.append(clock[0])
        return snapshot(10) if sub.items else snapshot(6000, state="complete")

    view = follow(
        BatchView("B"),
        sub,
        take,
        None,
        clock=lambda: clock[0],
    )
    assert view.finished
    # the first snapshot, one for the first gap, then at most one a RESYNC_MIN_S; the end's
    assert len(taken) <= 2 + 2.0 / RESYNC_MIN_S + 1
    assert len(taken) >= 3


def test_groups_kept_by_events_match_groups_counted_afresh():
    view = BatchView("B")
    view.seed(snapshot(10))
    steps = [
        event(11, "greet_c", "ready", name="task_released"),
        event(12, "other_1", "ready", name="task_released"),  # before its template is known
        event(13, "other", "expanded", name="task_expanded"),
        event(14, "other_1", "running", name="task_started"),
        event(15, "greet_a", "done"),
        event(16, "greet_b", "failed", name="task_failed"),
        event(17, "other_1", "done"),
    ]
    for step in steps:
        view.apply(step)
        assert view.groups() == view.count_groups()
    assert view.groups() == {
        "make": {"done": 1},
        "greet": {"done": 1, "failed": 1, "ready": 1},
        "other": {"done": 1},
    }
    view.seed(snapshot(20))
    assert view.groups() == view.count_groups()


def test_the_watchers_subscription_sees_no_gap_for_publications_of_other_topics():
    import zmq

    from llmo.cli.watch import subscribe
    from llmo.proto.codec import encode
    from llmo.proto.messages import Heartbeat
    from tests.waiting import wait_until

    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = subscribe(f"tcp://127.0.0.1:{port}")
    try:
        seq = iter(range(1, 1000))

        def send(message) -> None:
            body = encode(message)
            pub.send_multipart(
                [f"{message.TYPE.value}/x/".encode(), next(seq).to_bytes(8, "big"), body]
            )

        assert wait_until(lambda: send(event(1, "greet_a", "running")) or sub.socket.poll(50))
        while sub.recv(timeout=0.05) is not None:
            pass
        for message in (
            event(2, "greet_a", "done"),
            Heartbeat(src="cpu-1"),
            event(3, "make", "done"),
        ):
            send(message)
        heard = [sub.recv(timeout=5) for _ in range(3)]
        assert [p.gap for p in heard if p is not None] == [0, 0, 0]
    finally:
        sub.close()
        pub.close(linger=0)


def test_a_restarted_brain_makes_the_watcher_take_a_fresh_snapshot():
    from llmo.proto.messages import BRAIN, PeerUp

    clock = [0.0]
    sub = TimedSubscriber(
        [
            Published(seq=1, message=event(2, "greet_a", "done"), gap=0),
            Published(seq=2, message=PeerUp(peer="cpu-1"), gap=0),
            Published(seq=3, message=PeerUp(peer=BRAIN), gap=0),
        ],
        clock,
    )
    taken = []

    def take():
        taken.append(clock[0])
        return snapshot(1, state="running" if len(taken) == 1 else "complete")

    view = follow(BatchView("B"), sub, take, None, clock=lambda: clock[0])
    assert view.finished
    # at once, not after a silence: its revision may start lower; its state, not ours
    assert taken[1] < 0.01


class Endless(FakeSubscriber):
    """Publications of other work, one a millisecond on a fake clock, numbered without gaps."""

    def __init__(self, clock: list[float], limit: int = 20_000):
        super().__init__([])
        self.clock = clock
        self.seq = 40
        self.limit = limit

    def recv(self, timeout=None):
        self.clock[0] += 0.001
        self.seq += 1
        assert self.seq < 40 + self.limit, "the watcher never learnt that its batch ended"
        other = TaskProgress(batch_id="OTHER", task_id="x", attempt_id="a", tok_s=1.0)
        return Published(seq=self.seq, message=other, gap=0)


def test_a_batch_that_ended_before_the_subscription_took_effect_is_seen_to_end():
    # SUB connects in the background: the batch's last event can go out before the
    # broker knows of the subscription, and the first snapshot can come before that
    # event. The first publication received proves the subscription is live: a
    # snapshot taken after it holds everything it missed.
    clock = [0.0]
    snaps = [snapshot(1), snapshot(2, state="failed")]
    view = follow(
        BatchView("B"),
        Endless(clock),
        lambda: snaps.pop(0) if snaps else snapshot(2, state="failed"),
        None,
        clock=lambda: clock[0],
    )
    assert view.finished and view.state == "failed"


def test_a_batch_with_no_news_for_a_while_is_looked_up_although_others_publish():
    # Publications about other batches and workers keep coming; none about this one
    # for ``resync_s``: a snapshot is taken all the same.
    clock = [0.0]
    taken = []

    def take():
        taken.append(clock[0])
        return snapshot(1) if len(taken) < 3 else snapshot(2, state="complete")

    view = follow(BatchView("B"), Endless(clock), take, None, resync_s=5.0, clock=lambda: clock[0])
    assert view.finished and view.state == "complete"
    assert 5.0 <= taken[2] < 6.0, taken
