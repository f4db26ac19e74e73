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
written before its messages are sent. File reads the core asks for
(``ReadPlan``, ``ReadManifest``) become events that are stepped and
journaled in turn, in the same iteration.

On start the brain locks its journal (``Journal.recover``: one brain per
journal; a second one is refused with ``JournalLocked`` naming the holder's
pid and broker, before it reads anything), the journal is replayed
(snapshot first) and two events are
journaled: ``Configure`` with the settings of this run and ``Resumed``,
which gives known workers a fresh expiry window, holds back for one expiry
any verdict that an assigned attempt is lost (its result may be held by the
worker and on its way), and asks again for reads that were pending at the
crash. Workers hold their results while the brain
is away and send them again when it is back (see ``worker.link``); results
for attempts the brain no longer expects are ignored by the core.

A failed write to the shared drive (history files) is logged and does not
stop the loop: queue truth is the journal, not those files.

One brain per broker: when the broker refuses one of this brain's messages
with ``name_in_use``, another brain holds the name ``brain`` there (on
another journal, or another host). Nothing this brain sends would be
routed, so it stops: it journals nothing more, logs one line naming the
broker as its last, and ``run`` returns 2, which ``llmo up`` does not
restart. The refusal answers a message of this brain (``reply_to``); the
broker's notice to the brain that holds the name has none, goes to the core
like any error, and that brain keeps running.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

import zmq

from llmo import plans
from llmo.brain.commands import (
    AppendLines,
    Command,
    Log,
    MakeDirs,
    ReadManifest,
    ReadPlan,
    Send,
    WriteFile,
)
from llmo.brain.config import BrainConfig
from llmo.brain.core import step
from llmo.brain.events import Configure, Event, ManifestRead, PlanLoaded, Received, Resumed, Tick
from llmo.brain.journal import FSYNC_INTERVAL_S, Journal
from llmo.brain.snapshot import SnapshotPolicy
from llmo.brain.state import BrainState
from llmo.proto.client import Client
from llmo.proto.codec import decode
from llmo.proto.errors import ErrorCode, ProtocolError
from llmo.proto.messages import BRAIN, BROKER, Error, Message

log = logging.getLogger("llmo.brain")

TICK_S = 0.5
REFUSED_EXIT = 2  # another brain holds the name at the broker: not for a restart
BURST = 1000
FILE_COMMANDS = (MakeDirs, AppendLines, WriteFile)
LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


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

    # --- the loop ------------------------------------------------------------------

    def start(self) -> None:
        """Recover from the journal and connect (``run`` calls it)."""
        self.state = self.journal.recover({"broker": self.endpoint})
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
        self.feed(Configure(self.config.to_dict()))
        if resumed:
            self.feed(Resumed())
        self.flush()

    def run(self, *, install_signals: bool = False) -> int:
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop())
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
                    self.feed(Tick())
                    next_tick = self.clock() + self.tick_s
                self.client.tick()
                self.flush()
                self.journal.sync_due()
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

    def stop(self) -> None:
        self._running = False

    def close(self) -> None:
        if self.state is not None and self.journal.handle is not None:
            self.flush()
        self.journal.close()
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
            self.refused = msg
            self.stop()
            return
        self.feed(Received(msg), raw)

    def feed(self, event: Event, raw: bytes | None = None) -> None:
        """Step one event and journal it; its commands wait for ``flush``."""
        assert self.state is not None, "start() first"
        now = self.clock()
        self.state, commands = step(self.state, event, now)
        self.journal.append(now, event, raw)
        self.pending.extend(commands)

    def flush(self) -> None:
        """Commit the journal, then carry out the commands it now explains.

        The history files go first: whoever hears of an event (a batch that
        ended) then finds its events, RUN_SUMMARY and ESCALATION on disk.
        """
        while self.pending:
            self.journal.commit()
            commands, self.pending = self.pending, []
            for command in commands:
                if type(command) in FILE_COMMANDS:
                    self.execute(command)
            for command in commands:
                if type(command) not in FILE_COMMANDS:
                    self.execute(command)
        self.journal.commit()
        if self.state is not None:  # a snapshot is written by a child: the loop goes on
            self.journal.maybe_snapshot(self.state, time.monotonic())

    # --- commands ------------------------------------------------------------------

    def execute(self, command: Command) -> None:
        try:
            match command:
                case Send(msg=msg):
                    assert self.client is not None, "start() first"
                    self.client.send(msg)
                case AppendLines(path=path, lines=lines):
                    append_lines(path, lines)
                case WriteFile(path=path, text=text):
                    write_file(path, text)
                case MakeDirs(paths=paths):
                    for path in paths:
                        os.makedirs(path, exist_ok=True)
                case ReadPlan():
                    self.feed(read_plan(command, self.config.plan_roots))
                case ReadManifest():
                    self.feed(read_manifest(command, self.config.plan_roots))
                case Log(level=level, text=text):
                    log.log(LOG_LEVELS.get(level, logging.INFO), "%s", text)
        except (OSError, zmq.ZMQError) as exc:
            log.error("brain: %s failed: %s", type(command).__name__, exc)


def refuses_this_brain(msg: Message) -> bool:
    """Whether ``msg`` is the broker refusing one of this brain's messages because
    another connection holds the name ``brain`` (not the notice to the holder)."""
    return (
        isinstance(msg, Error)
        and msg.code == ErrorCode.NAME_IN_USE
        and msg.src == BROKER
        and bool(msg.reply_to)
    )


def read_plan(command: ReadPlan, roots: tuple[str, ...] = ()) -> PlanLoaded:
    """The plan file's text, read only inside its own folder and, if any, the plan roots."""
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
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def write_file(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
