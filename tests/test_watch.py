"""The submit tool's batch view: snapshot then events, nothing counted twice."""

from __future__ import annotations

import io

from llmo.cli.watch import BatchView, Screen, bar, follow, render
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
