"""The brain's shell: the socket, the clock, the journal and the disk around the core.

Theory of operation
-------------------
The loop is small: wait for a message or the next tick, decode, step,
journal, then act. A tick (the timers: liveness, backoff, timeouts) runs
only once the socket is drained, so messages that queued up while the loop
stood still are read before any timer judges by them; the core itself sees
how long the loop stood still from the times of consecutive events. Every
event is stepped and appended to the journal; once per loop iteration the
journal is committed (one fsync for the whole burst) and only then are the
collected commands carried out, so nothing is sent or written that the
journal does not already explain; the history files of an iteration are
written before its messages are sent. Those go out bundled
(``brain.outbox``): a worker's assignments, or its result acks, in one message,
the batch events last in one; a lone message is sent as it is, with no wait.
File reads the core asks for (``ReadPlan``, ``ReadManifest``) become events
that are stepped and journaled in turn, in the same iteration.

On start the brain locks its journal (``Journal.recover``: one brain per
journal; a second one is refused with ``JournalLocked`` naming the holder's
pid and broker, before it reads anything), the journal is replayed
(snapshot first) and two events are
journaled: ``Configure`` with the settings of this run and ``Resumed``,
which gives known workers a fresh expiry window, holds back for one expiry
any verdict that an assigned attempt is lost (its result may be held by the
worker and on its way), and asks again for reads that were pending at the
crash. Workers hold their results while the brain is away and send them
again when it is back (see ``worker.link``); results for attempts the brain
no longer expects are ignored by the core.

On SIGTERM or SIGINT the loop ends and one more event is journaled,
``Stopped``: each unfinished batch gets ``batch_interrupted`` in its events
and a RUN_SUMMARY whose status is ``partial`` (``interrupted``: true), written before the brain
exits; the next start resumes them (``batch_resumed``). ``llmo up`` and the
systemd units stop the workers first, so results finished in their stop
grace reach the brain before it stops.

A failed write to the shared drive (history files) is logged and does not
stop the loop: queue truth is the journal, not those files. One that failed
for lack of space (``brain.diskfull.DISK_ERRNOS``) is kept, and written on a
later tick once space allows, in order with the files that follow it.

A journal that cannot be written is the ``disk_full`` state, not a crash
(``brain.diskfull``): what was not committed is rolled back, the commands of
those events are dropped, the brain answers from its last good state and
refuses what would change it, and each tick tries to journal again.

One brain per broker: when the broker refuses this brain's messages with
``name_in_use`` for longer than the broker's expiry for a silent holder
(``refusal_grace``: until then the holder may be this brain's own previous
connection, cut off by a partition), another brain holds the name ``brain``
there (on another journal, or another host). Nothing this brain sends would
be routed, so it stops: it journals nothing more, logs one line naming the
broker as its last, and ``run`` returns 2, which ``llmo up`` does not
restart. The refusal answers a message of this brain (``reply_to``); the
broker's notice to the brain that holds the name has none, goes to the core
like any error, and that brain keeps running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import time
from collections import deque
from collections.abc import Callable

import zmq

from llmo import plans
from llmo.brain import histfiles, view
from llmo.brain.commands import (
    AppendLines,
    Command,
    LinkFile,
    Log,
    MakeDirs,
    ReadManifest,
    ReadPlan,
    RemoveFile,
    Send,
    WriteEnvManifest,
    WriteFile,
)
from llmo.brain.config import BrainConfig
from llmo.brain.core import step
from llmo.brain.diskfull import (
    MAX_DEFERRED,
    DiskFull,
    disk_full,
    disposition,
    free_bytes,
    is_disk_full,
)
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
from llmo.brain.journal import FSYNC_INTERVAL_S, Journal
from llmo.brain.outbox import bundle
from llmo.brain.prior import read_prior
from llmo.brain.snapshot import SnapshotPolicy
from llmo.brain.state import BrainState
from llmo.proto.client import Client
from llmo.proto.codec import decode, encode
from llmo.proto.errors import ErrorCode, ProtocolError
from llmo.proto.messages import BRAIN, BROKER, Error, Message, SnapshotReply, SnapshotRequest
from llmo.proto.vocab import HEARTBEAT_INTERVAL_S

log = logging.getLogger("llmo.brain")

TICK_S = 0.5
REFUSED_EXIT = 2  # another brain holds the name at the broker: not for a restart
BURST = 1000
FILE_COMMANDS = (MakeDirs, AppendLines, WriteFile, LinkFile, WriteEnvManifest, RemoveFile)
LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
RETRY_FREE_BYTES = 64 * 1024  # a full brain tries to journal again once this much is free
RETRY_EVERY_S = 30.0  # ... or this often anyway (quotas, EIO: free bytes do not tell)


class BrainService:
    def __init__(
        self,
        endpoint: str,
        journal_path: str,
        config: BrainConfig | None = None,
        *,
        fsync: str = "interval",
        tick_s: float = TICK_S,
        snapshots: SnapshotPolicy | None = None,
        clock: Callable[[], float] = time.time,
        context: zmq.SyncContext | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.config = config or BrainConfig()
        self.journal = Journal(journal_path, fsync=fsync, policy=snapshots)
        self.tick_s = tick_s
        self.clock = clock
        self.context = context
        self.state: BrainState | None = None
        self.client: Client | None = None
        self.pending: list[Command] = []
        self.refused: Error | None = None  # the broker's name_in_use answer, once refused
        self._running = False
        # The disk_full state (``brain.diskfull``): why the journal cannot be written.
        self.disk: DiskFull | None = None
        self.deferred: deque[bytes] = deque()  # worker reports kept while full
        self.uncommitted: list[tuple[Event, bytes | None]] = []  # appended since the commit
        self.unwritten: list[Command] = []  # history file commands waiting for space
        self.recovered = False  # the journal is locked and open for appends
        self.configured = False  # this run's Configure is journaled
        self._tried_at = 0.0
        self._retrying = False
        self._stop_why = ""  # an orderly stop (a signal): journaled as ``Stopped``
        self._refused_since: float | None = None  # name_in_use since, nothing routed here

    # --- the loop ------------------------------------------------------------------

    def start(self) -> None:
        """Recover from the journal and connect (``run`` calls it). On a disk too full
        to recover on, the brain starts on the state it reads, in ``disk_full``."""
        full = self._recover()
        if full is not None:
            self.state = self.journal.read_state()
            self._fail_disk(full)
        assert self.state is not None, "recovered, or read while the disk is full"
        resumed = self.state.events > 0
        log.info(
            "brain: journal %s holds %d events, %d batches (%d running): %s",
            self.journal.path,
            self.state.events,
            len(self.state.batches),
            len(self.state.active_batches()),
            self.journal.recovery.text() if self.journal.recovery else "",
        )
        self.client = Client(BRAIN, self.endpoint, context=self.context, clock=self.clock)
        if self.disk is None:
            self.feed(Configure(self.config.to_dict()))
            if resumed:
                self.feed(Resumed())
            self.flush()
            self.configured = self.disk is None

    def _recover(self) -> OSError | None:
        """Lock the journal and recover the state from it; the error when the disk is
        too full to (any other error is raised)."""
        try:
            self.state = self.journal.recover({"broker": self.endpoint})
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            return exc
        self.recovered = True
        return None

    def run(self, *, install_signals: bool = False) -> int:
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda n, _: self.stop(signal.Signals(n).name))
        if self.state is None:
            self.start()
        assert self.client is not None
        socket = self.client.socket
        self._running = True
        next_tick = self.clock() + self.tick_s
        log.info("brain: connected to %s", self.endpoint)
        try:
            while self._running:
                wait_ms = max(0, int((next_tick - self.clock()) * 1000))
                if self.journal.unsynced:
                    wait_ms = min(wait_ms, int(FSYNC_INTERVAL_S * 1000))
                drained = True
                if socket.poll(min(wait_ms, int(self.client.heartbeat_due_in() * 1000) + 1)):
                    drained = False
                    for _ in range(BURST):
                        if not self._running:
                            break
                        try:
                            raw = socket.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            drained = True
                            break
                        self.receive(raw)
                if not self._running:
                    break
                now = self.clock()
                # Timers run once what arrived meanwhile is read (a flood delays them
                # by at most a few ticks): a heartbeat queued behind a pause counts.
                if now >= next_tick and (drained or now >= next_tick + 4 * self.tick_s):
                    if self.disk is None:
                        self.feed(Tick())
                    else:
                        self.retry_disk()
                    self.retry_unwritten()
                    next_tick = self.clock() + self.tick_s
                self.client.tick()
                self.flush()
                self.sync_due()
            if self._stop_why and self.refused is None:
                self.feed(Stopped(self._stop_why))
        finally:
            self.close()
        if self.refused is not None:
            log.error(
                "brain: another brain is connected to the broker at %s; this one stops "
                "(the broker said: %s)",
                self.endpoint,
                self.refused.detail,
            )
            return REFUSED_EXIT
        return 0

    def stop(self, why: str = "") -> None:
        """End the loop; with ``why`` (a signal's name) it is an orderly stop: the
        unfinished batches are marked interrupted and the stop is journaled."""
        self._running = False
        self._stop_why = self._stop_why or why

    def close(self) -> None:
        if self.state is not None and self.journal.handle is not None and self.disk is None:
            self.flush()
        try:
            self.journal.close()
        except OSError as exc:
            log.error("brain: closing the journal %s failed: %s", self.journal.path, exc)
            self.journal.unlock()
        if self.client is not None:
            self.client.close()
            self.client = None

    # --- one event -------------------------------------------------------------------

    def receive(self, raw: bytes) -> None:
        try:
            msg = decode(raw)
        except ProtocolError as exc:
            log.warning("brain: dropped a malformed message: %s", exc)
            return
        if refuses_this_brain(msg):
            assert isinstance(msg, Error)
            self._refused_again(msg)
            return
        self._refused_since = None  # routed to this brain: the name is its own
        if self.disk is not None:
            self.while_full(msg, raw)
            return
        self.feed(Received(msg), raw)

    def _refused_again(self, msg: Error) -> None:
        """The broker refused this brain's name. Its own previous connection (one cut
        off by a partition, say) may still hold it until the broker judges it silent;
        this connection's next heartbeat claims the name again. Only refusals for
        longer than that (``refusal_grace``) mean another brain holds it."""
        now = self.clock()
        if self._refused_since is None:
            self._refused_since = now
            log.warning(
                "brain: the broker refused the name 'brain' (%s); claiming it again for "
                "%.0fs, in case the broker still holds this brain's previous connection",
                msg.detail,
                refusal_grace(msg),
            )
        if now - self._refused_since >= refusal_grace(msg):
            self.refused = msg
            self.stop()

    def feed(self, event: Event, raw: bytes | None = None) -> None:
        """Step one event and journal it; its commands wait for ``flush``."""
        assert self.state is not None, "start() first"
        if self.disk is not None:
            return  # nothing is stepped that cannot be journaled
        now = self.clock()
        self.state, commands = step(self.state, event, now)
        self.uncommitted.append((event, raw))
        try:
            self.journal.append(now, event, raw)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self._fail_disk(exc)
            return
        self.pending.extend(commands)

    def flush(self) -> None:
        """Commit the journal, then carry out the commands it now explains.

        The history files go first: whoever hears of an event (a batch that
        ended) then finds its events, RUN_SUMMARY and ESCALATION on disk.
        """
        try:
            while self.pending and self.disk is None:
                self.journal.commit()
                self.uncommitted.clear()
                commands, self.pending = self.pending, []
                for command in joined_appends(commands):
                    if type(command) in FILE_COMMANDS:
                        if self.unwritten:  # in order, behind those waiting for space
                            self.unwritten.append(command)
                        else:
                            self.execute(command)
                sends: list[Message] = []
                for command in commands:
                    if type(command) is Send:
                        sends.append(command.msg)
                    elif type(command) not in FILE_COMMANDS:
                        self.execute(command)
                for msg in bundle(sends):
                    self.execute(Send(msg))
            if self.disk is not None or not self.recovered:
                return
            self.journal.commit()
            self.uncommitted.clear()
            self.snapshot()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self._fail_disk(exc)

    def snapshot(self) -> None:
        """Install a finished snapshot, or start one when the policy says it is due
        (written by a child: the loop goes on). One that finds no space is put off
        (the journal it would replace stays whole and goes on)."""
        assert self.state is not None, "records were journaled, so start() has run"
        now = time.monotonic()
        try:
            self.journal.maybe_snapshot(self.state, now)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.journal.put_off_snapshot(now)
            log.warning(
                "brain: snapshot %s not written (%s, %s bytes free); the journal goes on, "
                "and a snapshot is tried again in %.0fs",
                self.journal.snapshot_path,
                exc.strerror or exc,
                free_bytes(self.journal.snapshot_path),
                self.journal.policy.retry_s,
            )

    def sync_due(self) -> None:
        if self.disk is not None or not self.recovered:
            return
        try:
            self.journal.sync_due()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self._fail_disk(exc)

    # --- the disk_full state (brain.diskfull) -------------------------------------------

    def _fail_disk(self, exc: OSError) -> None:
        """The journal cannot be written: cut what it did not commit, go back to the
        state it explains, drop the commands of what was cut, and answer, keep or drop
        the messages that were cut as a full brain does (``while_full``)."""
        first = self.disk is None and not self._retrying
        self.disk = disk_full(self.journal.path, exc, self.clock())
        self._tried_at = self.clock()
        self.pending = []
        cut, self.uncommitted = self.uncommitted, []
        if self.recovered:
            try:
                self.state = self.journal.rollback()
            except OSError as again:
                if not is_disk_full(again):
                    raise
                self.recovered = False
                self.journal.unlock()
                self.state = self.journal.read_state()
        if first:
            log.error("brain: disk_full: %s", self.disk.text())
        again_first = [
            raw if raw is not None else encode(event.msg)
            for event, raw in cut
            if isinstance(event, Received) and disposition(event.msg.TYPE) == "defer"
        ]
        self.deferred.extendleft(reversed(again_first))
        for event, _ in cut:
            if isinstance(event, Received) and disposition(event.msg.TYPE) != "defer":
                self.while_full(event.msg, None)

    def while_full(self, msg: Message, raw: bytes | None) -> None:
        """What a brain that cannot journal does with ``msg`` (``brain.diskfull``)."""
        assert self.disk is not None and self.state is not None
        what = disposition(msg.TYPE)
        if what == "answer" and isinstance(msg, SnapshotRequest):
            workers, batches, tasks = view.snapshot(self.state, msg.batch_id)
            reply: Message = SnapshotReply(
                dst=msg.src,
                reply_to=msg.id,
                rev=self.state.rev,
                workers=tuple(workers),
                batches=tuple(batches),
                tasks=tuple(tasks),
                disk_full=self.disk.text(),
            )
        elif what == "defer":
            self.deferred.append(raw if raw is not None else encode(msg))
            if len(self.deferred) > MAX_DEFERRED:
                self.deferred.popleft()
                log.warning(
                    "brain: disk_full: over %d worker reports kept; dropped the oldest",
                    MAX_DEFERRED,
                )
            return
        elif what == "refuse" and msg.src and msg.id:
            reply = Error(
                dst=msg.src,
                code=ErrorCode.DISK_FULL,
                reply_to=msg.id,
                detail=f"{self.disk.text()}; this {msg.TYPE.value} was not journaled "
                "and will not run: send it again once space is freed",
            )
        else:
            return
        self.execute(Send(reply))

    def retry_disk(self) -> None:
        """On a tick while full: journal ``Resumed`` (``Configure`` first if this run's
        is not journaled yet); once that commits, step the reports kept meanwhile."""
        assert self.disk is not None
        now = self.clock()
        free = free_bytes(self.journal.path)
        if (free is None or free < RETRY_FREE_BYTES) and now - self._tried_at < RETRY_EVERY_S:
            return
        self._tried_at = now
        held, self.disk = self.disk, None
        self._retrying = True
        try:
            self._resume(held, free)
        finally:
            self._retrying = False

    def _resume(self, held: DiskFull, free: int | None) -> None:
        if not self.recovered and self._recover() is not None:
            self.disk = held
            return
        if not self.configured:
            self.feed(Configure(self.config.to_dict()))
        self.feed(Resumed())
        self.flush()
        if self.disk is not None:
            self.disk = held  # still full: keep the first line's time and say nothing more
            return
        self.configured = True
        log.warning(
            "brain: disk_full is over: journal %s is written again (%s bytes free); "
            "resuming work, %d worker reports kept meanwhile follow",
            self.journal.path,
            free if free is not None else "unknown",
            len(self.deferred),
        )
        self._retrying = False  # from here a full disk is news again
        while self.deferred and self.disk is None:
            self.receive(self.deferred.popleft())
            if len(self.pending) >= BURST:
                self.flush()
        self.flush()

    def retry_unwritten(self) -> None:
        """Write, in order, the history files that found no space before."""
        while self.unwritten:
            command = self.unwritten[0]
            try:
                write_files(command)
            except OSError as exc:
                if is_disk_full(exc):
                    return
                log.error("brain: %s failed: %s", type(command).__name__, exc)
            self.unwritten.pop(0)
            if not self.unwritten:
                log.warning("brain: the history files waiting for space are written")

    # --- commands ------------------------------------------------------------------

    def execute(self, command: Command) -> None:
        try:
            match command:
                case Send(msg=msg):
                    assert self.client is not None, "start() first"
                    self.client.send(msg)
                case (
                    AppendLines()
                    | WriteFile()
                    | MakeDirs()
                    | LinkFile()
                    | WriteEnvManifest()
                    | RemoveFile()
                ):
                    write_files(command)
                case ReadPlan():
                    self.feed(read_plan(command, self.config.plan_roots))
                case ReadManifest():
                    self.feed(read_manifest(command, self.config.plan_roots))
                case Log(level=level, text=text):
                    log.log(LOG_LEVELS.get(level, logging.INFO), "%s", text)
        except OSError as exc:
            if type(command) in FILE_COMMANDS and is_disk_full(exc):
                if not self.unwritten:
                    log.error(
                        "brain: %s failed: %s; kept, and written once space allows",
                        type(command).__name__,
                        exc,
                    )
                self.unwritten.append(command)
                return
            log.error("brain: %s failed: %s", type(command).__name__, exc)
        except zmq.ZMQError as exc:
            log.error("brain: %s failed: %s", type(command).__name__, exc)


def joined_appends(commands: list[Command]) -> list[Command]:
    """``commands`` with the ``AppendLines`` to one file that no other file command
    comes between joined into the first: a loop turn's events reach
    ``batch_events.jsonl`` in one write, not an open, a write and a close each.
    File commands keep their order among themselves; the rest (sends, logs,
    reads) are carried out after them anyway (``flush``)."""
    out: list[Command] = []
    last_file = -1  # where the last file command is in ``out``
    for command in commands:
        if type(command) not in FILE_COMMANDS:
            out.append(command)
            continue
        last = out[last_file] if last_file >= 0 else None
        if (
            isinstance(command, AppendLines)
            and isinstance(last, AppendLines)
            and last.path == command.path
        ):
            out[last_file] = dataclasses.replace(last, lines=(*last.lines, *command.lines))
            continue
        last_file = len(out)
        out.append(command)
    return out


def write_files(command: Command) -> None:
    """Carry out one history file command (``MakeDirs``, ``AppendLines``, ``WriteFile``,
    ``LinkFile``, ``WriteEnvManifest``, ``RemoveFile``; see ``brain.histfiles``)."""
    match command:
        case AppendLines(path=path, lines=lines):
            append_lines(path, lines)
        case WriteFile(path=path, text=text, artifacts=artifacts):
            if artifacts:
                text = histfiles.with_artifacts(text, os.path.dirname(path), artifacts)
            write_file(path, text)
        case LinkFile(path=path, target=target):
            histfiles.link_file(path, target)
        case WriteEnvManifest(plan_path=plan_path, path=path):
            manifest = histfiles.env_manifest(plan_path, time.time())
            write_file(path, json.dumps(manifest, indent=2) + "\n")
            if manifest["missing"]:
                log.warning(
                    "brain: the scripts of %s import modules this environment lacks: %s (see %s)",
                    plan_path,
                    ", ".join(manifest["missing"]),
                    path,
                )
        case MakeDirs(paths=paths):
            for path in paths:
                os.makedirs(path, exist_ok=True)
        case RemoveFile(path=path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def refuses_this_brain(msg: Message) -> bool:
    """Whether ``msg`` is the broker refusing one of this brain's messages because
    another connection holds the name ``brain`` (not the notice to the holder)."""
    return (
        isinstance(msg, Error)
        and msg.code == ErrorCode.NAME_IN_USE
        and msg.src == BROKER
        and bool(msg.reply_to)
    )


REFUSAL_GRACE_S = 10.0  # at least this long refused before another brain is assumed
_SILENT_FOR = re.compile(r"silent ([0-9]+(?:\.[0-9]+)?)s")


def refusal_grace(msg: Error) -> float:
    """How long refusals must last before they mean another brain: the broker's
    expiry for a silent holder (its refusal names it), plus two heartbeats."""
    said = _SILENT_FOR.search(msg.detail)
    expiry = float(said.group(1)) if said else 0.0
    return max(REFUSAL_GRACE_S, expiry + 2 * HEARTBEAT_INTERVAL_S)


def read_plan(command: ReadPlan, roots: tuple[str, ...] = ()) -> PlanLoaded:
    """The plan file's text, read only inside its own folder and, if any, the plan roots,
    and what an earlier run left in the batch folder the submission names, if any."""
    loaded = _read_plan_text(command, roots)
    if not command.history or loaded.text is None:
        return loaded
    return dataclasses.replace(loaded, prior=read_prior(command.history))


def _read_plan_text(command: ReadPlan, roots: tuple[str, ...]) -> PlanLoaded:
    path = command.plan_path
    file = path if path.endswith(".md") else os.path.join(path, "plan.md")
    allowed = list(roots) or [os.path.dirname(file)]
    try:
        if (why := plans.outside_roots(file, [os.path.dirname(file)])) or (
            roots and (why := plans.outside_roots(file, roots))
        ):
            return PlanLoaded(command.request_id, None, f"the plan file {why}; it was not read")
        text = plans.read_confined(file, allowed, "the plan file")
        return PlanLoaded(command.request_id, text)
    except plans.PlanError as exc:
        return PlanLoaded(command.request_id, None, str(exc))
    except FileNotFoundError:
        return PlanLoaded(command.request_id, None, f"there is no plan file {file}")
    except (OSError, UnicodeDecodeError) as exc:
        return PlanLoaded(command.request_id, None, f"cannot read {file}: {exc}")


def read_manifest(command: ReadManifest, roots: tuple[str, ...] = ()) -> ManifestRead:
    """The items of a foreach source inside the plan folder, the batch folder or ``roots``."""
    variables = command.variables
    try:
        items = plans.read_foreach_items(
            command.spec, variables, base_dir=variables.get("BATCH_PATH"), roots=roots
        )
    except plans.PlanError as exc:
        return ManifestRead(command.batch_id, command.task_id, None, str(exc))
    return ManifestRead(command.batch_id, command.task_id, tuple(items))


def append_lines(path: str, lines: tuple[str, ...]) -> None:
    """Append whole lines: on a failed write the file is cut back to where it was,
    so writing the lines again later leaves no half line. Its folder is made
    only when the file cannot be opened for want of it."""
    data = ("\n".join(lines) + "\n").encode()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, flags, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view_ = memoryview(data)
            while view_:
                view_ = view_[os.write(fd, view_) :]
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def write_file(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    os.replace(tmp, path)
