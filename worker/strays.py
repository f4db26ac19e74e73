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

A sweep is one pass over ``/proc``: every process's ``stat``, and the
environment only of those that started no earlier than the attempt's shell
(an older process cannot be its descendant). While other attempts run, one
pass serves every attempt that ended within ``SWEEP_GAP_S`` of the last, so
a fan-out or a chain of short tasks costs a few passes a second, not one
per task. Where tasks run as a task user, an attempt that ends alone is
swept at once: only then are the unreadable orphans known to be its own.
The zombies of adopted orphans are reaped as ``waitid`` names them, with a pass over ``/proc`` every
``ORPHAN_SCAN_S`` for any it could not name.

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
SWEEP_GAP_S = 0.25  # at most one sweep scan this often, unless a sweep is urgent
ORPHAN_SCAN_S = 5.0  # a pass for adopted zombies that waitid could not name


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False if it cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def new_mark(attempt_id: str) -> str:
    return f"{os.getpid()}.{attempt_id}.{secrets.token_hex(6)}"


def _stat(pid: int, proc: str) -> tuple[int, str, int] | None:
    """(parent pid, state letter, start time in clock ticks since boot), None when gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]), fields[0].decode(), int(fields[19])


def _ppid_state(pid: int, proc: str) -> tuple[int, str] | None:
    found = _stat(pid, proc)
    return None if found is None else found[:2]


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
    # Ended attempts whose sweep waits for the next scan: mark -> (the start
    # time of its shell in clock ticks, its grace in seconds).
    queued: dict[str, tuple[int, float]] = field(default_factory=dict)
    last_scan: float = float("-inf")
    last_orphan_scan: float = float("-inf")

    def _table(self) -> dict[int, tuple[int, str, int]]:
        table = {}
        for name in os.listdir(self.proc):
            if name.isdigit():
                found = _stat(int(name), self.proc)
                if found is not None:
                    table[int(name)] = found
        return table

    def find(
        self,
        marks: dict[str, int],
        table: dict[int, tuple[int, str, int]],
        *,
        spare: Iterable[int] = (),
        alone: bool = True,
    ) -> dict[int, str]:
        """The live processes of the attempts ``marks`` names (mark -> the start time
        of its shell: its processes started no earlier, so older ones are not read),
        each with its mark; ``spare``: pids to leave alone (the running attempts'
        shells); ``alone``: no other attempt runs, so the unreadable orphans are
        theirs (counted under the last mark); ``table``: ``_table``'s reading."""
        spared = set(spare) | {self.me}
        since = min(marks.values(), default=0)
        last = next(reversed(marks), "")
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        found: dict[int, str] = {}
        for pid, (ppid, state, started) in table.items():
            if pid in spared or state == "Z" or started < since:
                continue
            got = _environ_mark(pid, self.proc)
            if got in marks:
                found[pid] = got
            elif got is None and alone and ppid == self.me:
                found[pid] = last
        # The descendants of what was found go too, whatever their environment.
        todo = list(found)
        while todo:
            parent = todo.pop()
            for child in children.get(parent, []):
                if child not in found and child not in spared and table[child][1] != "Z":
                    found[child] = found[parent]
                    todo.append(child)
        return dict(sorted(found.items()))

    def sweep(
        self,
        mark: str,
        grace_s: float,
        *,
        spare: Iterable[int] = (),
        alone: bool = True,
        since: int = 0,
        at_once: bool = False,
    ) -> int:
        """SIGTERM (SIGKILL after ``grace_s`` in ``tick``) to what the attempt marked
        ``mark``, whose shell started at ``since`` (``start_time``), left running.

        A scan reads every process's ``stat``, so unless ``at_once``, an
        attempt that ends less than ``SWEEP_GAP_S`` after the last scan waits
        for the next one (``tick``), which serves every attempt that ended
        meanwhile: a fan-out or a chain of short tasks costs a few scans a
        second, not one per task. ``at_once`` is for a worker whose tasks run
        as another user: their orphans may be unreadable, and only while no
        other attempt runs (``alone``) are those known to be this one's."""
        self.queued[mark] = (since, grace_s)
        if at_once or self.clock() - self.last_scan >= SWEEP_GAP_S:
            return self._scan(spare, alone)
        return 0

    def start_time(self, pid: int) -> int:
        """When ``pid`` started, in clock ticks since boot; 0 when it is gone."""
        found = _stat(pid, self.proc)
        return found[2] if found is not None else 0

    def _scan(self, spare: Iterable[int], alone: bool) -> int:
        """One pass over ``/proc`` for every queued attempt; the orphans reaped too."""
        spare = list(spare)
        marks, self.queued = self.queued, {}
        self.last_scan = self.clock()
        table = self._table()
        found = self.find(
            {m: since for m, (since, _) in marks.items()}, table, spare=spare, alone=alone
        )
        ended: dict[str, list[int]] = {}
        for pid, mark in found.items():
            grace_s = marks[mark][1]
            sig = signal.SIGKILL if grace_s <= 0 else signal.SIGTERM
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                ended.setdefault(mark, []).append(pid)
                if sig == signal.SIGTERM:
                    self.pending[pid] = self.clock() + grace_s
        for mark, pids in ended.items():
            log.warning(
                "ended %d stray process(es) the task left running (attempt mark %s): %s",
                len(pids),
                mark,
                " ".join(map(str, pids)),
            )
        self.reap_orphans(spare, table)
        return sum(map(len, ended.values()))

    def tick(self, now: float, spare: Iterable[int] = ()) -> None:
        """Sweep the queued attempts once the gap has passed; SIGKILL the strays
        past their grace; reap the orphans that have exited."""
        spare = list(spare)
        if self.queued and now - self.last_scan >= SWEEP_GAP_S:
            self._scan(spare, alone=not spare)
        for pid, kill_at in list(self.pending.items()):
            state = _ppid_state(pid, self.proc)
            if state is None or state[1] == "Z":
                del self.pending[pid]
            elif now >= kill_at:
                del self.pending[pid]
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    log.warning("stray process %d ignored SIGTERM; killed", pid)
        self._reap_adopted(spare, now)

    def finish(self) -> None:
        """On the worker's exit: the queued attempts swept with no grace, and
        SIGKILL to what SIGTERM has not ended."""
        if self.queued:
            self.queued = {m: (since, 0.0) for m, (since, _) in self.queued.items()}
            self._scan((), alone=True)
        for pid in list(self.pending):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.pending.clear()
        self.reap_orphans()

    def _reap_adopted(self, spare: list[int], now: float) -> None:
        """Reap the exited children no running attempt owns, one by one as
        ``waitid`` (reaping nothing itself) names them: no pass over ``/proc``.
        A running attempt's exited shell, waiting for its attempt to reap it,
        hides those behind it; a pass every ``ORPHAN_SCAN_S`` gets them."""
        if not self.reaper:
            return
        kept = set(spare)
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if info is None or info.si_pid in kept:
                break
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.si_pid, os.WNOHANG)
        if now - self.last_orphan_scan >= ORPHAN_SCAN_S:
            self.last_orphan_scan = now
            self.reap_orphans(spare)

    def reap_orphans(
        self, spare: Iterable[int] = (), table: dict[int, tuple[int, str, int]] | None = None
    ) -> int:
        """Collect the exit status of adopted descendants that have exited; ``spare``:
        the running attempts' shells, whose zombies the attempts reap themselves."""
        if not self.reaper:
            return 0
        reaped = 0
        kept = set(spare)
        for pid, (ppid, state, _) in (self._table() if table is None else table).items():
            if ppid == self.me and state == "Z" and pid not in kept:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                    reaped += 1
        return reaped
