"""The brain's ``disk_full`` state: what it does with each message while it cannot journal.

Theory of operation
-------------------
The brain acts only on what its journal explains, so when the journal cannot
be written (``ENOSPC``, ``EDQUOT``, or ``EIO`` on the journal file: on
append, commit, fsync, or on start) the shell does not crash: it
rolls the journal back to the end of its last committed record (a
half-written record never replays later), folds the journal again to get the
last good state, and enters ``disk_full``. While in it the shell steps
nothing and journals nothing; each message that arrives is sorted by
``disposition``:

- ``answer``: read-only requests (``snapshot_request``) are answered from
  the last good state, with ``disk_full`` in the reply saying why the brain
  is stuck (``llmo status`` shows it);
- ``defer``: what workers report (``register``, ``task_started``,
  ``task_done``, ``task_failed``) is kept in memory, in order, and stepped
  once space returns, so a result that arrives meanwhile is recorded then;
- ``drop``: heartbeats, progress, peer notices, model status and errors are
  read and not journaled. Liveness stands still with the timers (no tick is
  stepped while full), so no worker is declared dead because the brain
  could not write; on resuming the brain journals ``Resumed``, which gives
  every worker a fresh expiry window;
- ``refuse``: every other request (``plan_submit``, ``batch_cancel``,
  drains, model loads) changes state, and is answered with an ``Error`` of
  code ``disk_full``: nothing of it was journaled, so it never runs later.

A snapshot that finds no space is only put off: the journal it would have
replaced is still whole and still written, so the brain goes on (and enters
``disk_full`` when the journal itself cannot be written).

While full no tick is stepped: liveness, task timeouts and backoff wait too.
On each tick the shell tries again: it journals ``Resumed`` (and
``Configure`` first, for a brain that started on a full disk); once that
commits it logs that it resumed and steps the deferred messages. No restart
is needed.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass

from llmo.proto.messages import MsgType

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
MAX_DEFERRED = 100_000  # worker reports kept while full; beyond it the oldest are dropped

ANSWER = frozenset({MsgType.SNAPSHOT_REQUEST})
DEFER = frozenset({MsgType.REGISTER, MsgType.TASK_STARTED, MsgType.TASK_DONE, MsgType.TASK_FAILED})
DROP = frozenset(
    {
        MsgType.HEARTBEAT,
        MsgType.TASK_PROGRESS,
        MsgType.PEER_UP,
        MsgType.PEER_DOWN,
        MsgType.MODEL_STATUS,
        MsgType.ERROR,
    }
)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk cannot take more (full, over quota, or failing)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def disposition(kind: MsgType) -> str:
    """``answer``, ``defer``, ``drop`` or ``refuse``: what a full brain does with ``kind``."""
    if kind in ANSWER:
        return "answer"
    if kind in DEFER:
        return "defer"
    if kind in DROP:
        return "drop"
    return "refuse"


def free_bytes(path: str) -> int | None:
    """Bytes free for an unprivileged writer on the file system of ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


@dataclass(frozen=True)
class DiskFull:
    """Why the brain cannot journal: the path, the error, and the free bytes then."""

    path: str
    error: str
    free: int | None
    since: float

    def text(self) -> str:
        free = "unknown" if self.free is None else f"{self.free} bytes"
        return (
            f"the brain cannot write its journal {self.path} ({self.error}; {free} free): "
            "it takes no new work until space is freed, and resumes by itself then"
        )


def disk_full(path: str, exc: OSError, now: float) -> DiskFull:
    reason = os.strerror(exc.errno) if exc.errno is not None else str(exc)
    return DiskFull(path, reason, free_bytes(path), now)
