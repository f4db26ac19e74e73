"""An exclusive lock on a file, held for a process's life, that names its holder.

Theory of operation
-------------------
``FileLock.acquire(path, info)`` opens ``path`` (creating it, never
truncating it) and takes ``flock(LOCK_EX | LOCK_NB)`` on it. The lock
belongs to that open file: it is released when the holder closes it or when
its process ends, however it ends (SIGKILL, a crash), so a dead holder
leaves nothing to clean up. The descriptor is not inherited by child
processes (Python opens files non-inheritable), so a child that outlives
its parent cannot keep the lock. The file itself stays in place: removing it
would let a newcomer lock a new file of that name while the old holder
still holds the removed one.

Once it holds the lock, the holder writes who it is into the file (one JSON
object: ``pid`` and whatever it serves), and empties the file when it
releases the lock. A refused caller reads that object to name the holder.
Between the holder's lock and its write, the file may be empty or still
name an earlier holder that died; the refused caller reads again for a
moment until it names a live process, then reports what it has.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Mapping
from typing import Any

HOLDER_WAIT_S = 1.0  # how long a refused caller waits for the holder to name itself


class Locked(Exception):
    """``path`` is locked by another open file; ``holder`` is what its holder wrote."""

    def __init__(self, path: str, holder: dict[str, Any]) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is locked by {holder_text(holder)}")


def holder_text(holder: Mapping[str, Any]) -> str:
    pid = holder.get("pid")
    return f"pid {pid}" if pid is not None else "another process (pid unknown)"


class FileLock:
    """An acquired lock; ``release`` (or the end of the process) lets it go."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: str, info: Mapping[str, Any]) -> FileLock:
        """Lock ``path`` and write ``{"pid": ..., **info}`` into it, or raise ``Locked``."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Locked(path, read_holder(path)) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            data = json.dumps({"pid": os.getpid(), **info}, sort_keys=True) + "\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, data.encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def forget(self) -> None:
        """Close this process's descriptor without unlocking: for a forked child, so
        that the lock ends with the process that took it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # name no holder once there is none
        finally:
            os.close(fd)  # closing the last descriptor of the open file unlocks it


def read_holder(path: str, wait_s: float = HOLDER_WAIT_S) -> dict[str, Any]:
    """What the holder of ``path`` wrote: waits (briefly) for it to name a live process."""
    deadline = time.monotonic() + wait_s
    holder: dict[str, Any] = {}
    while True:
        holder = _read(path)
        if _alive(holder.get("pid")) or time.monotonic() >= deadline:
            return holder if _alive(holder.get("pid")) else {}
        time.sleep(0.02)


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True
