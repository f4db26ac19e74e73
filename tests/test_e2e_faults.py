"""End to end with tasks failing, hanging and cancelled on a real ``llmo up``
rig, each batch followed with ``llmo submit --watch --json``. (Processes
killed mid-batch are in ``tests/faults/test_kills.py``.)

The tests share one rig whose brain settings come
from an ``llmo.toml`` ``[brain]`` section: a short backoff and a short grace
between abort and kill, so retries and kills happen within seconds.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.e2e_fixtures import (
    Rig,
    Submitted,
    events_of,
    module_rig_factory,
    one_test,
    running_attempt,
)
from tests.waiting import wait_for

__all__ = ["module_rig_factory"]

pytestmark = pytest.mark.timeout(180)

FAST_RETRIES = {"backoff_base_s": 0.5, "grace_s": 2.0}


@pytest.fixture(scope="module")
def shared_rig(module_rig_factory) -> Rig:
    return module_rig_factory(brain=FAST_RETRIES)


@pytest.fixture
def rig(shared_rig) -> Iterator[Rig]:
    yield from one_test(shared_rig)


def finish(rig: Rig, submit, timeout: float = 120.0) -> Submitted:
    out, err = submit.communicate(timeout=timeout)
    return Submitted(submit.returncode, out, err)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def assert_each_task_recorded_once(run: Submitted) -> None:
    events = run.events()
    succeeded = Counter(e["task_id"] for e in events_of(events, "task_succeeded"))
    assert all(n == 1 for n in succeeded.values()), succeeded
    assert len(events_of(events, "batch_completed")) == 1
    rows = run.rows()
    assert set(succeeded) == set(rows)
    assert run.summary["counts"] == {"done": len(rows)}


# --- tasks that fail, hang or are cancelled ------------------------------------------------


def test_a_task_that_fails_twice_then_succeeds_completes_on_its_third_attempt(rig):
    plan = rig.plan("flaky")

    run = rig.submit(plan)

    assert run.returncode == 0, run
    assert run.state == "complete"
    assert (run.history / "flaky.count").read_text() == "3"
    assert (run.history / "after.count").read_text() == "3"
    row = run.rows()["flaky"]
    assert row["attempts"] == 3 and row["state"] == "done", row
    events = run.events()
    failed = events_of(events, "task_failed", "flaky")
    assert [e["exit_code"] for e in failed] == [3, 3]
    assert len(events_of(events, "task_retried", "flaky")) == 2
    assert [e["attempt"] for e in events_of(events, "task_started", "flaky")] == [1, 2, 3]
    assert not (run.history / "ESCALATION.md").exists()


def test_a_task_that_always_fails_fails_the_batch_skips_its_dependents_and_escalates(rig):
    plan = rig.plan("broken")

    run = rig.submit(plan)

    assert run.returncode == 1, run
    assert run.state == "failed"
    rows = run.rows()
    assert rows["broken"]["state"] == "failed"
    assert rows["broken"]["attempts"] == 3
    assert rows["broken"]["exit_code"] == 4
    assert rows["downstream"]["state"] == "skipped"
    assert rows["further_down"]["state"] == "skipped"
    assert rows["independent"]["state"] == "done"
    assert not (run.history / "downstream.ran").exists()
    assert (run.history / "independent.ran").exists()
    assert run.summary["status"] == "failed"  # the original's word, though a task is done
    assert [f["id"] for f in run.summary["failures"]] == ["broken"]
    failure = json.loads((run.history / "results" / "batch_failure.json").read_text())
    assert [t["task_id"] for t in failure["failed_tasks"]] == ["broken"]
    escalation = (run.history / "ESCALATION.md").read_text()
    assert "## broken" in escalation
    assert "the input is corrupt" in escalation  # the failed task's own words
    assert "2 dependent task(s) were skipped" in escalation
    events = run.events()
    assert len(events_of(events, "task_failed", "broken")) == 3
    assert events_of(events, "batch_failed") or any(
        e["event"].startswith("batch_") and e.get("state") == "failed" for e in events
    )


def test_the_brain_writes_the_history_files_before_it_sends_what_happened(tmp_path):
    """Why the test above finds the final RUN_SUMMARY and ESCALATION.md as soon as
    submit returns: the brain writes them before it publishes the batch's end."""
    from llmo.brain.commands import AppendLines, Send, WriteFile
    from llmo.brain.service import BrainService
    from llmo.proto.messages import BROKER, BatchEvent

    service = BrainService("tcp://127.0.0.1:9", str(tmp_path / "brain.journal"))
    done = []
    service.execute = done.append
    ended = Send(BatchEvent(dst=BROKER, rev=1, batch_id="b", event="batch_failed"))
    files = [
        AppendLines(str(tmp_path / "batch_events.jsonl"), ("{}",)),
        WriteFile(str(tmp_path / "RUN_SUMMARY.json"), "{}"),
        WriteFile(str(tmp_path / "ESCALATION.md"), "#"),
    ]
    service.pending = [ended, *files]

    service.flush()

    assert done == [*files, ended]


