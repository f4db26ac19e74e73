"""History files the original system's readers can read, from the brain's core (fake clock).

Each test drives a batch written in the original's plan format through the
pure core and reads back what it asked the shell to write: the event lines
(llmo's fields and the original's side by side), RUN_SUMMARY.json with the
original's keys and status values, ``results/batch_failure.json`` of a batch
that failed, and the link ``logs/batch_events.jsonl``.
"""

from __future__ import annotations

import datetime
import json

import pytest

from llmo.brain.commands import AppendLines, LinkFile, WriteEnvManifest, WriteFile
from llmo.brain.config import BrainConfig
from llmo.brain.events import Stopped
from tests.brain_fixtures import Rig, plan_text

pytestmark = pytest.mark.timeout(60)


def events(rig: Rig, since: int = 0) -> list[dict]:
    return [
        json.loads(line)
        for c in rig.commands[since:]
        if isinstance(c, AppendLines) and c.path.endswith("/batch_events.jsonl")
        for line in c.lines
    ]


def written(rig: Rig, name: str) -> list[WriteFile]:
    return [c for c in rig.commands if isinstance(c, WriteFile) and c.path.endswith(name)]


def iso(value: object) -> datetime.datetime:
    assert isinstance(value, str), value
    stamp = datetime.datetime.fromisoformat(value)
    assert stamp.tzinfo is not None, value
    return stamp


def test_task_events_carry_the_original_fields_next_to_llmos():
    rig = Rig(BrainConfig(max_attempts=2, backoff_base_s=1.0))
    rig.worker("w", slots=2)
    batch = rig.submit(plan_text("a | cpu | x", "b | cpu | y | a")).batch_id
    rig.auto(lambda a: "done" if a.task_id == "a" else 3)
    lines = events(rig)
    by_event: dict[str, list[dict]] = {}
    for line in lines:
        by_event.setdefault(line["event"], []).append(line)
        assert iso(line["recorded_at"]).timestamp() == pytest.approx(line["ts"])
        assert line["batch_id"] == batch
    started = by_event["task_started"][0]
    assert started["task_name"] == started["name"] == started["task_id"] == "a"
    assert started["attempts"] == started["attempt"] == 1
    assert iso(started["started_at"]) and started["completed_at"] is None
    done = by_event["task_succeeded"][0]
    assert done["success"] is True and done["error_type"] is None
    assert iso(done["completed_at"]) >= iso(done["started_at"])
    failed = by_event["task_failed"]
    assert [f["attempts"] for f in failed] == [1, 2]
    assert all(f["success"] is False and f["error_type"] == "exit" for f in failed)
    assert all(f["exit_code"] == 3 for f in failed)
    retried = by_event["task_retried"][0]
    assert retried["task_name"] == "b" and retried["attempts"] == 1
    abandoned = by_event["task_abandoned"][0]
    assert abandoned["success"] is False and abandoned["error_type"] == "exit"
    assert abandoned["attempts"] == 2 and iso(abandoned["completed_at"])
    assert [r["task_name"] for r in by_event["task_released"]] == ["a", "b"]


def test_a_failed_batch_is_aborted_for_the_original_and_leaves_batch_failure_json():
    rig = Rig(BrainConfig(max_attempts=1))
    rig.worker("w", slots=2)
    batch = rig.submit(plan_text("a | cpu | x", "b | cpu | y", "c | cpu | z | b")).batch_id
    rig.auto(lambda a: 7 if a.task_id == "b" else "done")
    names = [e["event"] for e in events(rig)]
    assert names.index("batch_failed") < names.index("batch_aborted"), names
    aborted = next(e for e in events(rig) if e["event"] == "batch_aborted")
    assert aborted["success"] is False and aborted["same_as"] == "batch_failed"

    summary = json.loads(written(rig, "/RUN_SUMMARY.json")[-1].text)
    assert summary["status"] == "failed", summary["status"]  # one task done: not "partial"
    assert summary["state"] == "failed" and summary["interrupted"] is False
    assert summary["plan_name"] == "test" and summary["history_dir"].endswith(batch)
    iso(summary["refreshed_at"])
    assert summary["event_counts"]["task_abandoned"] == 1
    assert summary["event_counts"]["batch_aborted"] == 1
    assert summary["live_counts"] == {}
    assert summary["failure"]["task_id"] == "b" and summary["failure"]["exit_code"] == 7
    assert summary["failure"]["error_type"] == "exit"
    assert "results/batch_failure.json" in summary["important_artifacts"]

    failure_files = written(rig, "/results/batch_failure.json")
    assert len(failure_files) == 1
    failure = json.loads(failure_files[0].text)
    assert failure["batch_id"] == batch and failure["status"] == "failed"
    assert [t["task_id"] for t in failure["failed_tasks"]] == ["b"]
    assert failure["skipped_tasks"] == ["c"]
    assert failure["failed_tasks"][0]["error_type"] == "exit"
    iso(failure["failed_at"])


