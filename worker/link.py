"""The worker's link to the brain: held results, broker and brain comings and goings.

Theory of operation
-------------------
ZeroMQ reconnects a DEALER by itself (``RECONNECT_IVL`` growing to
``RECONNECT_IVL_MAX``), but whatever sat in the old connection when the
broker died is gone, and a message the broker cannot route (no brain
connected) comes back as an ``Error`` naming it in ``reply_to``. So results
(``TaskStarted``, ``TaskDone``, ``TaskFailed``) go through ``deliver`` and
are *held* until they are known to have arrived:

- a final result (``TaskDone``, ``TaskFailed``) is released only by the
  brain's ``Ack`` naming it (any copy of it), which the brain sends once its
  journal holds what the result changed. Until then it is sent again every
  ``confirm_s``, doubling up to ``RESEND_MAX_S``: a brain that read it and
  died before journaling it gets it again from its successor's first
  minutes, and a copy that arrives twice is acknowledged and ignored;
- a ``TaskStarted`` (which only informs) is released once ``confirm_s``
  passed with no error for it and no disconnect since it was sent;
- an ``unknown_destination`` / ``destination_busy`` error marks a message
  undelivered, and the brain as missing (logged once per outage);
- nothing is held longer than ``hold_s``.

Two events make the worker send its ``Register`` again and then every held
result, in the order they were first sent ("restore"):

- the broker is back: the socket monitor reports a completed handshake
  after a disconnect;
- the brain is back: a message from it arrived (an ``Ack``, an assignment),
  or a heartbeat sent while it was missing drew no error within ``probe_s``.
  The second is a guess (a refusal may come late from a busy broker): the
  outage is logged once, and only a message from the brain ends it for the
  log.

While the broker is away results are held without being sent (ZeroMQ would
queue them and deliver them twice), and the caller skips heartbeats and
progress. The brain ignores a result for an attempt it no longer wants, so a
result that arrives twice does no harm.

A heartbeat that reaches a restarted brain before the held results must not
tell it that the attempt is gone: the worker lists every attempt whose result
is held and not on its way (``unsettled``: bounced, never sent, sent on a
dropped connection, or sent and not acknowledged within ``confirm_s``) as
active, so the brain keeps the attempt until its result arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from llmo.proto.errors import ErrorCode
from llmo.proto.messages import Ack, Error, Message, TaskDone, TaskFailed

log = logging.getLogger("llmo.worker.link")

UNDELIVERABLE = frozenset({ErrorCode.UNKNOWN_DESTINATION, ErrorCode.DESTINATION_BUSY})
ACKED = (TaskDone, TaskFailed)  # released only by the brain's Ack
RESEND_MAX_S = 15.0  # longest wait between two copies of an unacknowledged result


@dataclass(slots=True, eq=False)
class Held:
    msg: Message  # as first built, before stamping
    first_sent: float
    sent_at: float = 0.0
    sent_id: str = ""
    epoch: int = -1  # the link epoch it was last sent in; -1 = never sent
    undelivered: bool = True
    copies: int = 0  # sent how many times
    ids: list[str] = field(default_factory=list)  # the id of every copy sent

    @property
    def needs_ack(self) -> bool:
        return isinstance(self.msg, ACKED)


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
        self._outage_said = False  # logged, and no message from the brain since

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def awaiting_ack(self) -> int:
        """Final results not yet acknowledged by the brain."""
        return sum(1 for entry in self._held if entry.needs_ack)

    def unsettled(self) -> tuple[str, ...]:
        """Attempts whose result is held and not on its way: bounced, never sent, or
        sent on a connection that has since dropped. A heartbeat lists them as
        active, so that it never tells the brain an attempt is gone while its
        result is still to come."""
        found = dict.fromkeys(
            attempt_id
            for entry in self._held
            if (entry.undelivered or entry.epoch != self.epoch or entry.copies > 1)
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
        entry.sent_id = sent.id
        entry.sent_at = now
        entry.epoch = self.epoch
        entry.undelivered = False
        entry.copies += 1
        entry.ids.append(sent.id)
        self._by_id[sent.id] = entry

    def _release(self, entry: Held) -> None:
        for sent_id in entry.ids:
            self._by_id.pop(sent_id, None)

    def _resend_due(self, entry: Held, now: float) -> bool:
        longest = max(RESEND_MAX_S, self.confirm_s)
        wait = min(self.confirm_s * 2 ** max(entry.copies - 1, 0), longest)
        return now - entry.sent_at >= wait

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
        entry = self._by_id.get(err.reply_to)
        if entry is not None and err.reply_to == entry.sent_id:
            entry.undelivered = True  # the latest copy bounced (an older one says nothing new)
        if self._probe is not None and err.reply_to == self._probe[0]:
            self._probe_failed = True
        if not self.brain_missing:
            self.brain_missing = True
            if not self._outage_said:
                self._outage_said = True
                log.warning(
                    "the brain is not reachable (%s: %s); holding results until it is back",
                    err.code,
                    err.detail,
                )
        return True

    def heard_brain(self, now: float) -> None:
        """A message from the brain arrived: it is there, whatever a probe guessed."""
        self._outage_said = False
        if self.brain_missing and self.connected:
            self.brain_missing = False
            self._probe = None
            log.info("the brain is back; registering again")
            self.restore(now)

    def on_ack(self, ack: Ack) -> None:
        entry = self._by_id.get(ack.reply_to)
        if entry is not None and entry in self._held:
            self._held.remove(entry)
            self._release(entry)

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
        sendable = self.connected and not self.brain_missing
        for entry in self._held:
            on_its_way = not entry.undelivered and entry.epoch == self.epoch
            if now - entry.first_sent > self.hold_s:
                log.warning("dropping a result held for over %.0fs: %s", self.hold_s, entry.msg)
            elif entry.needs_ack:
                if on_its_way and sendable and self._resend_due(entry, now):
                    if entry.copies == 1:
                        log.info("no acknowledgement yet for %s; sending it again", entry.msg)
                    self._transmit(entry, now)
                keep.append(entry)
                continue
            elif on_its_way and now - entry.sent_at >= self.confirm_s:
                pass  # delivered: no error and no disconnect since it went out
            else:
                keep.append(entry)
                continue
            self._release(entry)
        self._held = keep

    def restore(self, now: float) -> None:
        """Register again, then send every held result again, oldest first."""
        self.restores += 1
        self._send(self._register())
        for entry in self._held:
            self._transmit(entry, now)
