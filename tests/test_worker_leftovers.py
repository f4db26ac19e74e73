"""A worker killed with SIGKILL leaves no task running once its successor starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from llmo.proto.messages import Register, TaskAssign, TaskStarted
from llmo.worker.leftovers import GroupLedger, start_time
from tests.waiting import wait_until
from tests.worker_fixtures import (  # noqa: F401  (fixtures)
    alive,
    brain_factory,
    read_pid,
)

pytestmark = pytest.mark.timeout(60)


def start_worker(endpoint: str, ledger, log) -> subprocess.Popen:
    env = dict(os.environ, LLMO_WORKER_LEDGER=str(ledger))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmo.cli.main",
            "worker",
            "--name",
            "gpu-7",
            "--broker",
            endpoint,
            "--slots",
            "2",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_successor_kills_the_tasks_a_killed_worker_left(running_broker, brain_factory, tmp_path):  # noqa: F811
    brain = brain_factory(running_broker.endpoint)
    ledger = tmp_path / "gpu-7.groups"
    pidfile = tmp_path / "child.pid"
    with open(tmp_path / "worker.log", "ab") as log:
        first = start_worker(running_broker.endpoint, ledger, log)
        try:
            brain.expect(Register, src="gpu-7")
            brain.send(
                TaskAssign(
                    dst="gpu-7",
                    batch_id="b",
                    task_id="t",
                    attempt_id="b:t:1",
                    task_class="cpu",
                    batch_path=str(tmp_path),
                    command=f"sleep 120 & echo $! > {pidfile}; wait",
                )
            )
            brain.expect(TaskStarted, attempt_id="b:t:1")
            child = read_pid(pidfile)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            time.sleep(0.5)  # the window in which a child tied to the worker would die
            assert alive(child), "a task in its own session outlives a killed worker"
            second = start_worker(running_broker.endpoint, ledger, log)
            try:
                assert wait_until(lambda: not alive(child), timeout=20)
                brain.expect(Register, src="gpu-7")
            finally:
                second.terminate()
                second.wait(timeout=20)
            assert not ledger.exists()  # a clean stop with nothing running leaves none
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
            if pidfile.exists() and alive(int(pidfile.read_text())):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert "killed 1 task process group(s) left running" in (tmp_path / "worker.log").read_text()


def test_ledger_never_touches_a_live_owner_or_a_recycled_pid(tmp_path):
    path = str(tmp_path / "w.groups")
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    started = start_time(sleeper.pid)
    try:
        mine = GroupLedger(path)
        mine.reap_previous()  # no file yet: starts one
        mine.add(sleeper.pid)
        mine.add(other.pid)
        mine.remove(other.pid)  # finished normally: not to be killed later
        # The owner (this process) is alive: a second ledger must not reap.
        assert GroupLedger(path).reap_previous() == 0
        assert sleeper.poll() is None
        mine.close()
        # An owner that is gone, but a start time that does not match (a recycled pid).
        with open(path, "w") as f:
            f.write(f"owner 999999999 1\n+ {sleeper.pid} {started + 1}\n")
        assert GroupLedger(path).reap_previous() == 0
        assert sleeper.poll() is None
        with open(path, "w") as f:
            f.write(
                f"owner 999999999 1\n+ {sleeper.pid} {started}\n+ {other.pid} 5\n- {other.pid}\n"
            )
        assert GroupLedger(path).reap_previous() == 1
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for proc in (sleeper, other):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_ledger_file_stays_small(tmp_path):
    ledger = GroupLedger(str(tmp_path / "w.groups"))
    ledger.reap_previous()
    me = os.getpid()
    for _ in range(1000):
        ledger.add(me)
        ledger.remove(me)
    ledger.close()
    assert len((tmp_path / "w.groups").read_text().splitlines()) < 250
    assert GroupLedger.read(str(tmp_path / "w.groups"))[1] == {}
