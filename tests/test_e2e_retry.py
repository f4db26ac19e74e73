"""End to end: a task fails for good on a real ``llmo up`` rig, its batch fails;
once the cause is fixed ``llmo retry`` runs it again, its skipped dependent
follows and the batch ends complete. Refusals exit 1 with the brain's reason."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e_fixtures import rig_factory
from tests.waiting import wait_for

__all__ = ["rig_factory"]

pytestmark = pytest.mark.timeout(300)

PLAN = """# Plan: needs-file

## Objective

A task that fails until a file exists, and one that depends on it.

## Tasks

### needs
- **executor**: worker
- **task_class**: cpu
- **command**: `test -f {PLAN_PATH}/ready`
- **depends_on**: none

### after
- **executor**: worker
- **task_class**: cpu
- **command**: `echo done > {BATCH_PATH}/after.txt`
- **depends_on**: needs
"""


def said(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"


def test_retry_runs_a_failed_task_again_and_the_batch_completes(rig_factory):
    rig = rig_factory(workers=1, brain={"max_attempts": 1})
    plan = rig.plans_dir / "needs-file"
    plan.mkdir()
    (plan / "plan.md").write_text(PLAN)
    first = rig.submit(plan)
    assert first.returncode == 1 and first.state == "failed", first
    batch = first.data["batch_id"]

    done = rig.llmo("retry", "nope", "needs")
    assert done.returncode == 1, said(done)
    assert done.stderr.startswith("llmo retry: refused: no batch nope"), said(done)
    done = rig.llmo("retry", batch, "after")
    assert done.returncode == 1, said(done)
    assert f"task after of batch {batch} is skipped, not failed" in done.stderr, said(done)

    assert (first.history / "ESCALATION.md").exists()
    (plan / "ready").write_text("")  # the cause is fixed
    done = rig.llmo("retry", batch, "needs")
    assert done.returncode == 0, said(done)
    assert "re-opened" in done.stdout and "running again" in done.stdout, said(done)

    def ended() -> str | None:
        row = next(b for b in rig.status()["batches"] if b["id"] == batch)
        return row["state"] if row["state"] != "running" else None

    assert wait_for(ended, 120, lambda: f"batch {batch} to end\n{rig.logs()}") == "complete"
    history = first.history
    assert (history / "after.txt").read_text().strip() == "done"
    summary = json.loads((history / "RUN_SUMMARY.json").read_text())
    assert summary["status"] == "complete", summary.get("status")
    # nothing left that says the batch failed, but its events keep the failure
    assert not (history / "ESCALATION.md").exists()
    assert not (history / "results" / "batch_failure.json").exists()
    events = [json.loads(x) for x in (history / "batch_events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert "batch_reopened" in names and names.count("task_reopened") == 2, names
    assert names.index("batch_failed") < names.index("batch_reopened"), names

    done = rig.llmo("retry", batch, "needs")
    assert done.returncode == 1, said(done)
    assert "is done, not failed" in done.stderr, said(done)
