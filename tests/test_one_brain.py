"""One brain per broker, with real processes: a refused second brain stops.

A ``llmo broker`` and a ``llmo brain`` run as processes. A second
``llmo brain``, on a journal of its own (so its journal lock does not stop
it), connects to the same broker: the broker refuses it ``name_in_use``,
and it says so in one line and exits 2 (which ``llmo up`` does not restart).
The first brain is told of the newcomer, keeps running and keeps answering
``llmo status``.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from llmo.brain.service import refusal_grace
from llmo.proto.client import Client
from llmo.proto.errors import ErrorCode
from llmo.proto.messages import BRAIN, Error, SnapshotRequest
from tests.e2e_fixtures import free_port, llmo_argv
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

REFUSED_S = 30.0  # bounds a hang: the refusal answers the second brain's first message


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []

    def start(log: Path, *args: str) -> subprocess.Popen:
        with log.open("ab") as out:
            process = subprocess.Popen(
                [*llmo_argv(), *args],
                cwd=log.parent,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def status(endpoint: str, pub: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*llmo_argv(), "status", "--broker", endpoint, "--pub", pub, "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def finish(process: subprocess.Popen, seconds: float = REFUSED_S) -> int | None:
    """The exit code, or None if it was still running after ``seconds``."""
    try:
        return process.wait(seconds)
    except subprocess.TimeoutExpired:
        return None


def test_a_second_brain_on_another_journal_is_refused_and_stops(processes, tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = f"tcp://127.0.0.1:{free_port()}"
    logs = {name: tmp_path / f"{name}.log" for name in ("broker", "first", "second")}
    broker = processes(logs["broker"], "broker", "--broker", endpoint, "--pub", pub)
    first = processes(
        logs["first"],
        "brain",
        "--broker",
        endpoint,
        "--journal",
        str(tmp_path / "first" / "brain.journal"),
        "--tick",
        "0.1",
    )
    wait_for(
        lambda: status(endpoint, pub).returncode == 0,
        60,
        lambda: f"the first brain to answer llmo status\n{logs['first'].read_text()}",
    )

    second = processes(
        logs["second"],
        "brain",
        "--broker",
        endpoint,
        "--journal",
        str(tmp_path / "second" / "brain.journal"),
        "--tick",
        "0.1",
    )
    code = finish(second)

    said = logs["second"].read_text()
    assert code == 2, f"exit {code}: {said}"
    line = f"another brain is connected to the broker at {endpoint}; this one stops"
    stops = [row for row in said.splitlines() if line in row]
    assert len(stops) == 1, said
    assert said.strip().splitlines()[-1] == stops[0], said  # what llmo up shows as the reason
    assert first.poll() is None, logs["first"].read_text()
    assert broker.poll() is None, logs["broker"].read_text()
    answered = status(endpoint, pub)
    assert answered.returncode == 0, answered.stderr
    first_said = logs["first"].read_text()
    assert "this one stops" not in first_said, first_said
    assert "claimed the name 'brain' and was refused" in first_said, first_said
    assert "this brain keeps running" in first_said, first_said
    assert "name_in_use" in logs["broker"].read_text()


def test_a_brain_whose_old_connection_still_holds_the_name_takes_it_back(processes, tmp_path):
    """A connection cut off by a partition stays the name's holder at the broker until
    it is silent past the expiry; the brain's new connection, refused meanwhile,
    claims the name again and keeps running."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = f"tcp://127.0.0.1:{free_port()}"
    logs = {name: tmp_path / f"{name}.log" for name in ("broker", "brain")}
    processes(logs["broker"], "broker", "--broker", endpoint, "--pub", pub)
    stale = Client(BRAIN, endpoint)  # the old connection: it claimed the name, then fell silent
    probe = Client("probe", endpoint)
    try:
        stale.tick()
        asked = wait_for(
            lambda: probe.send(SnapshotRequest(dst=BRAIN)) and stale.recv(0.5),
            30,
            "the broker to route 'brain' to the old connection",
        )
        assert isinstance(asked, SnapshotRequest)
        brain = processes(
            logs["brain"],
            "brain",
            "--broker",
            endpoint,
            "--journal",
            str(tmp_path / "brain.journal"),
            "--tick",
            "0.1",
        )
        wait_for(
            lambda: status(endpoint, pub).returncode == 0,
            60,
            lambda: f"the new connection to take the name back\n{logs['brain'].read_text()}",
        )
        said = logs["brain"].read_text()
        assert brain.poll() is None, said
        assert "claiming it again" in said, said  # it was refused at first
        assert "this one stops" not in said, said
        assert "moves to a new connection" in logs["broker"].read_text()
    finally:
        stale.close()
        probe.close()


def test_refusals_mean_another_brain_only_past_the_brokers_expiry():
    def refusal(detail: str) -> Error:
        return Error(code=ErrorCode.NAME_IN_USE, reply_to="m1", src="broker", detail=detail)

    said = "'brain' is held by another live connection (heard 0.2s ago); a second one is "
    assert refusal_grace(refusal(said + "refused until the first is gone or silent 3s")) == 10.0
    assert refusal_grace(refusal(said + "refused until the first is gone or silent 60s")) == 62.0
    assert refusal_grace(refusal("no figure here")) == 10.0
