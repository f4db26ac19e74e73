"""Every process a task starts ends with it: marked, adopted and swept.

Theory of operation
-------------------
A task runs in its own session and process group, but a descendant that
calls ``setsid`` (or forks twice and then does) leaves both, and killing the
group misses it. So:

* the worker makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``):
  an orphaned descendant of a task is reparented to the worker, not to
  init, and its exit status comes back to the worker to reap;
* each attempt's environment carries a marker, ``LLMO_TASK_MARK``, unique to
  the attempt and this worker process, that its descendants inherit and
  that ``/proc/<pid>/environ`` shows;
* when the attempt ends (done, failed, aborted, cancelled, the worker
  stopping) ``Strays.sweep`` finds every process carrying the marker, and
  every process reparented to the worker (and their descendants) whose
  environment it may not read (a task user's, when the worker lacks
  ``CAP_SYS_PTRACE``) while no other attempt of this worker runs, and sends
  them SIGTERM; ``tick`` sends SIGKILL to those still alive after the grace
  and reaps the zombies reparented to the worker. The count is logged.

A process that both clears its environment and daemonizes while other
attempts run can still escape; under systemd the unit's control group ends
it with the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger("llmo.worker.strays")

MARK = "LLMO_TASK_MARK"
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False if it cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def new_mark(attempt_id: str) -> str:
    return f"{os.getpid()}.{attempt_id}.{secrets.token_hex(6)}"


def _ppid_state(pid: int, proc: str) -> tuple[int, str] | None:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]), fields[0].decode()


def _environ_mark(pid: int, proc: str) -> str | None:
    """The marker in a process's environment, "" without one, None when unreadable."""
    try:
        with open(f"{proc}/{pid}/environ", "rb") as f:
            data = f.read()
    except (PermissionError, ProcessLookupError):
        return None
    except OSError:
        return ""
    prefix = f"{MARK}=".encode()
    for item in data.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode("utf-8", "replace")
    return ""


def marked_by(worker_pid: int, proc: str = "/proc") -> list[int]:
    """Live processes whose marker names the worker process ``worker_pid``: what
    the tasks of a dead worker left, for its successor to end (``worker.leftovers``)."""
    prefix = f"{worker_pid}."
    found = []
    for name in os.listdir(proc):
        if name.isdigit():
            got = _environ_mark(int(name), proc)
            state = _ppid_state(int(name), proc)
            if got and got.startswith(prefix) and state is not None and state[1] != "Z":
                found.append(int(name))
    return found


@dataclass(slots=True)
class Strays:
    """The sweep of the processes attempts left behind."""

    proc: str = "/proc"
    clock: Callable[[], float] = field(default=lambda: 0.0)
    me: int = field(default_factory=os.getpid)
    pending: dict[int, float] = field(default_factory=dict)  # pid -> when to SIGKILL
    # Set when this process is the subreaper (``llmo worker``, not a worker in a
    # thread of another program): then its zombie children are its to reap.
    reaper: bool = False

    def _table(self) -> dict[int, tuple[int, str]]:
        table = {}
        for name in os.listdir(self.proc):
            if name.isdigit():
                found = _ppid_state(int(name), self.proc)
                if found is not None:
                    table[int(name)] = found
        return table

    def find(self, mark: str, *, spare: Iterable[int] = (), alone: bool = True) -> list[int]:
        """The live processes of the attempt marked ``mark``; ``spare``: pids to leave
        alone (the running attempts' shells); ``alone``: no other attempt runs, so
        the unreadable orphans are this attempt's."""
        table = self._table()
        spared = set(spare) | {self.me}
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        found: set[int] = set()
        for pid, (ppid, state) in table.items():
            if pid in spared or state == "Z":
                continue
            got = _environ_mark(pid, self.proc)
            if got == mark or (got is None and alone and ppid == self.me):
                found.add(pid)
        # The descendants of what was found go too, whatever their environment.
        todo = list(found)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found and child not in spared and table[child][1] != "Z":
                    found.add(child)
                    todo.append(child)
        return sorted(found)

    def sweep(
        self, mark: str, grace_s: float, *, spare: Iterable[int] = (), alone: bool = True
    ) -> int:
        """SIGTERM now (SIGKILL after ``grace_s`` in ``tick``) to the attempt's strays."""
        pids = self.find(mark, spare=spare, alone=alone)
        sig = signal.SIGKILL if grace_s <= 0 else signal.SIGTERM
        ended = 0
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                ended += 1
                if sig == signal.SIGTERM:
                    self.pending[pid] = self.clock() + grace_s
        if ended:
            log.warning(
                "ended %d stray process(es) the task left running (attempt mark %s): %s",
                ended,
                mark,
                " ".join(map(str, pids)),
            )
        self.reap_orphans(spare)
        return ended

    def tick(self, now: float, spare: Iterable[int] = ()) -> None:
        """SIGKILL the strays past their grace; reap the orphans that have exited."""
        for pid, kill_at in list(self.pending.items()):
            state = _ppid_state(pid, self.proc)
            if state is None or state[1] == "Z":
                del self.pending[pid]
            elif now >= kill_at:
                del self.pending[pid]
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    log.warning("stray process %d ignored SIGTERM; killed", pid)
        self.reap_orphans(spare)

    def finish(self) -> None:
        """On the worker's exit: no grace left, SIGKILL to what SIGTERM has not ended."""
        for pid in list(self.pending):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.pending.clear()
        self.reap_orphans()

    def reap_orphans(self, spare: Iterable[int] = ()) -> int:
        """Collect the exit status of adopted descendants that have exited; ``spare``:
        the running attempts' shells, whose zombies the attempts reap themselves."""
        if not self.reaper:
            return 0
        reaped = 0
        kept = set(spare)
        for pid, (ppid, state) in self._table().items():
            if ppid == self.me and state == "Z" and pid not in kept:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                    reaped += 1
        return reaped
