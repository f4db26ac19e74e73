"""Finished work is never run again: the brain killed or paused while tasks finish.

Real ``llmo up`` rigs. Each task appends to ``starts.txt`` when it begins and
to ``runs.txt`` when it ends, so a task run twice shows in the files whatever
the brain recorded.

- Killed: the supervisor is held (SIGSTOP) so that the brain stays down
  while the running tasks finish; the workers hold the results; the brain is
  then restarted. Its workers' first heartbeats may reach it before the held
  results: the tasks must be recorded done once and never run again.
- Paused: the brain is stopped (SIGSTOP) for several times the liveness expiry
  while tasks run and finish, then continued: no worker is declared down and
  no finished task runs again.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e_fixtures import Submitted, rig_factory
from tests.faults.conftest import FaultTable
from tests.faults.counting import counting_plan, lines, rounds
from tests.waiting import wait_for

__all__ = ["rig_factory"]

pytestmark = pytest.mark.timeout(180)


def finish(submit, timeout: float = 120.0) -> Submitted:
    out, err = submit.communicate(timeout=timeout)
    return Submitted(submit.returncode, out, err)


def tally(plan: Path, tasks: list[str]) -> tuple[int, int]:
    """Tasks that never finished, and finished runs beyond the first, from the
    files the tasks themselves write."""
    runs = Counter(lines(plan / "runs.txt"))
    lost = sum(1 for task in tasks if runs[task] == 0)
    return lost, sum(count - 1 for count in runs.values() if count > 1)


def assert_ran_once(
    plan: Path, run: Submitted, tasks: list[str], fault_table: FaultTable, fault: str
) -> None:
    runs = Counter(lines(plan / "runs.txt"))
    starts = Counter(lines(plan / "starts.txt"))
    print(f"runs per task: {dict(runs)}; starts per task: {dict(starts)}")
    lost, rerun = tally(plan, tasks)
    fault_table.row(fault, lost=lost, rerun=rerun)
    assert run.returncode == 0 and run.state == "complete", run
    assert runs == Counter(tasks) and starts == Counter(tasks), (runs, starts)
    assert all(row["attempts"] == 1 for row in run.rows().values()), run.rows()
    done = Counter(e["task_id"] for e in run.events() if e["event"] == "task_succeeded")
    assert done == Counter(tasks), done


def test_results_finished_while_the_brain_was_killed_are_recorded_and_not_run_again(
    rig_factory, fault_table
):
    rig = rig_factory()
    groups = [["a1", "a2"], ["b1", "b2"], ["c1", "c2"]]
    # Longer than the brain's grace for an attempt missing from a heartbeat (5 s).
    plan = counting_plan(rig.plans_dir, "killed", rounds(groups, 6.0))
    submit = rig.submit_background(plan)
    supervisor = rig.process.pid
    started = 0
    for tasks in groups:
        started += len(tasks)
        wait_for(lambda n=started: len(lines(plan / "starts.txt")) >= n, 60, "tasks to start")
        time.sleep(2.5)  # the fault lands mid-task, after heartbeats listed the attempts
        os.kill(supervisor, signal.SIGSTOP)  # no restart until the results are held
        try:
            old = rig.kill("brain")
            wait_for(lambda n=started: len(lines(plan / "runs.txt")) >= n, 60, "tasks to end")
        finally:
            os.kill(supervisor, signal.SIGCONT)
        rig.wait_restarted("brain", old)
    run = finish(submit)
    fault = "brain killed 3 times while its tasks finish"
    assert_ran_once(plan, run, [t for tasks in groups for t in tasks], fault_table, fault)


def test_a_paused_brain_declares_no_worker_down_and_runs_nothing_again(rig_factory, fault_table):
    rig = rig_factory(workers=3)
    groups = [["a1", "a2", "a3"], ["b1", "b2", "b3"]]
    plan = counting_plan(rig.plans_dir, "paused", rounds(groups, 1.0))
    submit = rig.submit_background(plan)
    brain = rig.children()["brain"]
    wait_for(lambda: len(lines(plan / "starts.txt")) >= 3, 60, "tasks to start")
    os.kill(brain, signal.SIGSTOP)
    try:
        # The injected fault: a pause well past the expiry (3 heartbeats of 1 s), long
        # enough for the broker to declare the brain down and bounce what the
        # workers send it; the running tasks finish meanwhile.
        wait_for(lambda: len(lines(plan / "runs.txt")) >= 3, 60, "tasks to end")
        time.sleep(10.0)
    finally:
        os.kill(brain, signal.SIGCONT)
    run = finish(submit)
    brain_log = (rig.rig_dir / "logs" / "brain.log").read_text()
    assert rig.children()["brain"] == brain  # the same brain, paused and continued
    fault = "brain paused (SIGSTOP) 10 s past the liveness expiry"
    assert_ran_once(plan, run, [t for tasks in groups for t in tasks], fault_table, fault)
    assert "is down" not in brain_log, brain_log
    assert "stood still" in brain_log, brain_log
