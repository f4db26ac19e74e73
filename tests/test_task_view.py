"""``llmo status --tasks`` / ``--task`` rendering, from snapshots built in memory."""

from __future__ import annotations

import json

from llmo.cli.task_view import find_task, render_tasks, show_task
from llmo.proto.messages import SnapshotReply
from tests.test_tui_support import batch_view, task_view


def reply(batches, tasks) -> SnapshotReply:
    return SnapshotReply(
        src="brain", reply_to="r", rev=7, batches=tuple(batches), tasks=tuple(tasks)
    )


def test_a_task_id_in_two_batches_must_be_named_with_its_batch():
    snap = reply(
        [batch_view("A", "p", {"done": 1}), batch_view("B", "p", {"running": 1})],
        [task_view("A", "gate", "done"), task_view("B", "gate", "running")],
    )
    assert find_task(snap, "gate", "") == "task 'gate' is in batches A, B: name one with --batch"
    found = find_task(snap, "gate", "B")
    assert not isinstance(found, str) and found.batch_id == "B"
    assert find_task(snap, "gate", "C") == "the brain knows no batch 'C'"


def test_a_table_cut_by_the_snapshot_bound_says_how_many_are_missing():
    snap = reply(
        [batch_view("A", "p", {"done": 5, "running": 1})],
        [
            task_view(
                "A", "t1", "running", started_at=100.0, error="boom\nsecond line", worker="gpu-1"
            )
        ],
    )
    text = render_tasks(snap, now=112.5)
    assert "t1" in text and "12.5s" in text and "boom" in text and "second line" not in text
    assert "... and 5 more" in text


def test_a_task_whose_history_cannot_be_read_is_still_shown(capsys, tmp_path):
    snap = reply(
        [batch_view("A", "p", {"failed": 1}, history_path=str(tmp_path / "gone"))],
        [task_view("A", "t1", "failed", exit_code=3, error="exit 3")],
    )
    assert show_task(snap, "t1", "", 5, as_json=False) == 0
    out = capsys.readouterr().out
    assert "state:     failed" in out and "exit code: 3" in out
    assert "does not exist (yet) on this machine" in out
    assert show_task(snap, "t1", "", 5, as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["log_tail"] == [] and data["log_path"].endswith("gone/logs/t1.log")
    assert len(data["unreadable"]) == 2
