"""The brain's journal: every event, in order, on local disk, before it is acted on.

Theory of operation
-------------------
The journal is a stream of framed records, one per event the core folds.
Each frame is an 18-byte header and a msgpack payload::

    magic b"\\xc1J" | seq (u64) | length (u32) | crc32 of seq, length, payload (u32) | payload

``seq`` is the event's number in the brain's whole history (the header
record carries its file's base). The payloads are:

    ["h", base]                          header: events folded before this file
    ["c", now, settings]                 Configure
    ["m", now, bytes]                    Received (the message as it came off the wire)
    ["t", now]                           Tick
    ["r", now]                           Resumed
    ["s", now, why]                      Stopped
    ["p", now, request_id, text, error(, prior)]  PlanLoaded
    ["f", now, batch, task, items, error] ManifestRead

The shell steps an event, appends its record, commits the journal, and only
then carries out the commands. ``committed`` is the journal's length up to the
last commit that succeeded; when a commit fails (a full disk: the shell's
``disk_full`` state, see ``brain.diskfull``), ``rollback`` cuts the file back
to it (a record half written is never replayed) and folds the journal again,
so the brain keeps the state its journal explains and nothing it did not act
on. A snapshot that cannot be written leaves the journal as it was.

``commit`` always hands the records to the operating system first
(``flush``), which is all that surviving a killed brain (``kill -9``) needs:
the page cache outlives the process. The fsync policy decides what a power
cut may take: ``always`` fsyncs every record, ``batch`` once per loop
iteration, ``interval`` (the default) at most every ``FSYNC_INTERVAL_S`` (so
under load one fsync covers many iterations, and ``sync_due`` catches up
once the loop is idle), ``never`` leaves it to the OS. What a power cut
takes is at most the last interval of events: the rig's workers go down with
it, and the tasks of those events run again.

Damage
------
``scan`` reads a journal frame by frame. Where a frame does not validate
(magic, length within the file, checksum, a msgpack list), it resynchronises:
it searches forward, byte by byte, for the next header whose length and
checksum validate. A crash can only cut the *last* record short, so damage
with nothing valid after it is a torn tail, the one legitimate damage:
recovery cuts it off and logs where. Damage with valid records after it is a
bad disk, a bad copy or a stray write: recovery refuses (``JournalDamaged``,
naming the offset) and changes nothing, since cutting there would silently
drop every later event. ``repair`` (``llmo journal repair``) keeps the
damaged file beside the journal (``<journal>.damaged-<time>``) and writes a
journal of every valid record, renumbered, saying what was lost: the spans
and, from the sequence numbers on both sides, how many records.

Journals written before framing (a bare msgpack stream, which starts with the
header ``["h", base]``) are still read, without damage detection, and are
rewritten framed by the first recovery.

``walk`` yields the frames and damaged spans one by one, from bytes or from
a mapped file (``mapped``): ``llmo replay`` and ``events`` stream a journal
of any length in the memory of one record.

Snapshots
---------
A snapshot is the whole state with the number of events it holds, in a
checksummed file (``brain.snapshot``), so a damaged snapshot is refused as
``JournalDamaged`` too.

When: ``SnapshotPolicy`` says, from the records and bytes journaled since
the last snapshot and its age (a time the shell passes in), so recovery
replays a bounded tail of the journal, however long the brain has run.

How, without stalling the loop: ``begin_snapshot`` forks. The child holds
the state as it was at the fork (copy-on-write) and writes it to
``<journal>.snap.tmp-<pid>`` and fsyncs it; it takes nothing the parent's
other threads may hold, and leaves by ``os._exit``. The parent goes on
stepping and journaling; between loop iterations ``poll_snapshot`` reaps
the child and, only if it succeeded, installs the snapshot: rename over
``<journal>.snap``, fsync the folder, then replace the journal by one whose
header says where the snapshot ends followed by the records written since
the fork (copied from the old file, already framed). The child never renames
anything, so a snapshot is trusted only once it is complete and the brain
that took it still holds the lock; an unfinished one (the brain killed
meanwhile) is removed at the next start. A failed child (a full disk) is
logged; the journal keeps every record and the next try waits
``SnapshotPolicy.retry_s``. Recovery loads the snapshot, then folds the
journal records it does not already hold (by sequence number), so a crash
between any two of these steps loses nothing and applies nothing twice.
``snapshot`` does the same in the calling process, for tools and tests.
Replay is a fold of ``step``; its commands are discarded (they were carried
out the first time). While a large state is replayed the cyclic garbage
collector is held off (as while a snapshot is loaded). ``recovery`` reports
what was loaded and replayed.

One brain writes a journal. ``recover`` first takes an exclusive lock on
``<journal>.lock`` (``brain.lockfile``: released by the operating system
when the brain dies, however it dies) and writes the brain's pid and broker
endpoint into it; a second brain on the same journal is refused with
``JournalLocked``, naming the holder, before it reads or truncates anything.
``repair`` takes the same lock, so it never rewrites a journal a live brain
holds. The lock is on a file of its own because a snapshot replaces the
journal file. Reading a journal (``llmo replay``, ``read_records``, ``scan``,
``llmo journal check``) takes no lock.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import shutil
import signal
import struct
import time
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeAlias

import msgpack

from llmo.brain.core import new_state, step
from llmo.brain.events import (
    Configure,
    Event,
    ManifestRead,
    PlanLoaded,
    Received,
    Resumed,
    Stopped,
    Tick,
)
from llmo.brain.lockfile import FileLock, Locked
from llmo.brain.snapshot import (
    SnapshotInvalid,
    SnapshotPolicy,
    SnapshotUnknown,
    collector_paused,
    parse_snapshot,
    write_snapshot,
)
from llmo.brain.state import BrainState
from llmo.proto.codec import decode, encode

log = logging.getLogger("llmo.brain.journal")

MAGIC = b"\xc1J"  # 0xc1 is the one byte msgpack never uses as a type
HEADER = struct.Struct(">2sQII")  # magic, seq, length, crc32(seq + length + payload)
FSYNC_POLICIES = ("always", "batch", "interval", "never")
FSYNC_INTERVAL_S = 0.1  # the "interval" policy: at most this long between fsyncs

Buffer: TypeAlias = "bytes | mmap.mmap"  # a journal's bytes, read or mapped


class JournalError(Exception):
    """The journal or its snapshot cannot be read (the message says which and why)."""


class JournalDamaged(JournalError):
    """Damage that recovery must not cut off: valid records follow it, or it is in the
    snapshot. ``offset`` is where it starts (None for a snapshot)."""

    def __init__(self, message: str, path: str, offset: int | None = None) -> None:
        self.path = path
        self.offset = offset
        super().__init__(message)


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
        case PlanLoaded(request_id=request_id, text=text, error=error, prior=prior):
            if prior is not None:
                return ["p", now, request_id, text, error, prior]
            return ["p", now, request_id, text, error]
        case ManifestRead(batch_id=batch_id, task_id=task_id, items=items, error=error):
            return ["f", now, batch_id, task_id, list(items) if items is not None else None, error]
        case Configure(settings=settings):
            return ["c", now, settings]
        case Resumed():
            return ["r", now]
        case Stopped(why=why):
            return ["s", now, why]
    raise TypeError(f"not an event: {event!r}")


def event_of(record: list[Any]) -> tuple[float, Event]:
    kind = record[0]
    now = float(record[1])
    if kind == "m":
        return now, Received(decode(record[2]))
    if kind == "t":
        return now, Tick()
    if kind == "p":
        prior = record[5] if len(record) > 5 else None
        return now, PlanLoaded(record[2], record[3], record[4], prior)
    if kind == "f":
        items = tuple(record[4]) if record[4] is not None else None
        return now, ManifestRead(record[2], record[3], items, record[5])
    if kind == "c":
        return now, Configure(record[2])
    if kind == "r":
        return now, Resumed()
    if kind == "s":
        return now, Stopped(str(record[2]))
    raise JournalError(f"unknown journal record kind {kind!r}")


# --- framing and scanning ----------------------------------------------------------------


def framed(seq: int, record: list[Any]) -> bytes:
    """One record as it is written: its header, then its payload."""
    payload: bytes = msgpack.packb(record, use_bin_type=True)
    head = struct.pack(">QI", seq, len(payload))
    return MAGIC + head + struct.pack(">I", zlib.crc32(payload, zlib.crc32(head))) + payload


def _record_at(data: Buffer, pos: int) -> tuple[int, list[Any], int] | None:
    """``(seq, record, end)`` of a valid frame at ``pos``, or None."""
    if len(data) - pos < HEADER.size or data[pos : pos + 2] != MAGIC:
        return None
    _, seq, length, crc = HEADER.unpack_from(data, pos)
    end = pos + HEADER.size + length
    if end > len(data):
        return None
    if zlib.crc32(data[pos + HEADER.size : end], zlib.crc32(data[pos + 2 : pos + 14])) != crc:
        return None
    try:
        record = msgpack.unpackb(data[pos + HEADER.size : end], raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError):
        return None
    if not isinstance(record, list) or not record or not isinstance(record[0], str):
        return None
    return seq, record, end


def _next_record(data: Buffer, start: int) -> int | None:
    """Where the next valid frame at or after ``start`` begins: resynchronisation."""
    pos = data.find(MAGIC, start)
    while pos != -1:
        if _record_at(data, pos) is not None:
            return pos
        pos = data.find(MAGIC, pos + 1)
    return None


@dataclass(frozen=True)
class Span:
    """``length`` damaged bytes at ``offset``; ``lost`` records (None: unknown), and
    ``before``: the index in ``Scan.records`` of the first record after it. ``torn``:
    nothing valid follows it (a crash cut the last record short)."""

    offset: int
    length: int
    lost: int | None = None
    before: int = 0
    torn: bool = False


@dataclass(frozen=True)
class Frame:
    """One valid frame: its sequence number, its record, and where it lies in the file."""

    seq: int
    record: list[Any]
    offset: int
    end: int


@dataclass
class Scan:
    """What a journal file holds: its valid records and where it is damaged."""

    base: int | None  # the header's base; None when the header did not survive
    records: list[list[Any]] = field(default_factory=list)  # event records, in order
    seqs: list[int] = field(default_factory=list)  # the sequence number of each
    offsets: list[int] = field(default_factory=list)  # start of every valid frame (header too)
    good: int = 0  # the end of the last valid frame
    size: int = 0
    damage: list[Span] = field(default_factory=list)  # spans with valid records after them
    torn: Span | None = None  # damage at the end, nothing valid after it: a torn tail
    legacy: bool = False  # an unframed journal (no damage detection)

    @property
    def lost(self) -> int:
        """Records known to be lost in the damaged spans (not counting a torn tail)."""
        return sum(span.lost or 0 for span in self.damage)


def walk(data: Buffer) -> Iterator[Frame | Span]:
    """The valid frames of a framed journal's bytes (its header too) and, in their
    places, the damaged spans between them (the last one ``torn`` when nothing valid
    follows it). ``data`` may be an ``mmap``: only the frame in hand is copied."""
    previous: int | None = None  # seq of the last valid event (base - 1 after the header)
    records = 0
    header = False
    pos = 0
    size = len(data)
    while pos < size:
        valid = _record_at(data, pos)
        if valid is None:
            after = _next_record(data, pos + 1)
            if after is None:
                yield Span(pos, size - pos, None, records, torn=True)
                return
            nxt = _record_at(data, after)
            assert nxt is not None
            lost = None if previous is None else max(0, nxt[0] - previous - 1)
            yield Span(pos, after - pos, lost, records)
            pos = after
            continue
        seq, record, end = valid
        if record[0] == "h" and not header and not records:
            header = True
            previous = int(record[1]) - 1
        else:
            records += 1
            previous = seq
        yield Frame(seq, record, pos, end)
        pos = end


def scan(data: Buffer) -> Scan:
    """Every valid record of a journal's bytes, and every damaged span between them."""
    if data[:1] == b"\x92":
        return _scan_legacy(bytes(data))
    found = Scan(base=None, size=len(data))
    for item in walk(data):
        if isinstance(item, Span):
            if item.torn:
                found.torn = item
            else:
                found.damage.append(item)
            continue
        found.offsets.append(item.offset)
        found.good = item.end
        if item.record[0] == "h" and found.base is None and not found.records:
            found.base = int(item.record[1])
        else:
            found.records.append(item.record)
            found.seqs.append(item.seq)
    return found


