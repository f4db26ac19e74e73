"""A whole-rig stop mid-batch: results finished in the grace are recorded, the
batch is marked interrupted, and ``llmo up`` again runs only what had not finished.

A real ``llmo up`` rig runs a batch whose first round has short tasks (they
finish within the stop grace) and long ones (still running when it ends).
Each task appends to ``starts.txt`` when it begins and to ``runs.txt`` when it
ends, so the files show what ran, whatever the brain recorded. The rig gets
SIGTERM, as Ctrl-C or ``systemctl stop`` would give it, while all of them run.
Then ``llmo up`` is started again on the same folders, with a marker file that
makes every task short, and the batch must complete by itself.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_fixtures import Rig, llmo_argv, rig_factory
from tests.faults.counting import counting_plan, lines
from tests.waiting import wait_for

__all__ = ["rig_factory"]

pytestmark = pytest.mark.timeout(240)

SHORT = ["f1", "f2"]  # finish within the stop grace
LONG = ["s1", "s2"]  # still running when the grace ends: interrupted
AFTER = ["g1"]  # waits for all of them


def stop_plan(rig: Rig) -> Path:
    first = [(task, 4.0) for task in SHORT] + [(task, 600.0) for task in LONG]
    after = [(task, 0.2) for task in AFTER]
    return counting_plan(
        rig.plans_dir, "stopped", [(first, "none"), (after, ", ".join(SHORT + LONG))]
    )


def history_of(plan: Path) -> Path:
    folders = [f for f in (plan / "history").glob("*") if f.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def events(history: Path) -> list[dict[str, Any]]:
    path = history / "batch_events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def summary(history: Path) -> dict[str, Any]:
    path = history / "RUN_SUMMARY.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_a_rig_stopped_mid_batch_records_what_finished_and_resumes_only_the_rest(
    rig_factory, fault_table
):
    rig = rig_factory()
    plan = stop_plan(rig)
    submit = rig.submit_background(plan)
    first = SHORT + LONG
    wait_for(lambda: len(lines(plan / "starts.txt")) >= len(first), 60, "the first round to start")
    finished_before_stop = lines(plan / "runs.txt")
    rig.process.send_signal(signal.SIGTERM)  # the whole rig, as Ctrl-C or systemctl stop
    rig.process.wait(120)
    submit.kill()  # its watch ended with the rig
    submit.communicate()
    left = rig.stop()
    assert not left, left
    up_log = rig.up_log.read_text()
    assert rig.process.returncode == 0, up_log

    history = history_of(plan)
    stopped = events(history)
    names = [e["event"] for e in stopped]
    done = {e["task_id"] for e in stopped if e["event"] == "task_succeeded"}
    runs = lines(plan / "runs.txt")
    print(f"finished before the stop: {finished_before_stop}; after it: {runs}; recorded {done}")
    # The short tasks ended during the grace, and their results were recorded.
    assert not set(SHORT) & set(finished_before_stop), "the stop came too late to test the grace"
    assert set(SHORT) <= set(runs) and set(SHORT) <= done, (runs, done, rig.logs())
    assert not set(LONG) & set(runs), runs
    assert "batch_interrupted" in names, (names, rig.logs())
    interrupted = summary(history)
    assert interrupted["status"] == "partial" and interrupted["interrupted"], interrupted
    assert interrupted["counts"].get("done") == len(SHORT), interrupted["counts"]

    (plan / "fast").touch()
    again = rig_factory(again=rig)
    final = wait_for(
        lambda: (s := summary(history)).get("status") == "complete" and s,
        120,
        lambda: f"the batch to complete after llmo up again\n{again.logs()}",
    )
    runs_per_task = Counter(lines(plan / "runs.txt"))
    starts_per_task = Counter(lines(plan / "starts.txt"))
    print(f"runs per task: {dict(runs_per_task)}; starts per task: {dict(starts_per_task)}")
    tasks = SHORT + LONG + AFTER
    recorded = Counter(e["task_id"] for e in events(history) if e["event"] == "task_succeeded")
    lost = len([t for t in tasks if recorded[t] == 0])
    rerun = sum(n - 1 for t, n in runs_per_task.items() if n > 1)
    fault_table.row(
        "whole-rig stop (SIGTERM to llmo up) mid-batch, then llmo up again",
        lost=lost,
        rerun=rerun,
        note=f"{len(SHORT)} finished in the grace, {len(LONG)} interrupted and resumed",
    )
    assert runs_per_task == Counter(tasks), runs_per_task
    assert starts_per_task == Counter(tasks + LONG), starts_per_task  # interrupted: twice
    assert recorded == Counter(tasks), recorded
    rows = {row["id"]: row for row in final["tasks"]}
    # An interrupted attempt is not spent: each task used one attempt.
    assert all(row["attempts"] == 1 for row in rows.values()), rows
    assert "lost" not in rows["s1"] and "lost" not in rows["s2"], rows


def test_the_stop_grace_is_an_option_of_llmo_up():
    help_text = subprocess.run(
        [*llmo_argv(), "up", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "--stop-grace" in help_text, help_text


FAULTS = ["whole-rig stop (SIGTERM to llmo up) mid-batch, then llmo up again on the same folder"]