def test_a_complete_batch_writes_no_batch_failure_and_refreshes_are_recorded():
    rig = Rig()
    rig.worker("w")
    rig.submit(plan_text("a | cpu | x", "b | cpu | y | a"))
    rig.auto()
    assert not written(rig, "batch_failure.json")
    names = [e["event"] for e in events(rig)]
    assert "batch_completed" in names and "batch_aborted" not in names
    refreshes = [e for e in events(rig) if e["event"] == "summary_refreshed"]
    assert len(refreshes) == len(written(rig, "/RUN_SUMMARY.json"))
    assert refreshes[-1]["status"] == "complete"
    summary = json.loads(written(rig, "/RUN_SUMMARY.json")[-1].text)
    assert summary["status"] == "complete" and summary["failure"] is None
    assert summary["event_counts"]["summary_refreshed"] == len(refreshes)


def test_a_cancelled_batch_is_aborted_and_explains_why():
    rig = Rig()
    rig.worker("w")
    batch = rig.submit(plan_text("a | cpu | x")).batch_id
    from llmo.proto.messages import BatchCancel

    rig.msg(BatchCancel(batch_id=batch, reason="operator said so"), src="cli-1")
    names = [e["event"] for e in events(rig)]
    assert "batch_cancelled" in names and "batch_aborted" in names
    failure = json.loads(written(rig, "/results/batch_failure.json")[-1].text)
    assert failure["status"] == "failed" and failure["state"] == "cancelled"
    assert "operator said so" in failure["reason"]


def test_an_interrupted_batch_reads_partial():
    rig = Rig()
    rig.worker("w")
    rig.submit(plan_text("a | cpu | x", "b | cpu | y | a"))
    a = rig.assigns()[-1]
    rig.start(a)
    rig.feed(Stopped("SIGTERM"))
    summary = json.loads(written(rig, "/RUN_SUMMARY.json")[-1].text)
    assert summary["status"] == "partial" and summary["interrupted"] is True
    assert summary["live_counts"] == {"pending": 1, "running": 1}


def test_each_foreach_item_gets_its_own_task_released():
    rig = Rig()
    rig.worker("w", slots=4)
    rig.manifests["each"] = [{"id": "x"}, {"id": "y"}, {"id": "z"}]
    rig.submit(
        plan_text(
            "prep | cpu | p",
            "each | cpu | run {ITEM.id} | prep | foreach={BATCH_PATH}/m.json:items",
        )
    )
    rig.auto()
    released = [e["task_name"] for e in events(rig) if e["event"] == "task_released"]
    assert released == ["prep", "each", "each_x", "each_y", "each_z"], released
    item = next(
        e for e in events(rig) if e["event"] == "task_released" and e["task_id"] == "each_y"
    )
    assert item["template"] == "each"


def test_the_events_file_is_also_at_logs_and_env_manifest_is_asked_for():
    rig = Rig()
    rig.worker("w")
    reply = rig.submit(plan_text("a | cpu | x"), path="/plans/p")
    links = [c for c in rig.commands if isinstance(c, LinkFile)]
    history = f"/plans/p/history/{reply.batch_id}"
    assert links == [LinkFile(f"{history}/logs/batch_events.jsonl", "../batch_events.jsonl")]
    manifests = [c for c in rig.commands if isinstance(c, WriteEnvManifest)]
    assert manifests == [WriteEnvManifest("/plans/p", f"{history}/env_manifest.json")]


def test_a_poison_task_is_abandoned_as_lost_and_a_broken_source_as_definition():
    from llmo.brain.events import Received
    from llmo.proto.messages import PeerDown

    rig = Rig()
    rig.submit(
        plan_text("a | cpu | crash", "each | cpu | run {ITEM} | none | foreach=m.json:items")
    )
    for n in range(3):
        rig.worker(f"w{n}")
        rig.start(rig.assigns()[-1])
        rig.feed(Received(PeerDown(src="broker", dst="brain", id=f"p{n}", peer=f"w{n}")))
    abandoned = {e["task_id"]: e for e in events(rig) if e["event"] == "task_abandoned"}
    assert abandoned["a"]["error_type"] == "lost", abandoned["a"]
    assert abandoned["each"]["error_type"] == "definition", abandoned["each"]
    failure = json.loads(written(rig, "/results/batch_failure.json")[-1].text)
    assert {t["task_id"]: t["error_type"] for t in failure["failed_tasks"]} == {
        "each": "definition",
        "a": "lost",
    }


def test_a_big_running_batch_rewrites_its_summary_less_often_and_at_the_end():
    # Rewriting RUN_SUMMARY costs a row per task: a batch of n tasks waits a further
    # n/1000 s between rewrites while it runs, so a whole run costs O(n) rows per second
    # at most; the end is written at once, whatever the size.
    rig = Rig()
    rig.worker("w", slots=4)
    rig.manifests["each"] = [{"id": f"{i:04d}"} for i in range(3000)]
    rig.submit(plan_text("each | cpu | run {ITEM.id} | none | foreach=m.json:items"))
    before = len(written(rig, "/RUN_SUMMARY.json"))
    for _ in range(6):  # six seconds of progress: 1 + 3000/1000 = 4 s between rewrites
        for a in rig.assigns():
            if a.attempt_id not in rig.answered:
                rig.start(a)
                rig.done(a)
        rig.tick(1.0)
        rig.heartbeat("w")
    assert len(written(rig, "/RUN_SUMMARY.json")) - before <= 2
    rig.auto()
    summary = json.loads(written(rig, "/RUN_SUMMARY.json")[-1].text)
    assert summary["status"] == "complete" and len(summary["tasks"]) == 3001