@contextlib.contextmanager
def mapped(path: str) -> Iterator[Buffer]:
    """A journal file's bytes without reading them into memory (an ``mmap``; empty bytes
    for an empty or missing file)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        yield b""
        return
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        yield mm


def _scan_legacy(data: bytes) -> Scan:
    found = Scan(base=0, size=len(data), legacy=True)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=0)
    unpacker.feed(data)
    try:
        for record in unpacker:
            if not isinstance(record, list) or not record:
                break
            found.offsets.append(found.good)
            found.good = unpacker.tell()
            if record[0] == "h":
                found.base = int(record[1])
                continue
            found.seqs.append((found.base or 0) + len(found.records))
            found.records.append(record)
    except (msgpack.UnpackException, ValueError):
        pass  # a record cut short by a crash: what came before it stands
    if found.good < len(data):
        found.torn = Span(found.good, len(data) - found.good, None, len(found.records))
    return found


def read_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        return b""
    with open(path, "rb") as handle:
        return handle.read()


def read_records(path: str) -> tuple[int, list[list[Any]], int]:
    """``(base, records, good_bytes)``: the header's base, the valid records, and the
    length of the file up to the end of the last valid record."""
    found = scan(read_bytes(path))
    return found.base or 0, found.records, found.good


def events(path: str) -> Iterator[tuple[float, Event]]:
    """The events of a journal file, in order (not those already in its snapshot),
    read as they are folded: memory does not grow with the journal."""
    with mapped(path) as data:
        if data[:1] == b"\x92":
            records: Iterable[Frame | Span] = (
                Frame(0, r, 0, 0) for r in _scan_legacy(bytes(data)).records
            )
        else:
            records = walk(data)
        for item in records:
            if isinstance(item, Frame) and item.record[0] != "h":
                yield event_of(item.record)


def damage_text(path: str, found: Scan) -> str:
    """One line for an operator: where the journal is damaged and what to run."""
    first = found.damage[0]
    more = f", and {len(found.damage) - 1} more damaged spans" if len(found.damage) > 1 else ""
    follow = len(found.records) - first.before
    return (
        f"journal {path} is damaged at offset {first.offset} ({first.length} bytes, "
        f"{follow} valid records after it{more}); not starting on it: "
        f"run `llmo journal check {path}`, then `llmo journal repair {path}`"
    )


# --- snapshots ---------------------------------------------------------------------------


def load_snapshot_file(path: str) -> BrainState:
    """The state in a snapshot file (a new state if there is none); ``JournalDamaged``
    if it does not validate."""
    if not os.path.exists(path):
        return new_state()
    try:
        return parse_snapshot(read_bytes(path))
    except SnapshotInvalid as exc:
        raise JournalDamaged(
            f"the snapshot {path} is damaged ({exc}); not starting on it: "
            f"run `llmo journal check {path.removesuffix('.snap')}`",
            path,
        ) from exc
    except SnapshotUnknown as exc:
        raise JournalError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class Recovery:
    """What recovery did: the snapshot it loaded and the journal records it replayed."""

    snapshot_events: int  # events the snapshot held (0: none)
    snapshot_bytes: int
    replayed: int  # journal records folded after the snapshot
    load_s: float
    replay_s: float

    def text(self) -> str:
        snap = (
            f"a snapshot of {self.snapshot_events} events ({self.snapshot_bytes} bytes) "
            f"loaded in {self.load_s:.2f}s"
            if self.snapshot_bytes
            else "no snapshot"
        )
        return f"{snap}, {self.replayed} journal records replayed in {self.replay_s:.2f}s"


@dataclass
class _Writing:
    """A snapshot being written by a child process."""

    pid: int
    tmp: str
    base: int  # the events it holds: the journal's records from this seq on follow it
    offset: int  # where, in the journal file, the records after it start
    started: float
    why: str


# --- repair --------------------------------------------------------------------------------


@dataclass
class RepairReport:
    path: str
    kept: str | None = None  # where the damaged journal was kept (None: nothing to repair)
    records: int = 0  # records in the repaired journal
    spans: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) lost
    lost_bytes: int = 0
    lost_records: int = 0  # known lost, from the sequence numbers around each span
    unknown: int = 0  # spans whose lost records cannot be counted
    header_lost: bool = False
    torn: tuple[int, int] | None = None  # a torn tail, cut off
    snapshot_kept: str | None = None  # a damaged snapshot set aside


def repair(path: str) -> RepairReport:
    """Rewrite a damaged journal with every valid record; the original is kept as
    ``<journal>.damaged-<time>``. Refused (``JournalLocked``) while a brain holds it,
    and (``JournalError``) when a damaged snapshot held events the journal lacks."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        lock = FileLock.acquire(path + ".lock", {"journal": os.path.abspath(path), "repair": True})
    except Locked as exc:
        raise JournalLocked(path, exc.holder) from None
    try:
        return _repair(path, directory)
    finally:
        lock.release()


