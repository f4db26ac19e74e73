"""Time is an input: deadlines, durations and rates follow the clock they are given.

Each clock here jumps where the test says; nothing waits on the real one.
"""

from __future__ import annotations

import itertools
import os
import select
import threading

import pytest

from llmo.proto.client import Client
from llmo.proto.messages import SnapshotRequest
from llmo.tui.feed import _Requests
from llmo.worker.llm import LoadSpec, Runtime, RuntimeEvent
from llmo.worker.meter import Meter
from llmo.worker.shell import ShellAttempt

pytestmark = pytest.mark.timeout(30)

HOUR = 3600.0


def jumping(step: float, start: float = 0.0):
    """A clock that moves ``step`` seconds at every reading."""
    ticks = itertools.count(start, step)
    return lambda: next(ticks)


@pytest.fixture
def lonely_client(zmq_context):
    """A client whose requests nobody answers."""
    client = Client("tool-1", "inproc://nobody-listens", context=zmq_context)
    yield client
    client.close()


def test_client_deadlines_follow_its_monotonic_clock(zmq_context):
    # An hour passes at every reading, so an hour's timeout is over at once.
    client = Client(
        "tool-1", "inproc://nobody-listens", context=zmq_context, monotonic=jumping(2 * HOUR)
    )
    try:
        assert client.request(SnapshotRequest(dst="brain"), timeout=HOUR) is None
        assert client.recv(timeout=HOUR) is None
    finally:
        client.close()


def test_the_monitors_requests_follow_its_clock(lonely_client):
    requests = _Requests(lonely_client, threading.Event(), clock=jumping(2 * HOUR))
    assert requests.request(SnapshotRequest(dst="brain"), timeout=HOUR) is None


def test_meter_rate_is_read_at_the_time_given():
    meter = Meter("a1", tokens=30, gen_s=2.0, gen_started=100.0)
    assert meter.tok_s(101.0) == 10.0  # 30 tokens over 2 s done and 1 s running
    assert meter.tok_s(104.0) == 5.0


def test_a_load_is_timed_by_the_runtimes_clock(tmp_path):
    events: list[RuntimeEvent] = []
    runtime = Runtime(post=events.append, clock=jumping(2.5, start=100.0))
    runtime.load(LoadSpec(path=str(tmp_path / "missing.gguf")))
    runtime.shutdown()
    assert [(e.state, e.load_s) for e in events] == [("failed", 2.5)]
    assert "does not exist" in events[0].error


def _wait_exit(shell: ShellAttempt) -> None:
    if shell.pidfd >= 0:
        select.select([shell.pidfd], [], [], 10)
    else:
        os.waitid(os.P_PID, shell.pid, os.WEXITED | os.WNOWAIT)


def _spawn(tmp_path, command: str, clock) -> ShellAttempt:
    return ShellAttempt.spawn(
        command,
        cwd=str(tmp_path),
        env={"PATH": os.defpath},
        log_path=str(tmp_path / "task.log"),
        clock=clock,
    )


def test_a_shell_attempts_duration_is_on_the_given_clock(tmp_path):
    now = [50.0]
    shell = _spawn(tmp_path, "exit 3", lambda: now[0])
    now[0] = 57.25
    _wait_exit(shell)
    outcome = shell.reap()
    assert (outcome.exit_code, outcome.duration_s) == (3, 7.25)


def test_a_shell_attempt_notes_when_it_was_stopped(tmp_path):
    now = [10.0]
    shell = _spawn(tmp_path, "exec sleep 30", lambda: now[0])
    now[0] = 12.0
    shell.terminate()
    now[0] = 15.0
    shell.kill()  # the first stop is the one noted
    _wait_exit(shell)
    outcome = shell.reap()
    assert shell.terminated_at == 12.0
    assert (outcome.stopped, outcome.duration_s) == ("killed", 5.0)
