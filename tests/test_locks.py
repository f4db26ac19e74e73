"""One brain per journal, one ``llmo up`` per rig folder, with real processes.

A second brain on a journal that a live brain holds exits 2 naming the
holder, and the holder keeps serving; once the holder is killed with
SIGKILL the operating system has released its lock and a new brain starts on
that journal. ``llmo replay`` reads a journal that a live brain holds. A
second ``llmo up`` on the rig folder of a running one (on other ports)
refuses at once, naming the first's pid and endpoints, starts nothing, and
the first rig keeps working.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from llmo.brain.lockfile import FileLock, Locked
from llmo.proto.client import Client
from llmo.proto.messages import SnapshotReply, SnapshotRequest
from tests.e2e_fixtures import (  # noqa: F401 (rig_factory: a fixture)
    free_port,
    llmo_argv,
    rig_factory,
    start_brain,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

REFUSED_S = 30.0  # bounds a hang: a refusal comes before anything starts


@pytest.fixture
def broker(broker_factory):
    return broker_factory(interval=0.3).broker


@pytest.fixture
def brains():
    started: list[subprocess.Popen] = []

    def start(endpoint: str, journal: Path, log: Path) -> subprocess.Popen:
        brain = start_brain(endpoint, journal, log)
        started.append(brain)
        return brain

    yield start
    for brain in started:
        if brain.poll() is None:
            brain.kill()
            brain.wait(10)


def serving(client: Client) -> bool:
    reply = client.request(SnapshotRequest(dst="brain"), timeout=1.0)
    return isinstance(reply, SnapshotReply)


def finish(process: subprocess.Popen, seconds: float = REFUSED_S) -> int | None:
    """The exit code, or None (and the process stopped) if it was still running."""
    try:
        return process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return None


def test_a_second_brain_on_a_held_journal_is_refused_and_a_killed_holder_frees_it(
    broker, brains, tmp_path
):
    journal = tmp_path / "rig" / "brain.journal"
    first_log, second_log, third_log = (tmp_path / f"brain-{n}.log" for n in (1, 2, 3))
    endpoint = broker.router_endpoint
    tool = Client("lock-test", endpoint)
    try:
        first = brains(endpoint, journal, first_log)
        wait_for(lambda: serving(tool), 30, lambda: f"the brain to serve\n{first_log.read_text()}")
        size = journal.stat().st_size

        second = brains(endpoint, journal, second_log)
        code = finish(second)

        said = second_log.read_text()
        assert code == 2, f"exit {code}: {said}"
        assert str(journal) in said and f"pid {first.pid}" in said, said
        assert endpoint in said, said  # the broker the holder serves
        assert first.poll() is None, first_log.read_text()
        assert serving(tool), first_log.read_text()
        assert journal.stat().st_size >= size  # the refused brain did not cut it short

        # A live brain's journal can be read: llmo replay takes no lock.
        replay = subprocess.run(
            [*llmo_argv(), "replay", str(journal)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert replay.returncode == 0, replay.stderr
        assert "configure" in replay.stdout

        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        third = brains(endpoint, journal, third_log)
        wait_for(
            lambda: third.poll() is None and serving(tool),
            30,
            lambda: f"a new brain to serve after the holder died\n{third_log.read_text()}",
        )
        holder = json.loads(Path(str(journal) + ".lock").read_text())
        assert holder["pid"] == third.pid and holder["broker"] == endpoint
    finally:
        tool.close()


def test_a_second_llmo_up_on_a_rig_folder_in_use_is_refused(rig_factory, tmp_path):  # noqa: F811
    rig = rig_factory(workers=1)
    brain_config = rig.rig_dir / "brain.json"
    before = brain_config.stat().st_mtime_ns
    other_broker = f"tcp://127.0.0.1:{free_port()}"
    other_pub = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, LLMO_BROKER=other_broker, LLMO_PUB=other_pub)
    with open(tmp_path / "second-up.log", "wb") as out:
        second = subprocess.Popen(
            [*llmo_argv(), "up", "--workers", "1", "--rig-dir", str(rig.rig_dir)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    code = finish(second)

    said = (tmp_path / "second-up.log").read_text()
    assert code == 2, f"exit {code}: {said}"
    assert f"rig folder {rig.rig_dir} is in use by llmo up pid {rig.process.pid}" in said, said
    assert rig.broker in said and rig.pub in said, said
    assert brain_config.stat().st_mtime_ns == before  # nothing of the second was started
    assert not (rig.rig_dir / "logs" / "broker.log").read_text().count(other_broker)
    status = rig.status()
    up = {w["name"] for w in status["workers"] if w["state"] != "down"}
    assert set(rig.expected) <= up, status
    assert rig.process.poll() is None


def test_a_holder_that_has_not_named_itself_is_reported_as_unknown(tmp_path):
    path = tmp_path / "x.lock"
    with open(path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # locked, nothing written yet
        with pytest.raises(Locked) as refused:
            FileLock.acquire(str(path), {"broker": "tcp://127.0.0.1:1"})
    assert refused.value.holder == {}
    assert "pid unknown" in str(refused.value)
    lock = FileLock.acquire(str(path), {"broker": "tcp://127.0.0.1:1"})  # free again
    assert json.loads(path.read_text()) == {"broker": "tcp://127.0.0.1:1", "pid": os.getpid()}
    lock.release()
    assert path.read_text() == ""  # released: it names no holder
