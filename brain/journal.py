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
    ["p", now, request_id, text, error]  PlanLoaded
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

Snapshots
---------
A snapshot is the whole state (pickled: the file is the brain's own, on
local disk) with the number of events it holds, behind a header with its
length and a crc32 (``SNAPSHOT_MAGIC``), so a damaged snapshot is refused as
``JournalDamaged`` too. It is written beside the journal
(``<journal>.snap``) by write-then-rename, after which the journal is
replaced by an empty one whose header says where it starts. Recovery loads
the snapshot, then folds the journal records it does not already hold, so a
crash between any two of these steps loses nothing and applies nothing
twice. Replay is a fold of ``step``; its commands are discarded (they were
carried out the first time).

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

import logging
import os
import pickle
import shutil
import struct
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

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
from llmo.brain.state import BrainState
from llmo.proto.codec import decode, encode

log = logging.getLogger("llmo.brain.journal")

SNAPSHOT_VERSION = 2
SNAPSHOT_MAGIC = b"LLMOSNAP"
SNAPSHOT_HEADER = struct.Struct(">8sIQI")  # magic, version, length, crc32 of the pickle
MAGIC = b"\xc1J"  # 0xc1 is the one byte msgpack never uses as a type
HEADER = struct.Struct(">2sQII")  # magic, seq, length, crc32(seq + length + payload)
FSYNC_POLICIES = ("always", "batch", "interval", "never")
FSYNC_INTERVAL_S = 0.1  # the "interval" policy: at most this long between fsyncs


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
        case PlanLoaded(request_id=request_id, text=text, error=error):
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
        return now, PlanLoaded(record[2], record[3], record[4])
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


def _record_at(data: bytes, pos: int) -> tuple[int, list[Any], int] | None:
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


def _next_record(data: bytes, start: int) -> int | None:
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
    ``before``: the index in ``Scan.records`` of the first record after it."""

    offset: int
    length: int
    lost: int | None = None
    before: int = 0


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


def scan(data: bytes) -> Scan:
    """Every valid record of a journal's bytes, and every damaged span between them."""
    if data[:1] == b"\x92":
        return _scan_legacy(data)
    found = Scan(base=None, size=len(data))
    previous: int | None = None  # seq of the last valid event (base - 1 after the header)
    pos = 0
    while pos < len(data):
        valid = _record_at(data, pos)
        if valid is None:
            after = _next_record(data, pos + 1)
            if after is None:
                found.torn = Span(pos, len(data) - pos, None, len(found.records))
                break
            nxt = _record_at(data, after)
            assert nxt is not None
            lost = None if previous is None else max(0, nxt[0] - previous - 1)
            found.damage.append(Span(pos, after - pos, lost, len(found.records)))
            pos = after
            continue
        seq, record, end = valid
        found.offsets.append(pos)
        if record[0] == "h" and found.base is None and not found.records:
            found.base = int(record[1])
            previous = found.base - 1
        else:
            found.records.append(record)
            found.seqs.append(seq)
            previous = seq
        found.good = pos = end
    return found


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
    """The events of a journal file, in order (not those already in its snapshot)."""
    _, records, _ = read_records(path)
    for record in records:
        yield event_of(record)


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


def snapshot_bytes(state: BrainState) -> bytes:
    body = pickle.dumps((SNAPSHOT_VERSION, state), protocol=pickle.HIGHEST_PROTOCOL)
    head = SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, len(body), zlib.crc32(body))
    return head + body


def load_snapshot_file(path: str) -> BrainState:
    """The state in a snapshot file (a new state if there is none); ``JournalDamaged``
    if it does not validate."""
    if not os.path.exists(path):
        return new_state()
    data = read_bytes(path)

    def damaged(why: str) -> JournalDamaged:
        return JournalDamaged(
            f"the snapshot {path} is damaged ({why}); not starting on it: "
            f"run `llmo journal check {path.removesuffix('.snap')}`",
            path,
        )

    if data.startswith(SNAPSHOT_MAGIC):
        if len(data) < SNAPSHOT_HEADER.size:
            raise damaged("cut short in its header")
        _, version, length, crc = SNAPSHOT_HEADER.unpack_from(data)
        body = data[SNAPSHOT_HEADER.size :]
        if len(body) != length:
            raise damaged(f"{len(body)} bytes where its header says {length}")
        if zlib.crc32(body) != crc:
            raise damaged("its checksum fails")
    else:
        body = data  # a version 1 snapshot: a bare pickle, no checksum
    try:
        version, state = pickle.loads(body)
    except Exception as exc:
        raise damaged(f"cannot unpickle it: {exc}") from exc
    if version not in (1, SNAPSHOT_VERSION) or not isinstance(state, BrainState):
        raise JournalError(f"{path} is not a version {SNAPSHOT_VERSION} snapshot")
    return state


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
        self.next_seq = 0
        self.committed = 0  # the journal's length up to its last committed record
        self._dirty = False
        self._unsynced = False  # flushed to the OS, not yet fsynced
        self._synced_at = time.monotonic()

    # --- recovery ---------------------------------------------------------------

    def recover(self, holder: Mapping[str, Any] | None = None) -> BrainState:
        """Lock the journal, then the state it (and its snapshot) hold; then opens it
        for appending. ``holder`` (the broker endpoint, ...) goes into the lock file
        with the pid; ``JournalLocked`` if another brain holds it, ``JournalDamaged``
        (nothing changed) if the journal is damaged anywhere but its last record."""
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
            return state
        base = found.base
        skip = state.events - base
        if skip < 0:
            raise JournalError(
                f"{self.path} starts at event {base} but the snapshot holds only "
                f"{state.events}: events are missing"
            )
        for record in found.records[skip:]:
            now, event = event_of(record)
            state, _ = step(state, event, now)
        self.since_snapshot = len(found.records) - skip
        self.next_seq = base + len(found.records)
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

    # --- appending -------------------------------------------------------------------

    def append(self, now: float, event: Event, raw: bytes | None = None) -> None:
        assert self.handle is not None, "recover() first"
        self.handle.write(framed(self.next_seq, record_of(now, event, raw)))
        self.next_seq += 1
        self.since_snapshot += 1
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

    def snapshot(self, state: BrainState) -> None:
        """Write the state beside the journal and start an empty journal after it.

        A snapshot that cannot be written (a full disk) raises and leaves the
        journal as it was, open for appends: recovery never needs the snapshot."""
        self.commit()
        tmp = self.snapshot_path + ".tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.write(snapshot_bytes(state))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            _remove(tmp)
            raise
        os.replace(tmp, self.snapshot_path)
        try:
            self._start_file(state.events)
        except OSError:
            _remove(self.path + ".tmp")
            if self.handle is None or self.handle.closed:
                self._open()  # the old journal: its records past the snapshot are skipped
            raise
        self.since_snapshot = 0

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
