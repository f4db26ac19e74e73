"""``llmo restart``: a worker ``llmo up`` gave up on comes back and registers (real processes).

``llmo up --max-restarts 1`` gives up on a worker killed twice, so the test
needs two crashes, not six.
"""

from __future__ import annotations

import json

from tests.e2e_fixtures import rig_factory
from tests.waiting import wait_for

__all__ = ["rig_factory"]


def test_a_worker_given_up_on_comes_back_with_llmo_restart(rig_factory):
    rig = rig_factory(workers=1, up_args=("--max-restarts", "1", "--restart-window", "600"))
    first = rig.kill("cpu-1")
    rig.wait_restarted("cpu-1", first)
    rig.kill("cpu-1")

    def given_up() -> dict | None:
        done = rig.llmo("status", "--json")
        if done.returncode != 0:
            return None
        children = json.loads(done.stdout)["supervisor"].get("children", [])
        return next(
            (c for c in children if c["name"] == "cpu-1" and c["state"] == "given_up"), None
        )

    child = wait_for(given_up, 60, lambda: f"llmo up to give up on cpu-1\n{rig.logs()}")
    assert child["restarts"] == 1 and child["exit_code"] == -9
    assert "cpu-1" not in rig.children()
    table = rig.llmo("status")
    assert "GIVEN UP cpu-1: given up after 1 restarts in 600 s (exit code -9)" in table.stdout
    assert "start it again: llmo restart cpu-1" in table.stdout

    # Refusals: a name llmo up does not supervise, a child that runs.
    unknown = rig.llmo("restart", "/bin/sh")
    assert unknown.returncode == 1
    assert "no child named '/bin/sh'; this llmo up supervises brain, brain-llm, broker, cpu-1" in (
        unknown.stderr
    )
    running = rig.llmo("restart", "brain-llm")
    assert running.returncode == 1 and "brain-llm is running" in running.stderr

    done = rig.llmo("restart", "cpu-1", "--timeout", "60", timeout=90)
    assert done.returncode == 0, done.stderr + rig.logs()
    assert "cpu-1 restarted (pid" in done.stdout
    assert "cpu-1 registered with the brain again" in done.stdout
    assert "cpu-1" in rig.children()
    after = json.loads(rig.llmo("status", "--json").stdout)
    child = next(c for c in after["supervisor"]["children"] if c["name"] == "cpu-1")
    assert child["state"] == "running"
    # the brain lists it from the very process the supervisor started (what restart checks)
    worker = next(w for w in after["workers"] if w["name"] == "cpu-1")
    assert worker["state"] != "down" and worker["pid"] == child["pid"] > 0, (worker, child)
    assert "operator" in rig.up_log.read_text()