def test_a_task_that_hangs_past_its_timeout_is_aborted_killed_and_retried(rig):
    plan = rig.plan("hang")

    run = rig.submit(plan)

    assert run.returncode == 0, run
    assert run.state == "complete"
    assert (run.history / "hang.count").read_text() == "2"
    events = run.events()
    aborting = events_of(events, "task_aborting", "hang")
    started_at = events_of(events, "task_started", "hang")[0]["ts"]
    assert len(aborting) == 1, events  # SIGTERM at the timeout ...
    assert aborting[0]["ts"] - started_at >= 2.5
    failed = events_of(events, "task_failed", "hang")
    assert len(failed) == 1 and failed[0]["reason"] == "killed", failed  # ... SIGKILL after it
    assert "signal 9" in failed[0]["error"]
    # The worker kills at the end of the grace (given with the attempt), or the brain
    # tells it to, whichever is first.
    assert failed[0]["ts"] - aborting[0]["ts"] >= FAST_RETRIES["grace_s"] - 1.0
    assert len(events_of(events, "task_killing", "hang")) <= 1
    assert run.rows()["hang"]["attempts"] == 2
    log = (run.history / "logs" / "hang.log").read_text()
    assert "hanging, deaf to SIGTERM" in log and "run 2: ok" in log


def test_a_cancelled_batch_stops_its_running_task_and_submit_exits_1(rig):
    plan = rig.plan("sleepy")
    submit = rig.submit_background(plan)
    attempt = running_attempt(rig, plan, "long")
    batch_id = attempt["batch_id"]
    pids = wait_for(lambda: task_pids(plan), 10, "the task's process")

    cancel = rig.llmo("cancel", batch_id)
    run = finish(rig, submit)

    assert cancel.returncode == 0, cancel.stderr
    assert run.returncode == 1, run
    assert run.state == "cancelled"
    rows = run.rows()
    assert rows["long"]["state"] == "cancelled", rows
    assert rows["later"]["state"] in ("cancelled", "skipped"), rows
    assert not (run.history / "later.ran").exists()
    wait_for(lambda: not any(alive(p) for p in pids), 10, "the cancelled task to stop")
    assert run.summary["status"] == "failed" and run.summary["state"] == "cancelled"
    again = rig.llmo("cancel", batch_id)
    assert again.returncode == 1  # a finished batch cannot be cancelled twice


def task_pids(plan) -> list[int]:
    """Pids of processes running a command of this plan copy (``sleep 60`` in its folder)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if cwd.startswith(str(plan)) and b"sleep" in b" ".join(argv):
            found.append(int(entry))
    return found


def test_a_summary_row_counts_the_attempts_lost_with_their_worker():
    from types import SimpleNamespace

    from llmo.brain.state import TaskRun
    from llmo.brain.summary import task_row

    spec = SimpleNamespace(task_class="cpu", executor="worker")
    lost = TaskRun(id="t", spec=spec, command="true", state="done", attempts=1, lost_workers=1)
    plain = TaskRun(id="u", spec=spec, command="true", state="done", attempts=1)

    assert (task_row(lost)["attempts"], task_row(lost)["lost"]) == (1, 1)
    assert "lost" not in task_row(plain)