def _repair(path: str, directory: str) -> RepairReport:
    report = RepairReport(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    found = scan(read_bytes(path))
    snapshot_path = path + ".snap"
    try:
        snap_events = load_snapshot_file(snapshot_path).events
    except JournalDamaged:
        if found.base != 0:
            raise JournalError(
                f"the snapshot {snapshot_path} is damaged and the journal starts at event "
                f"{found.base if found.base is not None else '(unknown: its header is lost)'}: "
                "the events before it were only in the snapshot and cannot be salvaged"
            ) from None
        report.snapshot_kept = _free_name(f"{snapshot_path}.damaged-{stamp}")
        os.replace(snapshot_path, report.snapshot_kept)
        snap_events = 0
    if not found.damage and found.torn is None and not found.legacy:
        report.records = len(found.records)
        return report
    report.header_lost = found.base is None and found.size > 0
    base = max(found.base if found.base is not None else 0, snap_events)
    kept = [r for r, s in zip(found.records, found.seqs, strict=True) if s >= base]
    for span in found.damage:
        report.spans.append((span.offset, span.length))
        report.lost_bytes += span.length
        if span.lost is not None:
            report.lost_records += span.lost
        elif span.before < len(found.seqs):  # the header went with it
            report.lost_records += max(0, found.seqs[span.before] - base)
        else:
            report.unknown += 1
    if found.torn is not None:
        report.torn = (found.torn.offset, found.torn.length)
    report.kept = _free_name(f"{path}.damaged-{stamp}")
    if os.path.exists(path):
        try:
            os.link(path, report.kept)
        except OSError:
            shutil.copy2(path, report.kept)
    _rewrite(path, base, kept)
    _sync_dir(directory)
    report.records = len(kept)
    return report


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _free_name(name: str) -> str:
    candidate, n = name, 1
    while os.path.exists(candidate):
        n += 1
        candidate = f"{name}.{n}"
    return candidate


def _rewrite(path: str, base: int, records: list[list[Any]]) -> None:
    """Replace ``path`` (atomically) by a framed journal of ``records`` from ``base``."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(framed(base, ["h", base]))
        for index, record in enumerate(records):
            handle.write(framed(base + index, record))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _sync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    def __init__(
        self,
        path: str,
        *,
        fsync: str = "interval",
        policy: SnapshotPolicy | None = None,
        fork: bool = hasattr(os, "fork"),
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy {fsync!r}: use one of {', '.join(FSYNC_POLICIES)}")
        self.path = path
        self.snapshot_path = path + ".snap"
        self.lock_path = path + ".lock"
        self.lock: FileLock | None = None
        self.fsync = fsync
        self.policy = policy or SnapshotPolicy()
        self.fork = fork
        self.handle: BinaryIO | None = None
        self.since_snapshot = 0  # records written since the last snapshot
        self.bytes_since_snapshot = 0
        self.snapshot_at: float | None = None  # when the state of the last snapshot was taken
        self.snapshots = 0  # snapshots written by this journal
        self.recovery: Recovery | None = None
        self.next_seq = 0
        self.committed = 0  # the journal's length up to its last committed record
        self._writing: _Writing | None = None
        self._retry_at = float("-inf")
        self._dirty = False
        self._unsynced = False  # flushed to the OS, not yet fsynced
        self._synced_at = time.monotonic()

    # --- recovery ---------------------------------------------------------------

    def recover(self, holder: Mapping[str, Any] | None = None) -> BrainState:
        """Lock the journal, then the state it (and its snapshot) hold; then opens it
        for appending. ``holder`` (the broker endpoint, ...) goes into the lock file
        with the pid; ``JournalLocked`` if another brain holds it, ``JournalDamaged``
        (nothing changed) if the journal is damaged anywhere but its last record.
        ``recovery`` then says what was loaded and replayed."""
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
        self._remove_partial_snapshots()
        started = time.perf_counter()
        state = self.load_snapshot()
        loaded = time.perf_counter()
        snap_size = os.path.getsize(self.snapshot_path) if os.path.exists(self.snapshot_path) else 0
        found = scan(read_bytes(self.path))
        if found.damage:
            raise JournalDamaged(damage_text(self.path, found), self.path, found.damage[0].offset)
        if found.base is None:
            if found.size:  # the header is written whole (by rename): this is no torn tail
                raise JournalDamaged(
                    f"journal {self.path} has no valid record in its {found.size} bytes "
                    "(damaged at offset 0, or not a brain journal); not starting on it: "
                    f"run `llmo journal check {self.path}`",
                    self.path,
                    0,
                )
            self._start_file(state.events)  # no journal yet
            self.recovery = Recovery(state.events, snap_size, 0, loaded - started, 0.0)
            return state
        base = found.base
        skip = state.events - base
        if skip < 0:
            raise JournalError(
                f"{self.path} starts at event {base} but the snapshot holds only "
                f"{state.events}: events are missing"
            )
        replay = time.perf_counter()
        with collector_paused():
            for record in found.records[skip:]:
                now, event = event_of(record)
                state, _ = step(state, event, now)
        self.since_snapshot = len(found.records) - skip
        self.bytes_since_snapshot = found.good
        self.next_seq = base + len(found.records)
        self.recovery = Recovery(
            state.events - self.since_snapshot,
            snap_size,
            self.since_snapshot,
            loaded - started,
            time.perf_counter() - replay,
        )
        if found.torn is not None:
            log.warning(
                "journal %s: cut a torn last record at offset %d (%d bytes), "
                "left by a crash mid-write",
                self.path,
                found.torn.offset,
                found.torn.length,
            )
        if found.legacy:
            _rewrite(self.path, base, found.records)
            log.info("journal %s: rewritten with framed, checksummed records", self.path)
        elif found.torn is not None:
            with open(self.path, "r+b") as handle:
                handle.truncate(found.good)
        self._open()
        return state

    def read_state(self) -> BrainState:
        """The state the snapshot and journal hold, read only: no lock, no write (a
        brain that cannot write starts on it, in ``disk_full``)."""
        state = self.load_snapshot()
        found = scan(read_bytes(self.path))
        if found.damage:
            raise JournalDamaged(damage_text(self.path, found), self.path, found.damage[0].offset)
        skip = state.events - (found.base or 0)
        for record in found.records[max(0, skip) :]:
            now, event = event_of(record)
            state, _ = step(state, event, now)
        return state

    def rollback(self) -> BrainState:
        """Cut what was appended after the last commit (a record cut short by a full
        disk included), and return the state the journal then holds.

        The handle is dropped with whatever its buffer still held, the file is cut
        to ``committed`` and folded again: the last good state."""
        if self.handle is not None:
            handle, self.handle = self.handle, None
            try:
                handle.close()  # flushes what it can, then closes the file either way
            except OSError:
                pass
        self._dirty = False
        if os.path.exists(self.path) and os.path.getsize(self.path) > self.committed:
            os.truncate(self.path, self.committed)
        return self._recover()

    def load_snapshot(self) -> BrainState:
        return load_snapshot_file(self.snapshot_path)

    def _remove_partial_snapshots(self) -> None:
        """Snapshots a dead brain's writer left unfinished (never renamed: never trusted)."""
        directory = os.path.dirname(os.path.abspath(self.snapshot_path))
        prefix = os.path.basename(self.snapshot_path) + ".tmp"
        for name in os.listdir(directory):
            if name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(directory, name))

    # --- appending -------------------------------------------------------------------

    def append(self, now: float, event: Event, raw: bytes | None = None) -> None:
        assert self.handle is not None, "recover() first"
        frame = framed(self.next_seq, record_of(now, event, raw))
        self.handle.write(frame)
        self.next_seq += 1
        self.since_snapshot += 1
        self.bytes_since_snapshot += len(frame)
        self._dirty = True
        if self.fsync == "always":
            self.commit()

    def commit(self) -> None:
        """Make every appended record durable (per the fsync policy)."""
        if not self._dirty or self.handle is None:
            return
        before = self.committed
        try:
            self.handle.flush()
            self._dirty = False
            self.committed = self.handle.tell()
            if self.fsync == "interval":
                self._unsynced = True
                self.sync_due()
            elif self.fsync != "never":
                os.fsync(self.handle.fileno())
        except OSError:
            # Nothing of this commit was acted on: ``rollback`` cuts all of it.
            self.committed = before
            raise

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

    @property
    def snapshot_writing(self) -> bool:
        return self._writing is not None

    def maybe_snapshot(self, state: BrainState, now: float) -> bool:
        """Between loop iterations (every record of ``state`` appended): install a
        snapshot whose writer has finished, and start one if the policy says it is due.
        ``now`` is a monotonic time. True when a snapshot was installed."""
        installed = self.poll_snapshot(now)
        if self._writing is not None or now < self._retry_at:
            return installed
        if self.snapshot_at is None:
            self.snapshot_at = now  # the age of a snapshot counts from the start
        why = self.policy.due(
            self.since_snapshot, self.bytes_since_snapshot, now - self.snapshot_at
        )
        if why is not None:
            if self.fork:
                self.begin_snapshot(state, now, why)
            else:
                self.snapshot(state)
                self.snapshot_at = now
                installed = True
        return installed

    def begin_snapshot(self, state: BrainState, now: float, why: str = "") -> None:
        """Fork a child that writes ``state`` as a snapshot while this process goes on;
        ``poll_snapshot`` installs it once the child is done."""
        assert self.handle is not None, "recover() first"
        if state.events != self.next_seq:
            raise JournalError(
                f"snapshot of {state.events} events with {self.next_seq} journaled: "
                "every event must be journaled before a snapshot"
            )
        self.commit()
        offset = self.handle.tell()
        with warnings.catch_warnings():
            # The child only pickles and writes a file: it touches no lock another
            # thread (the sockets' I/O threads) may hold.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: write, fsync, and leave without running any cleanup
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                if self.lock is not None:
                    self.lock.forget()  # a dead brain's lock must not outlive it here
                tmp = f"{self.snapshot_path}.tmp-{os.getpid()}"
                with open(tmp, "wb") as handle:
                    write_snapshot(handle, state)
                    handle.flush()
                    os.fsync(handle.fileno())
                code = 0
            except BaseException as exc:
                with contextlib.suppress(BaseException):
                    os.write(2, f"llmo brain: snapshot writer failed: {exc!r}\n".encode())
            finally:
                os._exit(code)
        self._writing = _Writing(
            pid, f"{self.snapshot_path}.tmp-{pid}", state.events, offset, now, why
        )
        log.info("journal %s: writing a snapshot of %d events (%s)", self.path, state.events, why)

    def poll_snapshot(self, now: float, *, block: bool = False) -> bool:
        """Install the snapshot being written if its writer is done (``block``: wait for
        it). True when one was installed."""
        writing = self._writing
        if writing is None:
            return False
        pid, status = os.waitpid(writing.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        self._writing = None
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not os.path.exists(writing.tmp):
            with contextlib.suppress(FileNotFoundError):
                os.remove(writing.tmp)
            self._retry_at = now + self.policy.retry_s
            log.error(
                "journal %s: the snapshot writer (pid %d) failed (exit %d); the journal "
                "keeps every record, next try in %.0fs",
                self.path,
                writing.pid,
                code,
                self.policy.retry_s,
            )
            return False
        size = os.path.getsize(writing.tmp)
        os.replace(writing.tmp, self.snapshot_path)
        _sync_dir(os.path.dirname(os.path.abspath(self.path)))
        self._cut_before(writing.base, writing.offset)
        self.snapshot_at = writing.started
        self.snapshots += 1
        log.info(
            "journal %s: snapshot of %d events installed (%d bytes, written in %.2fs); "
            "%d records since",
            self.path,
            writing.base,
            size,
            now - writing.started,
            self.since_snapshot,
        )
        return True

    def wait_snapshot(self, limit_s: float = 30.0) -> bool:
        """Wait (at most ``limit_s``) for a snapshot being written and install it; past
        the limit the writer is stopped and the journal kept whole. True if installed."""
        writing = self._writing
        if writing is None:
            return False
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.poll_snapshot(time.monotonic()):
                return True
            if self._writing is None:
                return False
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.kill(writing.pid, signal.SIGKILL)
        self.poll_snapshot(time.monotonic(), block=True)
        return False

    def put_off_snapshot(self, now: float) -> None:
        """A snapshot could not be written or installed here (a full disk): the journal
        goes on whole, and the next one is tried ``policy.retry_s`` later."""
        self._retry_at = now + self.policy.retry_s

    def _cut_before(self, base: int, offset: int) -> None:
        """Replace the journal by one that starts at event ``base``: its records from
        file offset ``offset`` on (those written since the snapshot was taken)."""
        assert self.handle is not None
        self.commit()
        with open(self.path, "rb") as old:
            old.seek(offset)
            tail = old.read()
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.write(framed(base, ["h", base]))
                handle.write(tail)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            _remove(tmp)  # the journal stays whole; its records the snapshot holds are skipped
            raise
        os.replace(tmp, self.path)
        _sync_dir(os.path.dirname(os.path.abspath(self.path)))
        self.handle.close()
        self._open()
        self._unsynced = False
        self.since_snapshot = self.next_seq - base
        self.bytes_since_snapshot = len(tail)

    def snapshot(self, state: BrainState) -> None:
        """Write the state beside the journal and start an empty journal after it, in
        this process (``maybe_snapshot`` writes in a child and does not stall)."""
        self.wait_snapshot()
        self.commit()
        tmp = f"{self.snapshot_path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as handle:
                write_snapshot(handle, state)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            _remove(tmp)  # a snapshot that cannot be written leaves the journal as it was
            raise
        os.replace(tmp, self.snapshot_path)
        _sync_dir(os.path.dirname(os.path.abspath(self.path)))
        try:
            self._start_file(state.events)
        except OSError:
            _remove(self.path + ".tmp")
            if self.handle is None or self.handle.closed:
                self._open()  # the old journal: its records past the snapshot are skipped
            raise
        self.since_snapshot = 0
        self.bytes_since_snapshot = 0
        self.snapshots += 1

    def _start_file(self, base: int) -> None:
        _rewrite(self.path, base, [])
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        self.next_seq = base
        self._open()

    def _open(self) -> None:
        self.handle = open(self.path, "ab")  # noqa: SIM115 (held open for appends)
        self.committed = self.handle.tell()

    def close(self) -> None:
        self.commit()
        self.wait_snapshot()
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
