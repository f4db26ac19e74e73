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
covers ``llmo up`` and hand-started workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import tempfile

log = logging.getLogger("llmo.worker")


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` in clock ticks, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def default_path(name: str, broker: str) -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    rig = hashlib.sha1(broker.encode()).hexdigest()[:10]
    return os.path.join(base, f"llmo-{os.getuid()}", f"worker-{name}-{rig}.groups")


class GroupLedger:
    def __init__(self, path: str) -> None:
        self.path = path
        self.groups: dict[int, int] = {}
        self.me = (os.getpid(), start_time(os.getpid()) or 0)

    def reap_previous(self) -> int:
        """Kill the groups an earlier, now dead, worker left running; how many."""
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            owner = tuple(data["owner"])
            groups = {int(k): int(v) for k, v in data["groups"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            return 0
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
        self._save()
        return killed

    def add(self, pgid: int) -> None:
        started = start_time(pgid)
        if started is not None:
            self.groups[pgid] = started
            self._save()

    def remove(self, pgid: int) -> None:
        if self.groups.pop(pgid, None) is not None:
            self._save()

    def _save(self) -> None:
        data = {"owner": list(self.me), "groups": {str(k): v for k, v in self.groups.items()}}
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            partial = f"{self.path}.{os.getpid()}"
            with open(partial, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(partial, self.path)
        except OSError as exc:
            log.warning("cannot write the task ledger %s: %s", self.path, exc)
