"""Process level: the brain killed with SIGKILL mid-batch, restarted, finishes the batch.

A real broker (in a thread), the brain as a subprocess (`llmo brain`), two
fake workers over real sockets and a submit client. The brain is killed
while tasks run, started again on the same journal, and must finish with
every task done once, nothing lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from llmo.brain.trace import replay_lines
from llmo.proto.client import Client
from llmo.proto.messages import PlanAccepted, PlanSubmit, SnapshotReply, SnapshotRequest
from tests.brain_fixtures import FakeWorker, plan_text
from tests.e2e_fixtures import start_brain as e2e_start_brain
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def broker(broker_factory):
    return broker_factory(interval=0.3).broker


def start_brain(endpoint: str, journal: Path, log: Path) -> subprocess.Popen:
    return e2e_start_brain(endpoint, journal, log, "--log-level", "WARNING")


def snapshot(client: Client, batch_id: str) -> SnapshotReply | None:
    reply = client.request(SnapshotRequest(dst="brain", batch_id=batch_id), timeout=1.0)
    return reply if isinstance(reply, SnapshotReply) else None


def test_brain_killed_mid_batch_finishes_after_restart(broker, tmp_path):
    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    n = 30
    tasks = [f"t{i} | cpu | work {i} | {'t' + str(i - 3) if i >= 3 else 'none'}" for i in range(n)]
    (plan_dir / "plan.md").write_text(plan_text(*tasks, "last | cpu | sum | t27, t28, t29"))
    journal = tmp_path / "rig" / "brain.journal"
    log = tmp_path / "brain.log"
    endpoint = broker.router_endpoint
    brain = start_brain(endpoint, journal, log)
    workers = [FakeWorker(f"fw-{i}", endpoint, slots=2, run_s=0.15).start() for i in range(2)]
    tool = Client("submit-test", endpoint)
    try:

        def accepted() -> PlanAccepted | None:
            reply = tool.request(PlanSubmit(dst="brain", plan_path=str(plan_dir)), timeout=1.0)
            return reply if isinstance(reply, PlanAccepted) else None

        batch_id = wait_for(accepted, 15, "the brain to accept the plan").batch_id

        def done_at_least(count: int) -> bool:
            snap = snapshot(tool, batch_id)
            return snap is not None and snap.batches[0].counts.get("done", 0) >= count

        wait_for(lambda: done_at_least(8), 15, "a part of the batch to run")
        os.kill(brain.pid, signal.SIGKILL)
        brain.wait(5)
        finished_before = sum(len(w.ran) for w in workers)
        wait_for(
            lambda: sum(len(w.ran) for w in workers) > finished_before,
            10,
            "a result to pile up at the workers while the brain is down",
        )
        brain = start_brain(endpoint, journal, log)

        def ended() -> SnapshotReply | None:
            snap = snapshot(tool, batch_id)
            return snap if snap and snap.batches[0].state != "running" else None

        snap = wait_for(ended, 40, lambda: f"the batch to end\n{log.read_text()[-3000:]}")
        # the killed brain's journal lock went with it: the new brain holds it
        holder = json.loads(Path(f"{journal}.lock").read_text())
        assert holder["pid"] == brain.pid and holder["broker"] == endpoint
        assert snap.batches[0].state == "complete", snap.batches[0]
        assert snap.batches[0].counts == {"done": n + 1}
        history = plan_dir / "history" / batch_id
        events = [
            json.loads(line) for line in (history / "batch_events.jsonl").read_text().splitlines()
        ]
        succeeded = [e["task_id"] for e in events if e["event"] == "task_succeeded"]
        assert len(succeeded) == len(set(succeeded))  # recorded once each
        trace = "\n".join(replay_lines(str(journal), quiet_ticks=True))  # llmo replay
        assert "resumed" in trace and "send task.assign" in trace
        assert f"event batch_completed {batch_id}" in trace
        summary = json.loads((history / "RUN_SUMMARY.json").read_text())
        assert summary["status"] == "complete"
        assert sorted(r["id"] for r in summary["tasks"] if r["state"] == "done") == sorted(
            [f"t{i}" for i in range(n)] + ["last"]
        )
    finally:
        tool.close()
        for w in workers:
            w.stop()
        if brain.poll() is None:
            brain.send_signal(signal.SIGTERM)
            try:
                brain.wait(5)
            except subprocess.TimeoutExpired:
                brain.kill()
