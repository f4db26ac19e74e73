"""An orderly stop, in the brain's core: interrupted attempts and interrupted batches."""

from __future__ import annotations

import json

import pytest

from llmo.brain.commands import AppendLines, WriteFile
from llmo.brain.config import BrainConfig
from llmo.brain.events import Resumed, Stopped
from llmo.brain.journal import event_of, record_of
from tests.brain_fixtures import Rig, plan_text

pytestmark = pytest.mark.timeout(30)


def written(rig: Rig, since: int, name: str) -> list[str]:
    return [
        c.text for c in rig.commands[since:] if isinstance(c, WriteFile) and c.path.endswith(name)
    ]


def events_written(rig: Rig, since: int) -> list[dict]:
    return [
        json.loads(line)
        for c in rig.commands[since:]
        if isinstance(c, AppendLines) and c.path.endswith("batch_events.jsonl")
        for line in c.lines
    ]


def test_an_interrupted_attempt_is_neither_spent_nor_counted_toward_a_poison_task():
    rig = Rig(BrainConfig(max_attempts=1, max_lost_workers=2))
    rig.worker("w")
    batch = rig.submit(plan_text("a | cpu | x")).batch_id
    for _ in range(4):  # more than max_attempts and max_lost_workers
        a = rig.assigns()[-1]
        rig.start(a)
        rig.failed(a, reason="interrupted", exit_code=None, error="worker w is stopping")
        rig.wait(1.0)
        task = rig.task(batch, "a")
        assert task.state in ("ready", "assigned"), task.state
        assert task.attempts == 0 and task.lost_workers == 0
    a = rig.assigns()[-1]
    rig.start(a)
    rig.done(a)
    assert rig.state.batches[batch].state == "complete"
    assert rig.task(batch, "a").attempts == 1


def test_a_stop_marks_unfinished_batches_interrupted_and_a_restart_resumes_them():
    rig = Rig()
    rig.worker("w", slots=2)
    batch = rig.submit(plan_text("a | cpu | x", "b | cpu | y", "c | cpu | z | a, b")).batch_id
    first, second = rig.assigns()
    rig.start(first)
    rig.start(second)
    rig.done(first)
    mark = len(rig.commands)
    rig.feed(Stopped("SIGTERM"))
    interrupted = [e for e in events_written(rig, mark) if e["event"] == "batch_interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["batch_id"] == batch
    assert interrupted[0]["reason"] == "SIGTERM" and interrupted[0]["unfinished"] == 2
    summary = json.loads(written(rig, mark, "RUN_SUMMARY.json")[-1])
    assert summary["status"] == "partial" and summary["state"] == "running"  # the original's
    assert summary["interrupted"] is True
    assert "**status**: partial (interrupted)" in written(rig, mark, "RUN_SUMMARY.md")[-1]

    mark = len(rig.commands)
    rig.feed(Resumed())
    assert [e["event"] for e in events_written(rig, mark)] == ["batch_resumed"]
    rig.wait(10.0)  # the summary is refreshed on the next ticks
    assert json.loads(written(rig, mark, "RUN_SUMMARY.json")[-1])["status"] == "running"


def test_the_stop_is_journaled_and_replays():
    now, event = event_of(record_of(12.5, Stopped("SIGTERM")))
    assert (now, event) == (12.5, Stopped("SIGTERM"))
