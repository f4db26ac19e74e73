"""A task's output and processes under faults: a full disk, a flood of output,
descendants that leave the task's session.

A real ``llmo worker`` process on a real broker on loopback, with a stand-in
brain that assigns attempts and reads the results.

- Disk full: the batch folder is a 1 MiB tmpfs (mounted here; skipped where
  mount is not permitted) that a filler file fills. The attempt fails with
  "disk full under ..." and the free bytes, the worker serves on, it leaves
  no file behind, and once the filler is gone the next attempt succeeds. The
  same when the header fits and the output fills the disk while the task runs.
- Output cap: the worker's cap is 1 MB and the task prints 20 MB; the log
  holds the first MB, says where it was cut and how many bytes were dropped,
  and the task finishes ok.
- Strays: a task starts ``setsid sleep`` (and a double-fork variant); after
  the task ends, after it is cancelled, and after the worker stops, no
  process carrying the attempt's environment is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmo.proto.messages import Heartbeat, TaskAssign, TaskCancel, TaskDone, TaskFailed, TaskStarted
from tests.e2e_fixtures import llmo_argv
from tests.faults.disks import fill, mount_tmpfs, unmount
from tests.reporting import say
from tests.waiting import wait_for, wait_until
from tests.worker_fixtures import brain_factory

pytestmark = pytest.mark.timeout(120)

NAME = "disk-w"
MB = 1024 * 1024


class WorkerProcess:
    """``llmo worker`` as its own process, its log in ``log``."""

    def __init__(self, endpoint: str, root: Path, *flags: str) -> None:
        self.tmp = root / "worker-tmp"
        self.tmp.mkdir(exist_ok=True)
        self.log = root / f"worker-{uuid.uuid4().hex[:6]}.log"
        env = dict(
            os.environ,
            TMPDIR=str(self.tmp),
            LLMO_WORKER_LEDGER=str(root / "ledger.groups"),
        )
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [
                    *llmo_argv(),
                    "worker",
                    "--name",
                    NAME,
                    "--broker",
                    endpoint,
                    "--interval",
                    "0.5",
                    "--stop-deadline",
                    "1",
                    *flags,
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def attempt_tmp_folders(tmp: Path) -> list[str]:
    """The attempts' private temporary folders left in ``tmp`` with something in them
    (the worker's kept ``llmo-tasks-*`` folders that hold them, and the emptied ones
    it keeps there for the next attempts, are not attempts')."""
    return sorted(
        str(p.relative_to(tmp))
        for p in tmp.rglob("*")
        if p.name.startswith("llmo-task-") and (not p.is_dir() or any(p.iterdir()))
    )


@pytest.fixture
def worker(running_broker, brain_factory, tmp_path) -> Iterator:
    """``start(*flags)``: a worker process and the stand-in brain that heard it."""
    started: list[WorkerProcess] = []

    def start(*flags: str):
        brain = brain_factory(running_broker.endpoint)
        proc = WorkerProcess(running_broker.endpoint, tmp_path, *flags)
        started.append(proc)
        brain.heartbeat(NAME, timeout=30)
        return brain, proc

    yield start
    for proc in started:
        proc.stop()
        print(proc.text()[-4000:])


def assign(folder: Path, task_id: str, command: str, **fields) -> TaskAssign:
    return TaskAssign(
        dst=NAME,
        batch_id="20260101_000000",
        task_id=task_id,
        attempt_id=f"20260101_000000:{task_id}:{uuid.uuid4().hex[:6]}",
        task_class="cpu",
        command=command,
        plan_path=str(folder),
        batch_path=str(folder),
        log_path=str(folder / "logs" / f"{task_id}.log"),
        **fields,
    )


# --- disk full --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 1 MiB tmpfs at ``tmp_path/disk``, unmounted at teardown."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount_tmpfs(disk, "1m")
    try:
        yield disk
    finally:
        unmount(disk)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_disk_full_fails_the_attempt_with_the_reason_and_the_worker_serves_on(
    worker, small_disk, fault_table, request
):
    brain, proc = worker()
    filler = fill(small_disk)

    header = brain.send(assign(small_disk, "header", "echo never"))
    failed = brain.expect(TaskFailed, attempt_id=header.attempt_id, timeout=30)
    say(request.config, f"disk full at the log header: {failed.reason}: {failed.error}")
    assert failed.reason == "spawn_error", failed
    assert f"disk full under {small_disk}/logs" in failed.error, failed.error
    assert "bytes free" in failed.error
    assert proc.process.poll() is None, proc.text()
    assert files_under(small_disk) == ["filler"], files_under(small_disk)
    assert wait_until(lambda: attempt_tmp_folders(proc.tmp) == [], 30), attempt_tmp_folders(
        proc.tmp
    )

    # The header fits; the output fills the disk while the task runs.
    os.truncate(filler, filler.stat().st_size - 64 * 1024)
    flood = brain.send(assign(small_disk, "flood", "head -c 4000000 /dev/zero"))
    failed = brain.expect(TaskFailed, attempt_id=flood.attempt_id, timeout=30)
    say(request.config, f"disk full while the task wrote: {failed.reason}: {failed.error}")
    assert failed.reason in ("aborted", "exit"), failed
    assert f"disk full under {small_disk}/logs" in failed.error, failed.error
    assert "truncated" not in failed.error
    assert proc.process.poll() is None, proc.text()
    assert "Traceback" not in proc.text()
    assert wait_until(lambda: attempt_tmp_folders(proc.tmp) == [], 30), attempt_tmp_folders(
        proc.tmp
    )
    brain.heartbeat(NAME, timeout=30)

    filler.unlink()
    again = brain.send(assign(small_disk, "again", "echo room again"))
    done = brain.expect(TaskDone, attempt_id=again.attempt_id, timeout=30)
    assert "room again" in done.log_tail
    assert "room again" in (small_disk / "logs" / "again.log").read_text()
    fault_table.row("disk full at a task's log header", lost=0, rerun=0, note="spawn_error")
    fault_table.row("disk full while a task writes its log", lost=0, rerun=0, note=failed.reason)


# --- output cap -------------------------------------------------------------------------


def test_output_past_the_cap_is_dropped_and_the_log_says_where(worker, tmp_path, fault_table):
    brain, _ = worker("--max-output-mb", "1")
    total = 20 * MB
    command = f"head -c {total} /dev/zero | tr '\\0' x; echo; echo the end; echo ran >> runs.txt"
    msg = brain.send(assign(tmp_path, "loud", command))
    done = brain.expect(TaskDone, attempt_id=msg.attempt_id, timeout=60)
    log = (tmp_path / "logs" / "loud.log").read_bytes()
    printed = total + len("\nthe end\n")
    dropped = printed - MB
    assert len(log) < MB + 4096, len(log)
    assert b"output cut here, at 1048576 bytes" in log
    assert f"{dropped} bytes dropped".encode() in log
    assert f"{dropped} bytes dropped" in done.log_tail
    assert (tmp_path / "runs.txt").read_text() == "ran\n"  # it ran on to the end
    fault_table.row("task printed 20 MB past a 1 MB cap", lost=0, rerun=0, note=f"log {len(log)} B")


# --- strays -----------------------------------------------------------------------------


def attempt_processes(attempt_id: str) -> list[int]:
    """Live processes whose environment names the attempt."""
    needle = f"ATTEMPT_ID={attempt_id}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


def zombies_of(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if fields[0] == b"Z" and int(fields[1]) == pid:
            found.append(int(name))
    return found


ESCAPES = {
    "setsid": "setsid sleep 1000 &",
    "double fork": "( setsid sh -c 'sleep 1000 & sleep 1000' & ) ;",
}


@pytest.fixture
def attempts_seen() -> Iterator[list[str]]:
    """Attempt ids whose processes a failed test must not leave running."""
    seen: list[str] = []
    yield seen
    for attempt_id in seen:
        for pid in attempt_processes(attempt_id):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("escape", sorted(ESCAPES))
def test_nothing_a_task_started_outlives_it(
    worker, tmp_path, escape, attempts_seen, fault_table, request
):
    brain, proc = worker()
    left: dict[str, int] = {}

    # 1. The task ends by itself.
    ends = brain.send(assign(tmp_path, "ends", f"{ESCAPES[escape]} echo started; sleep 0.2"))
    attempts_seen.append(ends.attempt_id)
    wait_for(lambda: attempt_processes(ends.attempt_id), 30, "the escaped sleep")
    brain.expect(TaskDone, attempt_id=ends.attempt_id, timeout=30)
    assert wait_until(lambda: not attempt_processes(ends.attempt_id), 30)
    left["task ended"] = len(attempt_processes(ends.attempt_id))

    # 2. The task is cancelled while it runs.
    runs = brain.send(assign(tmp_path, "runs", f"{ESCAPES[escape]} sleep 1000", grace_s=2.0))
    attempts_seen.append(runs.attempt_id)
    brain.expect(TaskStarted, attempt_id=runs.attempt_id, timeout=30)
    wait_for(lambda: len(attempt_processes(runs.attempt_id)) >= 3, 30, "the task's processes")
    brain.send(
        TaskCancel(
            dst=NAME,
            batch_id=runs.batch_id,
            task_id=runs.task_id,
            attempt_id=runs.attempt_id,
            mode="abort",
            reason="cancelled by the operator",
        )
    )
    brain.expect(TaskFailed, attempt_id=runs.attempt_id, timeout=30)
    assert wait_until(lambda: not attempt_processes(runs.attempt_id), 30)
    left["cancelled"] = len(attempt_processes(runs.attempt_id))

    # 3. The worker stops while the task runs.
    stays = brain.send(assign(tmp_path, "stays", f"{ESCAPES[escape]} sleep 1000", grace_s=2.0))
    attempts_seen.append(stays.attempt_id)
    brain.expect(TaskStarted, attempt_id=stays.attempt_id, timeout=30)
    wait_for(lambda: len(attempt_processes(stays.attempt_id)) >= 3, 30, "the task's processes")
    assert not zombies_of(proc.pid), "the worker reaps the strays it adopted"
    proc.stop()
    assert wait_until(lambda: not attempt_processes(stays.attempt_id), 30)
    left["worker stopped"] = len(attempt_processes(stays.attempt_id))

    text = proc.text()
    say(request.config, f"strays ({escape}): left after each end {left}")
    assert "stray process(es)" in text, text[-3000:]
    assert not any(left.values()), left
    for when, count in left.items():
        fault_table.row(f"{escape} descendant, then {when}", lost=0, rerun=0, note=f"{count} left")


def test_a_killed_workers_escaped_descendants_are_ended_by_its_successor(
    worker, tmp_path, attempts_seen, fault_table
):
    brain, first = worker()
    msg = brain.send(assign(tmp_path, "orphan", f"{ESCAPES['setsid']} sleep 1000"))
    attempts_seen.append(msg.attempt_id)
    brain.expect(TaskStarted, attempt_id=msg.attempt_id, timeout=30)
    wait_for(lambda: len(attempt_processes(msg.attempt_id)) >= 3, 30, "the task's processes")
    first.process.kill()  # SIGKILL: no sweep, no clean stop
    first.process.wait()
    assert attempt_processes(msg.attempt_id), "the task outlives a killed worker"
    _, second = worker()
    assert wait_until(lambda: not attempt_processes(msg.attempt_id), 30)
    assert "outside their group" in second.text(), second.text()[-3000:]
    left = len(attempt_processes(msg.attempt_id))
    fault_table.row("worker SIGKILLed, setsid descendant", lost=0, rerun=0, note=f"{left} left")


def test_heartbeats_flow_while_a_task_floods_its_output(worker, tmp_path):
    brain, _ = worker("--max-output-mb", "1")
    # Floods for 3 s whatever the machine's speed: a heartbeat must fall inside.
    msg = brain.send(assign(tmp_path, "flood", "timeout 3 yes flooding || true"))
    brain.expect(TaskStarted, attempt_id=msg.attempt_id, timeout=30)
    beat = brain.expect(Heartbeat, timeout=30, src=NAME)
    assert msg.attempt_id in beat.active
    brain.expect(TaskDone, attempt_id=msg.attempt_id, timeout=90)


FAULTS = [
    "disk full at a task's log header",
    "disk full while a task writes its log",
    "task printed 20 MB past a 1 MB cap",
    "setsid / double-fork descendant, then task ended, cancelled, worker stopped",
    "worker SIGKILLed with a setsid descendant running; its successor starts",
]

__all__ = ["brain_factory"]
