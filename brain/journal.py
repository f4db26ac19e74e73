"""The brain's journal: every event, in order, on local disk, before it is acted on.

Theory of operation
-------------------
The journal is a stream of msgpack records, one per event the core folds:

    ["h", base]                          header: events folded before this file
    ["c", now, settings]                 Configure
    ["m", now, bytes]                    Received (the message as it came off the wire)
    ["t", now]                           Tick
    ["r", now]                           Resumed
    ["p", now, request_id, text, error]  PlanLoaded
    ["f", now, batch, task, items, error] ManifestRead

The shell steps an event, appends its record, commits the journal, and only
then carries out the commands. ``commit`` always hands the records to the
operating system first (``flush``), which is all that surviving a killed
brain (``kill -9``) needs: the page cache outlives the process. The fsync
policy decides what a power cut may take: ``always`` fsyncs every record,
``batch`` once per loop iteration, ``interval`` (the default) at most every
``FSYNC_INTERVAL_S`` (so under load one fsync covers many iterations, and
``sync_due`` catches up once the loop is idle), ``never`` leaves it to the
OS. What a power cut takes is at most the last interval of events: the rig's
workers go down with it, and the tasks of those events run again. A crash can cut the last
record short: reading stops at the first incomplete record and recovery
truncates the file there.

A snapshot is the whole state (pickled: the file is the brain's own, on
local disk) with the number of events it holds. It is written beside the
journal (``<journal>.snap``) by write-then-rename, after which the journal
is replaced by an empty one whose header says where it starts. Recovery
loads the snapshot, then folds the journal records it does not already
hold, so a crash between any two of these steps loses nothing and applies
nothing twice. Replay is a fold of ``step``; its commands are discarded
(they were carried out the first time).

One brain writes a journal. ``recover`` first takes an exclusive lock on
``<journal>.lock`` (``brain.lockfile``: released by the operating system
when the brain dies, however it dies) and writes the brain's pid and broker
endpoint into it; a second brain on the same journal is refused with
``JournalLocked``, naming the holder, before it reads or truncates anything.
The lock is on a file of its own because a snapshot replaces the journal
file. Reading a journal (``llmo replay``, ``read_records``) takes no lock.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import msgpack

from llmo.brain.core import new_state, step
from llmo.brain.events import Configure, Event, ManifestRead, PlanLoaded, Received, Resumed, Tick
from llmo.brain.lockfile import FileLock, Locked
from llmo.brain.state import BrainState
from llmo.proto.codec import decode, encode

SNAPSHOT_VERSION = 1
FSYNC_POLICIES = ("always", "batch", "interval", "never")
FSYNC_INTERVAL_S = 0.1  # the "interval" policy: at most this long between fsyncs


class JournalError(Exception):
    """The journal or its snapshot cannot be read (the message says which and why)."""


class JournalLocked(JournalError):
    """Another live brain holds the journal; ``holder`` is what it wrote in the lock file."""

    def __init__(self, path: str, holder: dict[str, Any]) -> None:
        self.path = path
        self.holder = holder
        pid = holder.get("pid")
        who = f"brain pid {pid}" if pid is not None else "another brain (pid unknown)"
        serves = f" (broker {holder['broker']})" if holder.get("broker") else ""
        super().__init__(f"journal {path} is in use by {who}{serves}")


def record_of(now: float, event: Event, raw: bytes | None = None) -> list[Any]:
    match event:
        case Received(msg=msg):
            return ["m", now, raw if raw is not None else encode(msg)]
        case Tick():
            return ["t", now]
        case PlanLoaded(request_id=request_id, text=text, error=error):
            return ["p", now, request_id, text, error]
        case ManifestRead(batch_id=batch_id, task_id=task_id, items=items, error=error):
            return ["f", now, batch_id, task_id, list(items) if items is not None else None, error]
        case Configure(settings=settings):
            return ["c", now, settings]
        case Resumed():
            return ["r", now]
    raise TypeError(f"not an event: {event!r}")


def event_of(record: list[Any]) -> tuple[float, Event]:
    kind = record[0]
    now = float(record[1])
    if kind == "m":
        return now, Received(decode(record[2]))
    if kind == "t":
        return now, Tick()
    if kind == "p":
        return now, PlanLoaded(record[2], record[3], record[4])
    if kind == "f":
        items = tuple(record[4]) if record[4] is not None else None
        return now, ManifestRead(record[2], record[3], items, record[5])
    if kind == "c":
        return now, Configure(record[2])
    if kind == "r":
        return now, Resumed()
    raise JournalError(f"unknown journal record kind {kind!r}")


def read_records(path: str) -> tuple[int, list[list[Any]], int]:
    """``(base, records, good_bytes)``: the header's base, the complete records, and
    the length of the file up to the end of the last complete record."""
    if not os.path.exists(path):
        return 0, [], 0
    with open(path, "rb") as handle:
        data = handle.read()
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=0)
    unpacker.feed(data)
    base = 0
    records: list[list[Any]] = []
    good = 0
    try:
        for record in unpacker:
            if not isinstance(record, list) or not record:
                break
            good = unpacker.tell()
            if record[0] == "h":
                base = int(record[1])
                continue
            records.append(record)
    except (msgpack.UnpackException, ValueError):
        pass  # a record cut short by a crash: what came before it stands
    return base, records, good


def events(path: str) -> Iterator[tuple[float, Event]]:
    """The events of a journal file, in order (not those already in its snapshot)."""
    _, records, _ = read_records(path)
    for record in records:
        yield event_of(record)


class Journal:
    def __init__(self, path: str, *, fsync: str = "interval") -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy {fsync!r}: use one of {', '.join(FSYNC_POLICIES)}")
        self.path = path
        self.snapshot_path = path + ".snap"
        self.lock_path = path + ".lock"
        self.lock: FileLock | None = None
        self.fsync = fsync
        self.handle: BinaryIO | None = None
        self.since_snapshot = 0
        self._dirty = False
        self._unsynced = False  # flushed to the OS, not yet fsynced
        self._synced_at = time.monotonic()

    # --- recovery ---------------------------------------------------------------

    def recover(self, holder: Mapping[str, Any] | None = None) -> BrainState:
        """Lock the journal, then the state it (and its snapshot) hold; then opens it
        for appending. ``holder`` (the broker endpoint, ...) goes into the lock file
        with the pid; ``JournalLocked`` if another brain holds it."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        if self.lock is None:
            try:
                self.lock = FileLock.acquire(
                    self.lock_path, {"journal": os.path.abspath(self.path), **(holder or {})}
                )
            except Locked as exc:
                raise JournalLocked(self.path, exc.holder) from None
        try:
            return self._recover()
        except BaseException:
            self.unlock()
            raise

    def _recover(self) -> BrainState:
        state = self.load_snapshot()
        base, records, good = read_records(self.path)
        skip = state.events - base
        if skip < 0:
            raise JournalError(
                f"{self.path} starts at event {base} but the snapshot holds only "
                f"{state.events}: events are missing"
            )
        for record in records[skip:]:
            now, event = event_of(record)
            state, _ = step(state, event, now)
        self.since_snapshot = len(records) - skip
        if os.path.exists(self.path):
            with open(self.path, "r+b") as handle:
                handle.truncate(good)
            self.handle = open(self.path, "ab")  # noqa: SIM115 (held open for appends)
        else:
            self._start_file(state.events)
        return state

    def load_snapshot(self) -> BrainState:
        if not os.path.exists(self.snapshot_path):
            return new_state()
        try:
            with open(self.snapshot_path, "rb") as handle:
                version, state = pickle.load(handle)
        except Exception as exc:
            raise JournalError(f"cannot read the snapshot {self.snapshot_path}: {exc}") from exc
        if version != SNAPSHOT_VERSION or not isinstance(state, BrainState):
            raise JournalError(f"{self.snapshot_path} is not a version {SNAPSHOT_VERSION} snapshot")
        return state

    # --- appending -------------------------------------------------------------------

    def append(self, now: float, event: Event, raw: bytes | None = None) -> None:
        assert self.handle is not None, "recover() first"
        self.handle.write(msgpack.packb(record_of(now, event, raw), use_bin_type=True))
        self.since_snapshot += 1
        self._dirty = True
        if self.fsync == "always":
            self.commit()

    def commit(self) -> None:
        """Make every appended record durable (per the fsync policy)."""
        if not self._dirty or self.handle is None:
            return
        self.handle.flush()
        self._dirty = False
        if self.fsync == "interval":
            self._unsynced = True
            self.sync_due()
        elif self.fsync != "never":
            os.fsync(self.handle.fileno())

    @property
    def unsynced(self) -> bool:
        return self._unsynced

    def sync_due(self) -> None:
        """Under the ``interval`` policy, fsync if the last one is old enough."""
        if self._unsynced and self.handle is not None:
            now = time.monotonic()
            if now - self._synced_at >= FSYNC_INTERVAL_S:
                os.fsync(self.handle.fileno())
                self._unsynced = False
                self._synced_at = now

    # --- compaction ---------------------------------------------------------------------

    def snapshot(self, state: BrainState) -> None:
        """Write the state beside the journal and start an empty journal after it."""
        self.commit()
        tmp = self.snapshot_path + ".tmp"
        with open(tmp, "wb") as handle:
            pickle.dump((SNAPSHOT_VERSION, state), handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.snapshot_path)
        if self.handle is not None:
            self.handle.close()
        self._start_file(state.events)
        self.since_snapshot = 0

    def _start_file(self, base: int) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as handle:
            handle.write(msgpack.packb(["h", base], use_bin_type=True))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self.handle = open(self.path, "ab")  # noqa: SIM115 (held open for appends)

    def close(self) -> None:
        self.commit()
        if self.handle is not None:
            if self._unsynced:
                os.fsync(self.handle.fileno())
                self._unsynced = False
            self.handle.close()
            self.handle = None
        self.unlock()

    def unlock(self) -> None:
        """Let another brain have the journal (the end of the process does it too)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
