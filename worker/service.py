"""The worker's loop: one thread polls the broker socket, the attempts' pidfds,
the socket monitor and the inbox, then runs the timers.

Theory of operation
-------------------
Everything that changes the worker's state happens on the loop's thread.
Other threads (model loads, the HTTP endpoint, signal handlers) only post to
the ``Inbox`` or update token meters. Each pass: poll (until the next timer),
handle what is readable, run the timers, check whether to exit.

Timers: a heartbeat every ``heartbeat_s`` (telemetry is read and the limits
stepped at the same moment); ``TaskProgress`` at most every ``progress_s``
per attempt with new tokens; memory sampling of running attempts every
``sample_s``; the attempts' abort/kill/timeout timers and the link's
held-result timers on every pass.

State reported to the brain, most important first: ``draining``,
``constrained`` (limits not OK), ``loading``, ``hot``, ``cold``.

Stopping: ``WorkerDrain`` (and SIGTERM, which drains with a deadline of
``stop_deadline_s``) takes no new work; what finishes meanwhile is reported
as usual. At the deadline what still runs is aborted (SIGTERM to its group,
SIGKILL ``stop_grace_s`` later) and reported ``interrupted``: the brain runs
it again without spending an attempt or counting it against the task. A
second stop aborts at once. A stopping worker exits once nothing runs and
the brain has acknowledged its last results (or ``FLUSH_S`` has passed).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from llmo.proto.client import Client
from llmo.proto.messages import (
    BRAIN,
    Ack,
    Acks,
    Error,
    Heartbeat,
    Message,
    ModelLoad,
    ModelStatus,
    ModelUnload,
    Register,
    TaskAssign,
    TaskAssigns,
    TaskCancel,
    WorkerDrain,
)
from llmo.proto.states import WorkerState
from llmo.worker import taskuser
from llmo.worker.admission import GPU_CLASSES
from llmo.worker.api import ApiServer
from llmo.worker.attempts import Attempts
from llmo.worker.cache import open_cache
from llmo.worker.config import WorkerConfig
from llmo.worker.inbox import Inbox
from llmo.worker.leftovers import GroupLedger, default_path
from llmo.worker.limits import Level, Limits
from llmo.worker.link import Link
from llmo.worker.llm import Runtime, RuntimeEvent
from llmo.worker.meter import Meter, Meters, Rate
from llmo.worker.shell import session_rss
from llmo.worker.telemetry import SystemTelemetry

log = logging.getLogger("llmo.worker")

BUSY_POLL_S = 0.1  # longest sleep while attempts run or results are held
FLUSH_S = 3.0  # how long a stopping worker waits for its last results' acknowledgements
_STOP = object()
MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


def _version() -> str:
    try:
        return importlib.metadata.version("llm-orchestration")
    except importlib.metadata.PackageNotFoundError:
        return ""


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        endpoint: str,
        *,
        telemetry: Any = None,
        context: zmq.Context | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.task_user:  # before any socket: a worker that cannot switch does not start
            taskuser.resolve(config.task_user)
        self.config = config
        self.clock = clock
        self.telemetry = telemetry if telemetry is not None else SystemTelemetry(config.gpus)
        self.vram_total_mb = self.telemetry.vram_total_mb()
        self.budget_mb = config.budget(self.vram_total_mb)
        self.inbox = Inbox()
        self.cache = open_cache(config)
        digest = self.cache.model_hash if self.cache is not None else None
        self.runtime = Runtime(post=self.inbox.put, clock=clock, digest=digest)
        self.meters = Meters()
        self.api = ApiServer(self.runtime, self.meters, cache=self.cache).start()
        self._requests_seen = 0  # the endpoint's request count at the last heartbeat
        self.client = Client(config.name, endpoint, context=context, monotonic=clock)
        self.monitor = self.client.socket.get_monitor_socket(MONITOR_EVENTS)
        self.link = Link(
            self.client.send,
            self._register,
            confirm_s=config.confirm_s,
            hold_s=config.hold_s,
            probe_s=min(0.5, config.heartbeat_s / 2),
        )
        self.limits = Limits(config.limits)
        self.poller = zmq.Poller()
        self.poller.register(self.client.socket, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.poller.register(self.inbox.fileno(), zmq.POLLIN)
        self.attempts = Attempts(
            config,
            self.runtime,
            self.meters,
            deliver=lambda msg: self.link.deliver(msg, self.clock()),
            send=self._send,
            api_env=self._api_env,
            budget_mb=self.budget_mb,
            watch=lambda fd: self.poller.register(fd, zmq.POLLIN),
            unwatch=self.poller.unregister,
            clock=clock,
        )
        self.attempts.ledger = GroupLedger(
            os.environ.get("LLMO_WORKER_LEDGER") or default_path(config.name, endpoint)
        )
        self.attempts.ledger.reap_previous()
        self.handlers: dict[type[Message], Callable[[Any], None]] = {
            TaskAssign: self.attempts_assign,
            TaskAssigns: self.on_assigns,
            TaskCancel: self.attempts.cancel,
            ModelLoad: self.on_model_load,
            ModelUnload: self.on_model_unload,
            WorkerDrain: self.on_drain,
            Error: self.on_error,
            Ack: self.link.on_ack,
            Acks: self.on_acks,
        }
        self.rate = Rate()
        self.tok_s = 0.0
        self.draining = False
        self.drain_deadline: float | None = None
        self.stopping = False
        self.exit_code = 0
        self._aborted_all = False
        self._idle_since = clock()
        self._flush_until: float | None = None
        self._next_heartbeat = 0.0
        self._next_progress = 0.0
        self._next_sample = 0.0
        self._running = True
        self._constraint = ""
        log.info(
            "worker %s (%s) on GPUs %s: %d slots, VRAM budget %d MB, endpoint %s",
            config.name,
            config.role,
            ",".join(map(str, config.gpus)) or "none",
            config.slots,
            self.budget_mb,
            self.api.base_url,
        )

    # --- messages out -----------------------------------------------------------------

    def _register(self) -> Register:
        c = self.config
        return Register(
            dst=BRAIN,
            role=c.role,
            gpus=c.gpus,
            vram_total_mb=self.vram_total_mb,
            vram_budget_mb=self.budget_mb,
            slots=c.slots,
            models=c.model_names(),
            host=socket.gethostname(),
            pid=os.getpid(),
            version=_version(),
            endpoint=self.api.base_url,
        )

    def state(self) -> WorkerState:
        if self.draining:
            return "draining"
        if self.limits.level is not Level.OK:
            return "constrained"
        return self.runtime.state

    def _llm_requests(self) -> int:
        """Requests in flight on the endpoint, or received since the last heartbeat."""
        received = self.api.requests - self._requests_seen
        self._requests_seen = self.api.requests
        return max(self.runtime.in_flight, received)

    def _heartbeat(self, telemetry: Any) -> Heartbeat:
        c = self.config
        active, held = listed(self.attempts.active(), self.link.unsettled())
        return Heartbeat(
            dst=BRAIN,
            role=c.role,
            state=self.state(),
            model=self.runtime.model,
            slots_total=c.slots,
            slots_free=max(0, c.slots - self.attempts.slots_used),
            vram_budget_mb=self.budget_mb,
            vram_used_mb=self.attempts.vram_used,
            active=active,
            held=held,
            tok_s=self.tok_s,
            interval_s=c.heartbeat_s,
            telemetry=telemetry,
            constraint=self._constraint,
            llm_slots=self.runtime.slots,
            llm_requests=self._llm_requests(),
        )

    def _send(self, msg: Message) -> object:
        """Fire and forget (progress, model status); dropped while the broker is away."""
        if self.link.connected:
            return self.client.send(msg)
        return None

    def _api_env(self, meter: Meter) -> dict[str, str]:
        if self.runtime.state != "hot":
            return {}
        prefix = "BRAIN" if self.config.role == "brain" else "LLM"
        return {
            f"{prefix}_API_BASE": self.api.base_url,
            f"{prefix}_MODEL": self.runtime.model,
            f"{prefix}_API_KEY": meter.key,
            # The original system's names for the same endpoint, which its scripts read.
            "WORKER_API_BASE": self.api.base_url,
            "WORKER_MODEL": self.runtime.model,
            # The names OpenAI client libraries read, so their calls are counted too.
            "OPENAI_BASE_URL": self.api.base_url,
            "OPENAI_API_KEY": meter.key,
        }

    # --- messages in ----------------------------------------------------------------------

    def attempts_assign(self, msg: TaskAssign) -> None:
        self.attempts.assign(msg, self.limits.level, self.draining, self._constraint)

    def on_assigns(self, msg: TaskAssigns) -> None:
        for ack in msg.unpacked_acks():
            self.link.on_ack(ack)
        for assign in msg.unpacked():
            self.attempts_assign(assign)

    def on_acks(self, msg: Acks) -> None:
        for ack in msg.unpacked():
            self.link.on_ack(ack)

    def on_model_load(self, msg: ModelLoad) -> None:
        spec = self.config.spec_for(msg.model, msg)
        error = spec if isinstance(spec, str) else ""
        if self.draining:
            error = f"{self.config.name} is draining: no model loads"
        elif self.limits.level is not Level.OK:
            error = f"{self.config.name} is {self._constraint}: no model loads now"
        if error or isinstance(spec, str):
            log.warning("model load refused: %s", error)
            self._send(ModelStatus(dst=BRAIN, model=msg.model, state="failed", error=error))
            return
        self.attempts.load(spec)

    def on_model_unload(self, msg: ModelUnload) -> None:
        log.info("unloading the model: %s", msg.reason or "asked by the brain")
        self.attempts.unload()

    def on_drain(self, msg: WorkerDrain) -> None:
        if msg.drain:
            self.draining = True
            if msg.deadline_s is not None:
                self.drain_deadline = self.clock() + msg.deadline_s
            log.info("draining%s", f" (deadline {msg.deadline_s:.0f}s)" if msg.deadline_s else "")
        elif not self.stopping:
            self.draining = False
            self.drain_deadline = None
            self._aborted_all = False
            log.info("back in service")
        self._heartbeat_now()

    def on_error(self, msg: Error) -> None:
        if not self.link.on_error(msg, self.clock()):
            log.warning("error from %s: %s: %s", msg.src, msg.code, msg.detail)

    def on_runtime(self, event: RuntimeEvent) -> None:
        status = ModelStatus(
            dst=BRAIN, model=event.model, state=event.state, error=event.error, load_s=event.load_s
        )
        self._send(status)
        self._heartbeat_now()

    # --- the loop ----------------------------------------------------------------------------

    def run(self, *, install_signals: bool = False) -> int:
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.inbox.put(_STOP))
        self.client.send(self._register())
        try:
            while self._running:
                for item, _ in self.poller.poll(self._poll_ms()):
                    self._readable(item)
                self._timers(self.clock())
        finally:
            self._close()
        return self.exit_code

    def stop(self) -> None:
        """Drain with the configured deadline, then exit (thread-safe)."""
        self.inbox.put(_STOP)

    def _poll_ms(self) -> int:
        now = self.clock()
        wait = self._next_heartbeat - now
        if self.attempts.running or self.link.held or self.stopping or self.draining:
            wait = min(wait, BUSY_POLL_S)
            due = self.attempts.next_due()
            wait = wait if due is None else min(wait, due - now)
        return max(0, int(wait * 1000) + 1)

    def _readable(self, item: Any) -> None:
        if item is self.client.socket:
            while (msg := self.client.recv(timeout=0)) is not None:
                if msg.src == BRAIN:
                    self.link.heard_brain(self.clock())
                handler = self.handlers.get(type(msg))
                if handler is None:
                    log.debug("ignored %s from %s", msg.TYPE.value, msg.src)
                else:
                    handler(msg)
        elif item is self.monitor:
            while self.monitor.poll(0):
                event = recv_monitor_message(self.monitor)["event"]
                if event == zmq.EVENT_DISCONNECTED:
                    self.link.on_disconnected()
                elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.link.on_connected(self.clock())
        elif item == self.inbox.fileno():
            for event in self.inbox.drain():
                if event is _STOP:
                    self._begin_stop()
                elif isinstance(event, RuntimeEvent):
                    self.on_runtime(event)
        else:
            self.attempts.on_fd(item)

    def _timers(self, now: float) -> None:
        attempts = self.attempts
        attempts.tick(now)
        self.link.tick(now)
        if now >= self._next_heartbeat:
            self._beat(now)
        if attempts.running and now >= self._next_progress:
            self._next_progress = now + self.config.progress_s
            if self.link.connected:
                attempts.progress(now)
        if attempts.running and now >= self._next_sample:
            self._next_sample = now + self.config.sample_s
            attempts.note_rss(session_rss(attempts.sessions()))
            attempts.check_exits()  # a backstop for exits a pidfd did not report
        if self.drain_deadline is not None and now >= self.drain_deadline:
            self._abort_all("the drain deadline passed")
        self._check_exit(now)

    def _beat(self, now: float) -> None:
        self._next_heartbeat = now + self.config.heartbeat_s
        telemetry = self.telemetry.read()
        before = self.limits.level
        level = self.limits.update(telemetry, now)
        self._constraint = self.limits.describe()
        if level is not before:
            if level is Level.OK:
                log.info("resource limits clear again; taking GPU work")
            else:
                log.warning("%s (back-off %.0fs)", self._constraint, self.limits.until - now)
            if level is Level.CRITICAL:
                count = self.attempts.stop_all(
                    self._constraint, classes=GPU_CLASSES, grace_s=self.config.stop_grace_s
                )
                log.error("critical: stopped %d GPU attempts", count)
        self.tok_s = self.rate.sample(now, self.runtime.total_tokens)
        if self.link.connected:
            sent = self.client.send(self._heartbeat(telemetry))
            self.link.probe(sent.id, now)

    def _heartbeat_now(self) -> None:
        self._next_heartbeat = self.clock()

    def _begin_stop(self) -> None:
        if self.stopping:  # asked twice: do not wait for the deadline
            self._abort_all("asked to stop again")
            return
        self.stopping = True
        self.draining = True
        deadline = self.config.stop_deadline_s
        if self.drain_deadline is None or self.drain_deadline > self.clock() + deadline:
            self.drain_deadline = self.clock() + deadline
        log.info(
            "stopping: %d attempts running, %.0fs to finish", len(self.attempts.running), deadline
        )
        self._heartbeat_now()

    def _abort_all(self, why: str) -> None:
        if self._aborted_all:
            return
        self._aborted_all = True
        count = self.attempts.stop_all(why, grace_s=self.config.stop_grace_s, interrupt=True)
        if count:
            log.warning("%s: aborting %d attempts", why, count)

    def _check_exit(self, now: float) -> None:
        busy = bool(self.attempts.running) or self.runtime.state == "loading"
        if busy:
            self._idle_since = now
            self._flush_until = None
            return
        idle_limit = self.config.exit_when_idle_s
        if not self.stopping and idle_limit is not None and now - self._idle_since >= idle_limit:
            log.info("idle for %.0fs: exiting", idle_limit)
            self.stopping = True
        if not self.stopping:
            return
        if self._flush_until is None:
            self._flush_until = now + FLUSH_S
        if now >= self._flush_until or (self.link.awaiting_ack == 0 and self.link.connected):
            if self.link.awaiting_ack:
                log.warning(
                    "stopping with %d results the brain has not acknowledged; their tasks "
                    "run again when the brain judges the attempts lost",
                    self.link.awaiting_ack,
                )
            self._running = False

    def _close(self) -> None:
        ledger = self.attempts.ledger
        for attempt in list(self.attempts.running.values()):
            attempt.shell.kill()  # no orphans, even when the loop dies
            self.attempts.sweep(attempt, 0.0)
            attempt.shell.reap()
            if ledger is not None:
                ledger.remove(attempt.shell.pid)
        self.attempts.strays.finish()
        self.attempts.rulesets.close()
        if ledger is not None:
            ledger.discard()
        self.runtime.shutdown()
        self.api.stop()
        if self.cache is not None:
            self.cache.close()
        close = getattr(self.telemetry, "close", None)
        if close is not None:
            close()
        self.client.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.client.socket.close(linger=1000)
        self.inbox.close()
        log.info("worker %s stopped", self.config.name)


def listed(
    running: tuple[str, ...], unsettled: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A heartbeat's ``active`` (the attempts running, then those whose result is
    held) and ``held`` (those of them that no longer run)."""
    ended = tuple(a for a in unsettled if a not in running)
    return (*running, *ended), ended
