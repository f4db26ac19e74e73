"""Task process groups a killed worker left behind, found and ended by its successor.

Theory of operation
-------------------
Each attempt runs in its own session, so a worker that dies by SIGKILL (or
an OOM kill) cannot take its tasks down with it: they would run on beside
the retry the brain has already placed elsewhere, writing the same outputs
and holding the same VRAM. The worker therefore keeps a small ledger file of
its running groups: the group id with the kernel's start time of its leader
(so a recycled pid is never mistaken for it), and its own pid and start time.

A worker starting under the same name on the same broker reads the ledger.
If the process that wrote it is gone, every group still alive with the
recorded start time gets SIGKILL, before the new worker takes any work.
Under systemd the unit's control group does the same on a crash; this
covers ``llmo up`` and hand-started workers. Processes that left their
task's group (``setsid``) are found by the marker their environment carries
(``worker.strays``), which names the dead worker's pid, and killed too.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import tempfile

from llmo.worker.shell import stat_fields
from llmo.worker.strays import marked_by

log = logging.getLogger("llmo.worker")


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` in clock ticks, or None if it is gone."""
    fields = stat_fields(str(pid))
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


def default_path(name: str, broker: str) -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    rig = hashlib.sha1(broker.encode()).hexdigest()[:10]
    return os.path.join(base, f"llmo-{os.getuid()}", f"worker-{name}-{rig}.groups")


class GroupLedger:
    """The ledger file: an owner line, then ``+ pgid start`` / ``- pgid`` lines.

    Appending a line per change costs a few microseconds on an open file; the
    file is rewritten whole only when it has grown well past what it records.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.groups: dict[int, int] = {}
        self.me = (os.getpid(), start_time(os.getpid()) or 0)
        self._fd = -1
        self._lines = 0

    @staticmethod
    def read(path: str) -> tuple[tuple[int, int], dict[int, int]] | None:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            kind, pid, started = lines[0].split()
            if kind != "owner":
                return None
            groups: dict[int, int] = {}
            for line in lines[1:]:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "+":
                    groups[int(parts[1])] = int(parts[2])
                elif len(parts) == 2 and parts[0] == "-":
                    groups.pop(int(parts[1]), None)
            return (int(pid), int(started)), groups
        except (OSError, ValueError, IndexError):
            return None

    def reap_previous(self) -> int:
        """Kill the groups an earlier, now dead, worker left running; how many."""
        found = self.read(self.path)
        if found is None:
            self._rewrite()
            return 0
        owner, groups = found
        if start_time(owner[0]) == owner[1]:
            log.warning("ledger %s belongs to worker pid %d, still running", self.path, owner[0])
            return 0
        killed = 0
        for pgid, started in groups.items():
            if start_time(pgid) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                    killed += 1
        if killed:
            log.warning("killed %d task process group(s) left running by an earlier worker", killed)
        strays = marked_by(owner[0])
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if strays:
            log.warning(
                "killed %d process(es) that tasks of an earlier worker started outside their group",
                len(strays),
            )
        self._rewrite()
        return killed

    def add(self, pgid: int) -> None:
        started = start_time(pgid)
        if started is not None:
            self.groups[pgid] = started
            self._append(f"+ {pgid} {started}\n")

    def remove(self, pgid: int) -> None:
        if self.groups.pop(pgid, None) is not None:
            self._append(f"- {pgid}\n")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """On a clean stop with nothing left running: no ledger is needed."""
        self.close()
        if not self.groups:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def _append(self, line: str) -> None:
        if self._fd < 0 or self._lines > 4 * len(self.groups) + 200:
            self._rewrite()
            return
        try:
            os.write(self._fd, line.encode())
            self._lines += 1
        except OSError as exc:
            log.warning("cannot write the task ledger %s: %s", self.path, exc)

    def _rewrite(self) -> None:
        self.close()
        text = f"owner {self.me[0]} {self.me[1]}\n" + "".join(
            f"+ {pgid} {started}\n" for pgid, started in self.groups.items()
        )
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            partial = f"{self.path}.{os.getpid()}"
            with open(partial, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(partial, self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self._lines = 1 + len(self.groups)
        except OSError as exc:
            log.warning("cannot write the task ledger %s: %s", self.path, exc)
