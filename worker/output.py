"""A task's output on its way to the log: capped, and a full disk is a reason, not a crash.

Theory of operation
-------------------
A shell attempt's stdout and stderr go to one pipe that the worker reads in
its loop (the read end sits in the poll set beside the pidfds) and appends
to the task's log. Up to ``cap`` bytes of output are written; past the cap
a line says where and why the output was cut, and the rest is read and
dropped, so the task never blocks on a full pipe and runs on. When the
attempt ends, a last line gives the count of bytes dropped.

A write to the log that fails (``ENOSPC``, ``EDQUOT``, any ``OSError``) is
kept as ``error``, worded by ``disk_reason`` ("disk full under <folder>:
...", with the free bytes there); from then on output is drained and
dropped, and the worker fails the attempt with that reason. Nothing here
raises on a bad disk.
"""

from __future__ import annotations

import contextlib
import errno
import os

CHUNK = 64 * 1024
PASS_BYTES = 1024 * 1024  # read at most this much per fd per loop pass
DEFAULT_CAP_MB = 100.0
FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_reason(path: str, exc: OSError) -> str:
    """One line for an operator: what failed where, and the room left there."""
    folder = os.path.dirname(os.path.abspath(path)) or "/"
    why = exc.strerror or str(exc)
    room = ""
    with contextlib.suppress(OSError):
        st = os.statvfs(folder)
        room = f" ({st.f_bavail * st.f_frsize} bytes free)"
    if exc.errno in FULL:
        return f"disk full under {folder}: {why} writing {path}{room}"
    return f"cannot write {path}: {why}{room}"


class OutputPump:
    """Reads one attempt's output pipe and appends it, capped, to its log."""

    def __init__(self, fd: int, log_path: str, cap: int) -> None:
        self.fd = fd  # the pipe's read end, non-blocking
        self.log_path = log_path
        self.cap = cap  # bytes; 0 or less: no cap
        self.written = 0
        self.dropped = 0  # past the cap
        self.lost = 0  # read after the log failed, so never written
        self.error = ""  # why writing the log failed, "" while it works
        self.eof = False
        self._log = -1
        try:
            self._log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            self.error = disk_reason(log_path, exc)
        os.set_blocking(fd, False)

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def fileno(self) -> int:
        return self.fd

    def pump(self, budget: int = PASS_BYTES) -> int:
        """Read what the pipe holds (up to ``budget`` bytes); the bytes read."""
        total = 0
        while total < budget and not self.eof and self.fd >= 0:
            try:
                data = os.read(self.fd, CHUNK)
            except BlockingIOError:
                break
            except OSError:
                self.eof = True
                break
            if not data:
                self.eof = True
                break
            total += len(data)
            self._take(data)
        return total

    def _take(self, data: bytes) -> None:
        if self.error:
            self.lost += len(data)
            return
        room = len(data) if self.cap <= 0 else self.cap - self.written
        keep = data[: max(0, room)]
        if keep:
            self._write(keep)
            self.written += len(keep)
        rest = len(data) - len(keep)
        if rest:
            if self.dropped == 0 and not self.error:
                self._write(
                    f"\n--- llmo: output cut here, at {self.written} bytes: over this "
                    f"worker's cap of {self.cap} bytes per task (max_output_mb); "
                    "the rest is discarded\n".encode()
                )
            self.dropped += rest

    def _write(self, data: bytes) -> None:
        if self.error or self._log < 0:
            return
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._log, view)
                view = view[n:]
        except OSError as exc:
            self.error = disk_reason(self.log_path, exc)

    def close(self) -> None:
        """Read what is left, note the bytes dropped, close both ends."""
        self.pump(budget=16 * PASS_BYTES)
        if self.dropped and not self.error:
            self._write(
                f"--- llmo: output truncated: {self.dropped} bytes dropped after the cap "
                f"of {self.cap} bytes\n".encode()
            )
        for fd in (self.fd, self._log):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self._log = -1
