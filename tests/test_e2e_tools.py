"""End to end: the operator's tools on a real ``llmo up`` rig, with a plan in the
original system's format: ``llmo status --tasks``, ``llmo status --task ID``,
``llmo watch BATCH`` (re-attaching to a batch submitted without ``--watch``)
and ``llmo history``.

The plan's ``gate`` task waits for a file the test writes, so the batch is
held running while the tools look at it. Its ``plan_next`` task is the
original's ``executor: brain`` with ``task_class: cpu``: it runs on the
brain-role worker once the brain model is hot, with the ``BRAIN_*`` endpoint
and the original's ``WORKER_*`` names.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e_fixtures import Rig, llmo_argv, rig_factory
from tests.waiting import wait_for

__all__ = ["rig_factory"]

pytestmark = pytest.mark.timeout(240)

PLAN = """# Plan: tools

## Objective
Process a manifest's items while a gate holds the batch open.

## Inputs
- none

## Outputs
- {BATCH_PATH}/report.txt

## Available Scripts
- scripts/manifest.py, scripts/gate.sh

## Tasks

### make_manifest
- **executor**: worker
- **task_class**: cpu
- **command**: `python3 {PLAN_PATH}/scripts/manifest.py {BATCH_PATH}/manifest.json`
- **depends_on**: none

### process
- **executor**: worker
- **task_class**: cpu
- **command**: `echo processing {ITEM}`
- **depends_on**: make_manifest
- **foreach**: {BATCH_PATH}/manifest.json:items

### gate
- **executor**: worker
- **task_class**: cpu
- **command**: `sh {PLAN_PATH}/scripts/gate.sh {BATCH_PATH}/go`
- **depends_on**: none

### plan_next
- **executor**: brain
- **task_class**: cpu
- **command**: `env > {BATCH_PATH}/brain_env.txt`
- **depends_on**: none

### report
- **executor**: worker
- **task_class**: cpu
- **command**: `echo done > {BATCH_PATH}/report.txt`
- **depends_on**: process, gate, plan_next
"""

MANIFEST = """import json, sys
with open(sys.argv[1], "w") as out:
    json.dump({"items": ["alpha", "beta", "gamma"]}, out)
"""

GATE = """echo "gate waiting for $1"
while [ ! -e "$1" ]; do sleep 0.1; done
echo "gate released"
"""


def write_plan(rig: Rig) -> Path:
    plan = rig.plans_dir / "tools"
    (plan / "scripts").mkdir(parents=True)
    (plan / "plan.md").write_text(PLAN)
    (plan / "scripts" / "manifest.py").write_text(MANIFEST)
    (plan / "scripts" / "gate.sh").write_text(GATE)
    return plan


def tasks_json(rig: Rig, batch: str) -> dict[str, dict]:
    done = rig.llmo("status", "--tasks", batch, "--json")
    assert done.returncode == 0, done.stderr
    return {t["id"]: t for t in json.loads(done.stdout)["tasks"]}


def test_status_watch_and_history_follow_a_batch_submitted_without_watching(rig_factory):
    rig = rig_factory()
    plan = write_plan(rig)
    sent = rig.llmo("submit", str(plan))
    assert sent.returncode == 0, sent.stderr
    batch = sent.stdout.strip()

    def held() -> dict[str, dict] | None:
        tasks = tasks_json(rig, batch)
        items = [tasks.get(f"process_{n}", {}).get("state") for n in range(3)]
        running = tasks.get("gate", {}).get("state") == "running"
        return tasks if running and items == ["done"] * 3 else None

    tasks = wait_for(held, 60, lambda: f"the items done and the gate running\n{rig.logs()}")
    # Items without an id are numbered from 0, as in the original.
    assert {"process_0", "process_1", "process_2"} <= set(tasks)
    assert tasks["report"]["state"] == "pending"

    table = rig.llmo("status", "--tasks", batch)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[2:] if line}
    assert rows["process_1"][1:3] == ["done", "1"] and rows["process_1"][3] in rig.expected
    assert rows["gate"][1:3] == ["running", "1"]
    assert rows["report"][1:4] == ["pending", "0", "-"]
    assert f"batch {batch} (tools): running" in table.stdout

    # Without naming the batch: the running batches' tasks.
    assert "gate" in rig.llmo("status", "--tasks").stdout

    def gate_log() -> str | None:
        shown = rig.llmo("status", "--task", "gate")
        return shown.stdout if "gate waiting for" in shown.stdout else None

    detail = wait_for(gate_log, 30, "the gate's log line in status --task")
    history = plan / "history" / batch
    assert f"task gate of batch {batch} (tools)" in detail
    assert "state:     running" in detail
    assert f"log:       {history / 'logs' / 'gate.log'}" in detail
    assert f"task_started attempt 1 on {tasks['gate']['worker']}" in detail

    missing = rig.llmo("status", "--task", "nope", "--batch", batch)
    assert missing.returncode == 1
    assert f"no task 'nope' in batch {batch}" in missing.stderr
    unknown = rig.llmo("status", "--tasks", "19990101_000000")
    assert unknown.returncode == 1 and "no batch '19990101_000000'" in unknown.stderr

    # Re-attach to the running batch, then let it finish.
    watcher = subprocess.Popen(
        [*llmo_argv(), "watch", batch, "--json"],
        cwd=rig.root,
        env=rig.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        (history / "go").touch()
        out, err = watcher.communicate(timeout=120)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert watcher.returncode == 0, err
    final = json.loads(out)
    assert final["batch_id"] == batch and final["state"] == "complete"
    assert final["summary"]["status"] == "complete"
    assert final["batch"]["counts"] == {"done": 8}
    assert f"watching batch {batch}" in err

    again = rig.llmo("watch", batch)  # an ended batch: shown at once, same exit code
    assert again.returncode == 0, again.stderr
    assert f"batch {batch} complete" in again.stdout

    nosuch = rig.llmo("watch", "19990101_000000")
    assert nosuch.returncode == 2
    assert "the brain knows no batch '19990101_000000'" in nosuch.stderr

    ended = rig.llmo("status", "--task", "gate", "--batch", batch, "--json")
    assert ended.returncode == 0, ended.stderr
    shown = json.loads(ended.stdout)
    assert shown["task"]["state"] == "done"
    assert shown["log_tail"][-1] == "gate released"
    assert [e["event"] for e in shown["attempts"]] == ["task_started", "task_succeeded"]

    env = dict(
        line.split("=", 1)
        for line in (history / "brain_env.txt").read_text().splitlines()
        if "=" in line
    )
    assert env["WORKER_NAME"] == "brain-llm"
    assert env["BRAIN_MODEL"] and env["WORKER_MODEL"] == env["BRAIN_MODEL"]
    assert env["WORKER_API_BASE"] == env["BRAIN_API_BASE"]
    assert env["WORKER_API_BASE"].startswith("http://127.0.0.1:")
    assert env["WORKER_API_BASE"].endswith("/v1")

    rollup = rig.llmo("history", str(plan), "--json")
    assert rollup.returncode == 0, rollup.stderr
    (run,) = json.loads(rollup.stdout)["runs"]
    assert run["batch_id"] == batch and run["status"] == "complete"
    assert (run["tasks"], run["done"], run["failed"]) == (8, 8, 0)
