"""A task's attempts read back from batch_events.jsonl."""

from __future__ import annotations

import json

import pytest

from llmo.tui.history import attempts, read_attempts
from llmo.tui.screens import attempts_text

pytestmark = pytest.mark.timeout(30)


def rec(ts, event, task="t", attempt=0, attempt_id="", worker="", **extra):
    return {
        "ts": ts,
        "event": event,
        "batch_id": "B",
        "task_id": task,
        "attempt": attempt,
        "attempt_id": attempt_id,
        "worker": worker,
        **extra,
    }


RECORDS = [
    rec(1.0, "task_released", state="ready"),
    rec(2.0, "task_started", attempt=1, attempt_id="B:t:1", worker="gpu-1"),
    rec(3.0, "task_started", "other", attempt=1, attempt_id="B:other:1", worker="gpu-2"),
    rec(
        6.0,
        "task_failed",
        attempt=1,
        attempt_id="B:t:1",
        worker="gpu-1",
        reason="exit",
        exit_code=1,
        error="CUDA error: out of memory",
    ),
    rec(6.0, "task_retried", attempt=1, worker="gpu-1", reason="exit code 1"),
    rec(9.0, "task_started", attempt=2, attempt_id="B:t:2", worker="gpu-2"),
    rec(15.0, "task_succeeded", attempt=2, attempt_id="B:t:2", worker="gpu-2", exit_code=0),
]


def test_one_summary_per_attempt_in_order():
    found = attempts(RECORDS, "t")
    assert [(a.number, a.worker, a.started, a.outcome) for a in found] == [
        (1, "gpu-1", 2.0, "failed, retried"),
        (2, "gpu-2", 9.0, "done"),
    ]
    assert found[0].why == "exit code 1"  # the retry's reason, the last word on it
    assert found[1].ended - found[1].started == 6.0
    assert [a.attempt_id for a in attempts(RECORDS, "other")] == ["B:other:1"]
    assert attempts(RECORDS, "missing") == []


def test_a_running_and_a_cancelled_attempt():
    records = [
        rec(1.0, "task_started", attempt=1, attempt_id="B:t:1", worker="w"),
        rec(2.0, "task_started", "u", attempt=1, attempt_id="B:u:1", worker="w"),
        rec(3.0, "task_cancelled", "u", attempt=1, attempt_id="B:u:1", worker="w"),
    ]
    assert attempts(records, "t")[0].outcome == "running"
    assert attempts(records, "u")[0].outcome == "cancelled"


def test_reading_the_file_skips_other_tasks_and_bad_lines(tmp_path):
    path = tmp_path / "batch_events.jsonl"
    lines = [json.dumps(r, separators=(",", ":")) for r in RECORDS]
    path.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    found, note = read_attempts(str(path), "t")
    assert note == "" and len(found) == 2
    text = attempts_text(found).plain
    assert "#1  gpu-1" in text and "failed, retried after 4s: exit code 1" in text
    assert "done after 6s" in text
    missing, note = read_attempts(str(tmp_path / "nope.jsonl"), "t")
    assert missing == [] and "no nope.jsonl yet" in note
