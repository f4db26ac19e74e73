"""``llmo history PLAN_DIR``: a rollup of a plan's past runs from their RUN_SUMMARY.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmo.cli.main import main

PLAN = """# Plan: nightly

## Objective
Summarise the day's documents.

## Tasks

### prepare
- **executor**: worker
- **task_class**: cpu
- **command**: `python {PLAN_PATH}/scripts/prepare.py --batch {BATCH_ID}`
- **depends_on**: none
"""


def summary(batch_id: str, status: str, created: float, wall: float, **counts: int) -> dict:
    """A RUN_SUMMARY.json as the brain writes it (with a field this reader does not know)."""
    return {
        "batch_id": batch_id,
        "plan": "nightly",
        "plan_path": "/plans/nightly",
        "status": status,
        "state": {"partial": "failed"}.get(status, status),
        "priority": "normal",
        "created_at": created,
        "finished_at": created + wall,
        "wall_s": wall,
        "counts": counts,
        "tokens": 1000 * counts.get("done", 0),
        "tok_s": 20.0,
        "failures": [{"id": "prepare", "state": "failed", "error": "exit 1"}]
        if counts.get("failed")
        else [],
        "warnings": [],
        "some_future_field": {"kept": True},
        "tasks": [],
    }


def write_history(plan_dir: Path) -> None:
    (plan_dir / "plan.md").write_text(PLAN)
    runs = [
        summary("20261201_101500", "complete", 1_796_120_100.0, 62.5, done=4),
        summary("20261201_090000", "partial", 1_796_115_600.0, 3700.0, done=2, failed=1, skipped=1),
        summary("20261201_120000", "cancelled", 1_796_126_400.0, 5.0, done=1, cancelled=3),
    ]
    for run in runs:
        folder = plan_dir / "history" / run["batch_id"]
        folder.mkdir(parents=True)
        (folder / "RUN_SUMMARY.json").write_text(json.dumps(run))
    broken = plan_dir / "history" / "20261201_130000"
    broken.mkdir()
    (broken / "RUN_SUMMARY.json").write_text('{"batch_id": "20261201_13')
    (plan_dir / "history" / "20261201_140000" / "logs").mkdir(parents=True)
    # Runs without a readable summary are placed by their folder's time.
    os.utime(broken, (1_796_130_000, 1_796_130_000))
    os.utime(plan_dir / "history" / "20261201_140000", (1_796_133_600, 1_796_133_600))


def test_history_lists_every_past_run_oldest_first(capsys, tmp_path):
    write_history(tmp_path)
    code = main(["history", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    header = ["BATCH", "STATUS", "STARTED", "WALL", "TASKS", "FAILED", "TOKENS"]
    assert lines[0].split()[:7] == header
    rows = [line.split()[:2] for line in lines[1:6]]
    assert rows == [
        ["20261201_090000", "partial"],
        ["20261201_101500", "complete"],
        ["20261201_120000", "cancelled"],
        ["20261201_130000", "unreadable"],
        ["20261201_140000", "no-summary"],
    ]
    partial = lines[1]
    assert "1h01m40s" in partial and "2/4" in partial and " 2 " in partial  # failed + skipped
    assert "1m02s" in lines[2] and "4/4" in lines[2] and "4000" in lines[2]
    assert "20261201_130000" in err and "RUN_SUMMARY.json" in err  # why it is unreadable
    assert "5 runs: complete 1, partial 1, cancelled 1, unreadable 1, no-summary 1" in out
    assert "tokens 7000" in out


def test_history_json_keeps_the_summaries_numbers(capsys, tmp_path):
    write_history(tmp_path)
    code = main(["history", str(tmp_path), "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    data = json.loads(out)
    assert data["history_dir"] == str(tmp_path / "history")
    runs = {r["batch_id"]: r for r in data["runs"]}
    assert list(runs) == sorted(runs)
    assert runs["20261201_090000"] == {
        "batch_id": "20261201_090000",
        "plan": "nightly",
        "status": "partial",
        "created_at": 1_796_115_600.0,
        "finished_at": 1_796_119_300.0,
        "wall_s": 3700.0,
        "tasks": 4,
        "done": 2,
        "failed": 2,
        "counts": {"done": 2, "failed": 1, "skipped": 1},
        "tokens": 2000,
        "first_failure": "prepare: exit 1",
        "summary": str(tmp_path / "history" / "20261201_090000" / "RUN_SUMMARY.json"),
    }
    assert runs["20261201_130000"]["status"] == "unreadable"
    assert "not valid JSON" in runs["20261201_130000"]["error"]
    assert runs["20261201_140000"]["status"] == "no-summary"
    assert data["totals"]["runs"] == 5 and data["totals"]["tokens"] == 7000
    assert data["totals"]["by_status"] == {
        "complete": 1,
        "partial": 1,
        "cancelled": 1,
        "unreadable": 1,
        "no-summary": 1,
    }


def test_history_of_a_folder_without_runs_says_so(capsys, tmp_path):
    (tmp_path / "plan.md").write_text(PLAN)
    code = main(["history", str(tmp_path)])
    out, _ = capsys.readouterr()
    assert code == 0
    assert f"no runs in {tmp_path / 'history'}" in out


def test_history_of_a_missing_folder_is_an_error(capsys, tmp_path):
    code = main(["history", str(tmp_path / "nope")])
    _, err = capsys.readouterr()
    assert code == 2
    assert "llmo history:" in err and str(tmp_path / "nope") in err
