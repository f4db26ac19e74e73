"""The sweep of what an attempt left running, on real processes (``worker.strays``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from llmo.worker import strays as strays_module
from llmo.worker.strays import MARK, SWEEP_GAP_S, Strays, new_mark
from tests.waiting import wait_until
from tests.worker_fixtures import alive

pytestmark = pytest.mark.timeout(60)


def escaped(tmp_path: Path, mark: str) -> tuple[subprocess.Popen[bytes], int]:
    """A shell marked ``mark`` that leaves a ``setsid sleep`` behind and exits (unreaped)."""
    shell = subprocess.Popen(
        ["/bin/sh", "-c", "setsid sleep 1000 & echo $! > stray.pid"],
        cwd=tmp_path,
        env={**os.environ, MARK: mark},
        start_new_session=True,
    )
    written = tmp_path / "stray.pid"
    assert wait_until(lambda: written.exists() and written.read_text().endswith("\n"), 30)
    stray = int(written.read_text())
    assert wait_until(lambda: alive(stray), 30)
    return shell, stray


@pytest.fixture
def kill_after():
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_while_others_run_a_sweep_waits_for_the_gap_then_serves_every_ended_attempt(
    tmp_path, kill_after
):
    now = [1000.0]
    strays = Strays(clock=lambda: now[0])
    marks = [new_mark("a1"), new_mark("a2")]
    found = []
    for i, mark in enumerate(marks):
        folder = tmp_path / f"a{i}"
        folder.mkdir()
        shell, stray = escaped(folder, mark)
        kill_after.append(stray)
        found.append((shell, stray))
    strays.last_scan = now[0]  # a scan just ran for another attempt
    for (shell, _), mark in zip(found, marks, strict=True):
        ended = strays.sweep(
            mark, 5.0, spare=[shell.pid, 1], alone=False, since=strays.start_time(shell.pid)
        )
        assert ended == 0, "a fan-out's attempt waits for the next scan"
    now[0] += SWEEP_GAP_S / 2
    strays.tick(now[0], spare=[1])
    assert all(alive(stray) for _, stray in found)
    now[0] += SWEEP_GAP_S
    strays.tick(now[0], spare=[1])
    assert not strays.queued
    for shell, stray in found:
        assert wait_until(lambda stray=stray: not alive(stray), 30), f"stray {stray} still runs"
        shell.wait()


def test_an_urgent_sweep_is_done_at_once(tmp_path, kill_after):
    strays = Strays(clock=lambda: 5.0)
    strays.last_scan = 5.0
    mark = new_mark("a1")
    shell, stray = escaped(tmp_path, mark)
    kill_after.append(stray)
    since = strays.start_time(shell.pid)
    assert strays.sweep(mark, 5.0, spare=[shell.pid], alone=True, since=since, at_once=True) == 1
    assert wait_until(lambda: not alive(stray), 30)
    shell.wait()


def test_a_sweep_reads_the_environment_only_of_processes_no_older_than_the_shell(
    tmp_path, kill_after, monkeypatch
):
    mark = new_mark("a1")
    shell, stray = escaped(tmp_path, mark)
    kill_after.append(stray)
    read: list[int] = []
    real = strays_module._environ_mark

    def spy(pid: int, proc: str) -> str | None:
        read.append(pid)
        return real(pid, proc)

    monkeypatch.setattr(strays_module, "_environ_mark", spy)
    strays = Strays()
    strays.sweep(mark, 5.0, spare=[shell.pid], alone=True, since=strays.start_time(shell.pid))
    assert stray in read
    assert 1 not in read and os.getpid() not in read
    assert wait_until(lambda: not alive(stray), 30)
    shell.wait()
