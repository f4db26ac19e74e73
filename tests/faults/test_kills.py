"""Processes of a real ``llmo up`` rig killed mid-batch: a worker, the brain, the
broker. Each kill test gets a rig of its own (the supervisor restarts the
killed child) and follows the batch with ``llmo submit --watch --json``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.e2e_fixtures import Submitted, events_of, rig_factory, running_attempt
from tests.faults.conftest import FaultTable
from tests.test_e2e_faults import alive, assert_each_task_recorded_once, finish

__all__ = ["rig_factory"]

pytestmark = pytest.mark.timeout(180)


def steps_row(fault_table: FaultTable, fault: str, run: Submitted) -> list[str]:
    """The chain plan's steps as they ran (each appends its name to steps.txt)."""
    path = run.history / "steps.txt"
    steps = path.read_text().split() if path.exists() else []
    expected = ["step1", "step2", "step3", "step4"]
    lost = sum(1 for step in expected if step not in steps)
    rerun = sum(n - 1 for n in Counter(steps).values())
    fault_table.row(fault, lost=lost, rerun=rerun)
    return steps


def test_a_worker_killed_mid_task_loses_the_attempt_and_the_task_finishes_elsewhere(
    rig_factory, fault_table
):
    rig = rig_factory()
    plan = rig.plan("nap")
    submit = rig.submit_background(plan, "--config", '{"NAP_S": 4}')
    first = running_attempt(rig, plan, "nap")
    victim = rig.children()[first["worker"]]

    rig.kill(first["worker"])
    run = finish(rig, submit)

    done = Counter(e["task_id"] for e in events_of(run.events(), "task_succeeded"))
    fault_table.row(
        "worker SIGKILLed mid-task",
        lost=sum(1 for task in ("nap", "after") if done[task] == 0),
        rerun=sum(n - 1 for n in done.values()),
        note="its unfinished attempt runs again elsewhere",
    )
    assert run.returncode == 0, run
    assert run.state == "complete"
    events = run.events()
    started = events_of(events, "task_started", "nap")
    assert len(started) == 2, started
    assert started[0]["attempt_id"] != started[1]["attempt_id"]
    retried = events_of(events, "task_retried", "nap")
    assert len(retried) == 1 and retried[0]["spent"] is False, retried
    assert first["worker"] in retried[0]["reason"]
    assert not alive(victim)
    second = started[1]["worker"]
    assert second != first["worker"] or rig.children()[second] != victim
    row = run.rows()["nap"]
    assert row["state"] == "done"
    assert (row["attempts"], row["lost"]) == (1, 1), row  # two attempts; the lost one is not spent
    assert "1 (+1 lost)" in (run.history / "RUN_SUMMARY.md").read_text()
    assert run.rows()["after"]["state"] == "done"
    assert_each_task_recorded_once(run)


def test_the_brain_killed_mid_batch_resumes_from_its_journal_and_records_nothing_twice(
    rig_factory, fault_table
):
    rig = rig_factory()
    plan = rig.plan("chain")
    submit = rig.submit_background(plan, "--config", '{"STEP_S": 1.5}')
    running_attempt(rig, plan, "step2")

    old = rig.kill("brain")
    rig.wait_restarted("brain", old)
    run = finish(rig, submit)

    steps = steps_row(fault_table, "brain SIGKILLed mid-batch", run)
    assert run.returncode == 0, run
    assert run.state == "complete"
    brain_log = (rig.rig_dir / "logs" / "brain.log").read_text()
    assert "1 batches (1 running)" in brain_log, brain_log  # it restarted mid-batch
    assert_each_task_recorded_once(run)
    assert steps == ["step1", "step2", "step3", "step4"]  # and ran each step once
    assert all(row["attempts"] == 1 for row in run.rows().values()), run.rows()


def test_the_broker_killed_mid_batch_is_restarted_and_everyone_reconnects(rig_factory, fault_table):
    rig = rig_factory()
    plan = rig.plan("chain")
    submit = rig.submit_background(plan, "--config", '{"STEP_S": 1.5}')
    running_attempt(rig, plan, "step2")

    old = rig.kill("broker")
    rig.wait_restarted("broker", old)
    run = finish(rig, submit)

    steps = steps_row(fault_table, "broker SIGKILLed mid-batch", run)
    assert run.returncode == 0, run
    assert run.state == "complete"
    assert_each_task_recorded_once(run)
    assert steps == ["step1", "step2", "step3", "step4"]
    rig.wait_ready(30)  # every worker registered again with the new broker
    broker_log = (rig.rig_dir / "logs" / "broker.log").read_text()
    assert broker_log.count("broker routing on") == 2
