"""The client helper every actor and tool uses to talk through the broker.

A ``Client`` is a DEALER socket speaking as one actor name. The broker gives
the connection its routing identity and learns the name from the first
message (``broker.routes``); the name must be one the connection may hold.
With CurveZMQ keys that is the key's name (the brain and each worker
connect with their own key), or for a tool ``NAME@KEY``: a client whose name
is not its key's name speaks as ``name@key`` (``submit-3f9a…@pi``), so that
many tools can share the Pi's key. ``send`` stamps the envelope (source,
a fresh message id, send time); ``recv`` returns the next valid message or
``None`` on timeout and never raises for bad input (it logs and counts it);
``request`` sends and waits for the reply whose ``reply_to`` names the request.
``tick`` sends a heartbeat when one is due, so the broker keeps the actor
alive; ``heartbeat_due_in`` tells a poll loop how long it may sleep.
Time comes from two clocks given to the client: ``clock`` (wall time, for the
envelope's ``ts`` and the heartbeat schedule) and ``monotonic`` (for the
deadlines of ``recv`` and ``request``).
With ``keys`` (or the process's keys, ``proto.security.use_keys``) the
socket speaks CurveZMQ to the broker.

A connection that carries nothing for ``DEAD_AFTER_S`` (ZeroMQ pings it
every heartbeat interval, and the broker's side answers even when its loop is
busy) is dead: it is closed and dialled again, and the broker is told (the
ping's TTL) to drop its side too. Without this, a connection stuck in a
network partition waits out TCP's retransmission back-off after the link is
back (seen: 20-50 s after a 60 s partition); and a dial that hangs is given
up after ``DIAL_S`` and tried afresh.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from llmo.proto.codec import decode, encode
from llmo.proto.errors import ProtocolError
from llmo.proto.messages import BROKER, Heartbeat, Message
from llmo.proto.security import ClientKeys, secure_client

log = logging.getLogger("llmo.client")

SNDHWM = 100_000
RCVHWM = 100_000
DEAD_AFTER_S = 15.0  # no traffic at all on a connection for this long: closed and dialled again
DIAL_S = 3.0  # a TCP connect that has not completed by then is tried afresh


class Client:
    def __init__(
        self,
        name: str,
        endpoint: str,
        *,
        context: zmq.Context[Any] | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat: Callable[[], Message] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        keys: ClientKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, SNDHWM)
        self.socket.setsockopt(zmq.RCVHWM, RCVHWM)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 100)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self.socket.setsockopt(zmq.HEARTBEAT_IVL, max(100, int(heartbeat_interval * 1000)))
        self.socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(DEAD_AFTER_S * 1000))
        self.socket.setsockopt(zmq.HEARTBEAT_TTL, int(DEAD_AFTER_S * 1000))
        self.socket.setsockopt(zmq.CONNECT_TIMEOUT, int(DIAL_S * 1000))
        self.keys = secure_client(self.socket, keys)
        self.name = name_for_key(name, self.keys)
        self.socket.connect(endpoint)
        self.heartbeat_interval = heartbeat_interval
        self._heartbeat = heartbeat or (lambda: Heartbeat(dst=BROKER))
        self._clock = clock
        self._monotonic = monotonic
        self._next_heartbeat = 0.0
        self._id_prefix = f"{uuid.uuid4().hex[:8]}-"
        self._ids = itertools.count(1)
        self._pending: collections.deque[Message] = collections.deque()
        self.malformed = 0

    # --- sending -------------------------------------------------------------

    def stamp(self, msg: Message) -> Message:
        return dataclasses.replace(
            msg, src=self.name, id=f"{self._id_prefix}{next(self._ids)}", ts=self._clock()
        )

    def send(self, msg: Message) -> Message:
        """Stamp and send; returns the message as sent (with its id)."""
        stamped = self.stamp(msg)
        self.socket.send(encode(stamped))
        return stamped

    # --- receiving -------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next valid message, or None once ``timeout`` seconds have passed."""
        if self._pending:
            return self._pending.popleft()
        deadline = None if timeout is None else self._monotonic() + timeout
        while True:
            if deadline is not None:
                left_ms = max(0, math.ceil((deadline - self._monotonic()) * 1000))
                if not self.socket.poll(left_ms):
                    return None
            try:
                return decode(self.socket.recv())
            except ProtocolError as exc:
                self.malformed += 1
                log.warning("%s: dropped a malformed message: %s", self.name, exc)

    def request(self, msg: Message, timeout: float) -> Message | None:
        """Send ``msg`` and wait for the message whose ``reply_to`` is its id.

        Other messages that arrive meanwhile are kept for later ``recv`` calls.
        Returns None on timeout.
        """
        sent = self.send(msg)
        deadline = self._monotonic() + timeout
        held: list[Message] = []
        try:
            while (left := deadline - self._monotonic()) > 0:
                reply = self._recv_fresh(left)
                if reply is None:
                    break
                if getattr(reply, "reply_to", None) == sent.id:
                    return reply
                held.append(reply)
            return None
        finally:
            self._pending.extend(held)

    def _recv_fresh(self, timeout: float) -> Message | None:
        pending, self._pending = self._pending, collections.deque()
        try:
            return self.recv(timeout)
        finally:
            self._pending = pending

    # --- heartbeats -----------------------------------------------------------

    def heartbeat_due_in(self) -> float:
        return max(0.0, self._next_heartbeat - self._clock())

    def tick(self) -> bool:
        """Send a heartbeat if one is due; True if one was sent."""
        now = self._clock()
        if now < self._next_heartbeat:
            return False
        self._next_heartbeat = now + self.heartbeat_interval
        self.send(self._heartbeat())
        return True

    def close(self) -> None:
        self.socket.close(linger=0)


def name_for_key(name: str, keys: ClientKeys | None) -> str:
    """The name a client speaks as: ``name``, qualified by its key's name when it differs."""
    if keys is None or name == keys.name or name.endswith(f"@{keys.name}"):
        return name
    return f"{name}@{keys.name}"


def tool_name(kind: str) -> str:
    """A unique actor name for a short-lived tool, e.g. ``submit-3f9a1c2b``."""
    return f"{kind}-{uuid.uuid4().hex[:8]}-{os.getpid()}"
