"""The worker's link to the brain: held results, broker and brain comings and goings.

Theory of operation
-------------------
ZeroMQ reconnects a DEALER by itself (``RECONNECT_IVL`` growing to
``RECONNECT_IVL_MAX``), but whatever sat in the old connection when the
broker died is gone, and a message the broker cannot route (no brain
connected) comes back as an ``Error`` naming it in ``reply_to``. So results
(``TaskStarted``, ``TaskDone``, ``TaskFailed``) go through ``deliver`` and
are *held* until they are known to have arrived:

- an ``Ack`` whose ``reply_to`` names the message releases it at once;
- otherwise it is released once ``confirm_s`` passed with no error for it
  and no disconnect since it was sent;
- an ``unknown_destination`` / ``destination_busy`` error marks it
  undelivered, and the brain as missing (logged once per outage);
- nothing is held longer than ``hold_s``.

Two events make the worker send its ``Register`` again and then every held
result, in the order they were first sent ("restore"):

- the broker is back: the socket monitor reports a completed handshake
  after a disconnect;
- the brain is back: a heartbeat sent while the brain was missing drew no
  error within ``probe_s``.

While the broker is away results are held without being sent (ZeroMQ would
queue them and deliver them twice), and the caller skips heartbeats and
progress. The brain ignores a result for an attempt it no longer wants, so a
result that arrives twice does no harm.

A heartbeat that reaches a restarted brain before the held results must not
tell it that the attempt is gone: the worker lists every attempt whose result
is held and not on its way (``unsettled``) as active, so the brain keeps the
attempt until its result arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from llmo.proto.errors import ErrorCode
from llmo.proto.messages import Ack, Error, Message

log = logging.getLogger("llmo.worker.link")

UNDELIVERABLE = frozenset({ErrorCode.UNKNOWN_DESTINATION, ErrorCode.DESTINATION_BUSY})


@dataclass(slots=True, eq=False)
class Held:
    msg: Message  # as first built, before stamping
    first_sent: float
    sent_at: float = 0.0
    sent_id: str = ""
    epoch: int = -1  # the link epoch it was last sent in; -1 = never sent
    undelivered: bool = True


class Link:
    def __init__(
        self,
        send: Callable[[Message], Message],
        register: Callable[[], Message],
        *,
        confirm_s: float = 2.0,
        hold_s: float = 3600.0,
        probe_s: float = 0.5,
    ) -> None:
        self._send = send
        self._register = register
        self.confirm_s = confirm_s
        self.hold_s = hold_s
        self.probe_s = probe_s
        self.connected = True  # until the monitor says otherwise
        self.brain_missing = False
        self.epoch = 0
        self.restores = 0
        self._held: list[Held] = []
        self._by_id: dict[str, Held] = {}
        self._probe: tuple[str, float] | None = None
        self._probe_failed = False

    @property
    def held(self) -> int:
        return len(self._held)

    def unsettled(self) -> tuple[str, ...]:
        """Attempts whose result is held and not on its way: bounced, never sent, or
        sent on a connection that has since dropped. A heartbeat lists them as
        active, so that it never tells the brain an attempt is gone while its
        result is still to come."""
        found = dict.fromkeys(
            attempt_id
            for entry in self._held
            if (entry.undelivered or entry.epoch != self.epoch)
            and (attempt_id := getattr(entry.msg, "attempt_id", ""))
        )
        return tuple(found)

    # --- outbound --------------------------------------------------------------------

    def deliver(self, msg: Message, now: float) -> None:
        entry = Held(msg=msg, first_sent=now)
        self._held.append(entry)
        if self.connected and not self.brain_missing:
            self._transmit(entry, now)

    def _transmit(self, entry: Held, now: float) -> None:
        sent = self._send(entry.msg)
        self._by_id.pop(entry.sent_id, None)
        entry.sent_id = sent.id
        entry.sent_at = now
        entry.epoch = self.epoch
        entry.undelivered = False
        self._by_id[sent.id] = entry

    def probe(self, sent_id: str, now: float) -> None:
        """A heartbeat went to the brain; while it is missing this tests its return."""
        if self.brain_missing and self._probe is None:
            self._probe = (sent_id, now)
            self._probe_failed = False

    # --- inbound -----------------------------------------------------------------------

    def on_error(self, err: Error, now: float) -> bool:
        """True if the error was about delivery to the brain (and is handled here)."""
        if err.code not in UNDELIVERABLE:
            return False
        entry = self._by_id.pop(err.reply_to, None)
        if entry is not None:
            entry.undelivered = True
        if self._probe is not None and err.reply_to == self._probe[0]:
            self._probe_failed = True
        if not self.brain_missing:
            self.brain_missing = True
            log.warning(
                "the brain is not reachable (%s: %s); holding results until it is back",
                err.code,
                err.detail,
            )
        return True

    def on_ack(self, ack: Ack) -> None:
        entry = self._by_id.pop(ack.reply_to, None)
        if entry is not None and entry in self._held:
            self._held.remove(entry)

    def on_disconnected(self) -> None:
        if self.connected:
            log.warning("lost the broker; running attempts continue, results are held")
        self.connected = False
        self.epoch += 1

    def on_connected(self, now: float) -> None:
        if self.connected:
            return
        self.connected = True
        log.info("broker connection is back; registering again")
        self.restore(now)

    # --- time -----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if self._probe is not None and now - self._probe[1] >= self.probe_s:
            failed, self._probe = self._probe_failed, None
            if not failed and self.connected and self.brain_missing:
                self.brain_missing = False
                log.info("the brain is reachable again; registering again")
                self.restore(now)
        keep = []
        for entry in self._held:
            if now - entry.first_sent > self.hold_s:
                log.warning("dropping a result held for over %.0fs: %s", self.hold_s, entry.msg)
            elif (
                not entry.undelivered
                and entry.epoch == self.epoch
                and now - entry.sent_at >= self.confirm_s
            ):
                pass  # delivered: no error and no disconnect since it went out
            else:
                keep.append(entry)
                continue
            self._by_id.pop(entry.sent_id, None)
        self._held = keep

    def restore(self, now: float) -> None:
        """Register again, then send every held result again, oldest first."""
        self.restores += 1
        self._send(self._register())
        for entry in self._held:
            self._transmit(entry, now)
