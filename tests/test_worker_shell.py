"""Shell attempts on a real worker: real subprocesses, a real broker on loopback."""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import pytest

from llmo.proto.messages import (
    Heartbeat,
    TaskAssign,
    TaskCancel,
    TaskDone,
    TaskFailed,
    TaskStarted,
)
from llmo.worker import attempts
from llmo.worker.shell import KEEP_ENV
from tests.waiting import wait_for, wait_until
from tests.worker_fixtures import (  # noqa: F401  (fixtures)
    alive,
    brain_factory,
    read_pid,
    worker_factory,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def setup(running_broker, brain_factory, worker_factory, tmp_path):  # noqa: F811
    """A broker, a stand-in brain, and ``start(**config)`` for a worker on them."""

    def start(**config):
        brain = brain_factory(running_broker.endpoint)
        worker = worker_factory(running_broker.endpoint, **config)
        brain.heartbeat(worker.name)
        return brain, worker

    return start


def assign(tmp_path, task_id, command, **fields) -> TaskAssign:
    return TaskAssign(
        dst="gpu-t",
        batch_id="20260101_000000",
        task_id=task_id,
        attempt_id=f"20260101_000000:{task_id}:1",
        task_class=fields.pop("task_class", "cpu"),
        command=command,
        plan_path=str(tmp_path),
        batch_path=str(tmp_path),
        log_path=str(tmp_path / "logs" / f"{task_id}.log"),
        **fields,
    )


def test_success_reports_done_with_the_log_tail(setup, tmp_path):
    brain, _ = setup()
    msg = brain.send(assign(tmp_path, "ok", "echo hello from $TASK_ID; echo to-stderr >&2"))
    done = brain.expect(TaskDone, attempt_id=msg.attempt_id)
    assert done.exit_code == 0
    assert done.duration_s > 0
    assert "hello from ok" in done.log_tail and "to-stderr" in done.log_tail
    log = (tmp_path / "logs" / "ok.log").read_text()
    assert "hello from ok\n" in log and "to-stderr\n" in log


def test_non_zero_exit_fails_with_the_code(setup, tmp_path):
    brain, _ = setup()
    msg = brain.send(assign(tmp_path, "bad", "echo about to fail; exit 3"))
    failed = brain.expect(TaskFailed, attempt_id=msg.attempt_id)
    assert failed.reason == "exit"
    assert failed.exit_code == 3
    assert "about to fail" in failed.log_tail


def test_exit_75_asks_for_a_retry_later(setup, tmp_path):
    brain, _ = setup()
    msg = brain.send(assign(tmp_path, "later", "exit 75"))
    failed = brain.expect(TaskFailed, attempt_id=msg.attempt_id)
    assert failed.reason == "retry_later"
    assert failed.exit_code == 75


def test_output_streams_to_the_log_while_the_task_runs(setup, tmp_path):
    brain, _ = setup()
    msg = brain.send(assign(tmp_path, "stream", "echo first; sleep 30"))
    brain.expect(TaskStarted, attempt_id=msg.attempt_id)
    log = tmp_path / "logs" / "stream.log"
    assert wait_until(lambda: "first" in log.read_text(), 10)
    brain.send(
        TaskCancel(
            dst="gpu-t",
            batch_id=msg.batch_id,
            task_id="stream",
            attempt_id=msg.attempt_id,
            mode="kill",
        )
    )
    brain.expect(TaskFailed, attempt_id=msg.attempt_id, reason="killed")


def test_environment_is_clean_and_complete(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMO_TEST_SECRET", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-tasks")
    brain, _ = setup()
    msg = brain.send(assign(tmp_path, "env", "env -0 > env.bin", env={"MY_SETTING": "42"}))
    brain.expect(TaskDone, attempt_id=msg.attempt_id)
    pairs = (tmp_path / "env.bin").read_bytes().decode().split("\0")
    env = dict(pair.split("=", 1) for pair in pairs if pair)
    assert env["PLAN_PATH"] == str(tmp_path)
    assert env["BATCH_PATH"] == str(tmp_path)
    assert env["BATCH_ID"] == msg.batch_id
    assert env["TASK_ID"] == "env"
    assert env["ATTEMPT_ID"] == msg.attempt_id
    assert env["MY_SETTING"] == "42"
    assert env["WORKER_NAME"] == msg.dst  # the original's name for the worker running it
    assert "LLMO_TEST_SECRET" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert "LLM_API_BASE" not in env  # no model is hot
    allowed = set(KEEP_ENV) | {
        "PLAN_PATH",
        "BATCH_PATH",
        "BATCH_ID",
        "TASK_ID",
        "ATTEMPT_ID",
        "WORKER_NAME",
        "PYTHONUNBUFFERED",
        "MY_SETTING",
        "LLMO_TASK_MARK",  # the attempt's marker, for the sweep of its strays
        "PWD",  # the shell's own
    }
    assert set(env) <= allowed, set(env) - allowed
    assert os.path.realpath(env["PWD"]) == os.path.realpath(tmp_path)


ABORT_RESISTANT = """
trap '' TERM
sh -c 'echo $$ > child1.pid; exec sleep 300' &
sleep 300 &
echo $! > child2.pid
echo $$ > leader.pid
wait
"""


@pytest.mark.parametrize("mode", ["abort", "kill"])
def test_abort_and_kill_leave_no_orphans(setup, tmp_path, mode):
    brain, worker = setup()
    msg = brain.send(assign(tmp_path, f"stubborn-{mode}", ABORT_RESISTANT, grace_s=0.5))
    started = brain.expect(TaskStarted, attempt_id=msg.attempt_id)
    pids = [read_pid(tmp_path / f) for f in ("leader.pid", "child1.pid", "child2.pid")]
    assert pids[0] == started.pid
    assert all(alive(p) for p in pids)
    cancel = TaskCancel(
        dst="gpu-t",
        batch_id=msg.batch_id,
        task_id=msg.task_id,
        attempt_id=msg.attempt_id,
        mode=mode,
        reason="test says stop",
    )
    brain.send(cancel)
    if mode == "abort":
        attempt = worker.worker.attempts.running[msg.attempt_id]
        wait_for(lambda: attempt.kill_at is not None, 5, "the worker to send SIGTERM")
        # SIGTERM is ignored: all still there until the grace ends. A group that did
        # not ignore it would be gone well within this window.
        time.sleep(0.2)
        assert all(alive(p) for p in pids)
        brain.send(cancel)  # a second abort must not push the kill back
    failed = brain.expect(TaskFailed, attempt_id=msg.attempt_id)
    assert failed.reason == "killed"
    assert "test says stop" in failed.error
    assert failed.signal == 9
    assert wait_until(lambda: not any(alive(p) for p in pids), 5), [p for p in pids if alive(p)]


def test_abort_of_a_task_that_stops_on_sigterm(setup, tmp_path):
    brain, _ = setup()
    msg = brain.send(assign(tmp_path, "polite", "echo $$ > pid; exec sleep 300"))
    brain.expect(TaskStarted, attempt_id=msg.attempt_id)
    pid = read_pid(tmp_path / "pid")
    brain.send(
        TaskCancel(
            dst="gpu-t", batch_id=msg.batch_id, task_id=msg.task_id, attempt_id=msg.attempt_id
        )
    )
    failed = brain.expect(TaskFailed, attempt_id=msg.attempt_id)
    assert failed.reason == "aborted"
    assert failed.signal == 15
    assert not alive(pid)


def test_timeout_is_enforced_by_the_worker(setup, tmp_path):
    brain, _ = setup()
    msg = brain.send(assign(tmp_path, "slow", "sleep 300", timeout_s=0.3, grace_s=0.5))
    failed = brain.expect(TaskFailed, attempt_id=msg.attempt_id)
    assert failed.reason == "aborted"
    assert "timeout" in failed.error


def test_children_left_behind_are_killed_when_the_task_exits(setup, tmp_path):
    brain, _ = setup()
    msg = brain.send(assign(tmp_path, "leaky", "sleep 300 & echo $! > bg.pid; echo done"))
    brain.expect(TaskDone, attempt_id=msg.attempt_id)
    pid = read_pid(tmp_path / "bg.pid")
    assert wait_until(lambda: not alive(pid), 5)


def test_peak_memory_is_sampled(setup, tmp_path):
    brain, _ = setup()
    hog = f"{sys.executable} -c 'import time; b = b\"x\" * 150_000_000; time.sleep(1.5)'"
    msg = brain.send(assign(tmp_path, "hog", hog))
    done = brain.expect(TaskDone, attempt_id=msg.attempt_id)
    assert 140 <= done.peak_rss_mb < 1000


def test_cancel_of_an_unknown_attempt_is_answered_lost(setup, tmp_path):
    brain, _ = setup()
    brain.send(TaskCancel(dst="gpu-t", batch_id="b", task_id="t", attempt_id="b:t:9"))
    failed = brain.expect(TaskFailed, attempt_id="b:t:9")
    assert failed.reason == "lost"
    assert "does not know" in failed.error


def test_a_missing_batch_folder_is_a_spawn_error(setup, tmp_path):
    brain, _ = setup()
    msg = assign(tmp_path, "nowhere", "true")
    msg = brain.send(dataclasses.replace(msg, batch_path=str(tmp_path / "missing")))
    failed = brain.expect(TaskFailed, attempt_id=msg.attempt_id)
    assert failed.reason == "spawn_error"
    assert "does not exist" in failed.error


def test_assignments_beyond_slots_or_vram_are_refused(setup, tmp_path):
    brain, _ = setup(slots=1, vram_mb=2048)
    first = brain.send(assign(tmp_path, "long", "sleep 300", task_class="script", vram_mb=1024))
    brain.expect(TaskStarted, attempt_id=first.attempt_id)
    beat = brain.heartbeat("gpu-t", active=(first.attempt_id,))
    assert (beat.slots_free, beat.vram_used_mb, beat.vram_budget_mb) == (0, 1024, 2048)
    second = brain.send(assign(tmp_path, "second", "true"))
    failed = brain.expect(TaskFailed, attempt_id=second.attempt_id)
    assert failed.reason == "refused" and "no free slot" in failed.error
    brain.send(
        TaskCancel(
            dst="gpu-t",
            batch_id=first.batch_id,
            task_id="long",
            attempt_id=first.attempt_id,
            mode="kill",
        )
    )
    brain.expect(TaskFailed, attempt_id=first.attempt_id)
    big = brain.send(assign(tmp_path, "big", "true", task_class="script", vram_mb=4096))
    failed = brain.expect(TaskFailed, attempt_id=big.attempt_id)
    assert failed.reason == "refused" and "VRAM budget" in failed.error
    llm = brain.send(assign(tmp_path, "llm", "true", task_class="llm"))
    failed = brain.expect(TaskFailed, attempt_id=llm.attempt_id)
    assert failed.reason == "refused" and "no model is hot" in failed.error


def test_slots_run_attempts_at_the_same_time(setup, tmp_path):
    brain, _ = setup(slots=3)
    # Each attempt notes when it began and ended; with three slots every one
    # begins before any ends, whatever the machine's speed.
    command = "date +%s.%N > {i}.began; sleep 1; date +%s.%N > {i}.ended"
    msgs = [brain.send(assign(tmp_path, f"par{i}", command.format(i=i))) for i in range(3)]
    for msg in msgs:
        brain.expect(TaskDone, attempt_id=msg.attempt_id)
    began = [float((tmp_path / f"{i}.began").read_text()) for i in range(3)]
    ended = [float((tmp_path / f"{i}.ended").read_text()) for i in range(3)]
    assert max(began) < min(ended)


def test_heartbeats_carry_state_and_telemetry(setup, tmp_path):
    brain, _ = setup()
    beat = brain.expect(Heartbeat, src="gpu-t")
    assert beat.role == "worker" and beat.state == "cold"
    assert beat.slots_total == 1 and beat.slots_free == 1
    assert beat.telemetry is not None and beat.telemetry.note == "fake telemetry"


def test_a_result_is_sent_again_when_the_attempt_is_assigned_again(setup, tmp_path):
    brain, _ = setup()
    msg = assign(tmp_path, "once", "echo run >> runs.txt")
    brain.send(msg)
    brain.expect(TaskDone, attempt_id=msg.attempt_id)
    brain.send(msg)
    brain.expect(TaskDone, attempt_id=msg.attempt_id)
    assert (tmp_path / "runs.txt").read_text() == "run\n"


def test_a_short_task_sends_its_result_alone_and_a_longer_one_reports_its_start(
    setup, tmp_path, monkeypatch
):
    # TaskStarted only informs: one that would arrive just before the result is a
    # message through the broker and the brain for nothing. (A longer wait than the
    # worker's own, so a loaded machine cannot make ``true`` look long.)
    monkeypatch.setattr(attempts, "START_REPORT_S", 1.0)
    brain, _ = setup(slots=2)
    short = brain.send(assign(tmp_path, "short", "true"))
    longer = brain.send(assign(tmp_path, "longer", "echo $$ > pid; exec sleep 3"))
    brain.expect(TaskDone, attempt_id=short.attempt_id)
    started = brain.expect(TaskStarted, attempt_id=longer.attempt_id)
    assert started.pid == read_pid(tmp_path / "pid")
    brain.expect(TaskDone, attempt_id=longer.attempt_id)
    assert [m for m in brain.seen if isinstance(m, TaskStarted)] == [started]
