"""The broker's PUB side: an XPUB socket that admits subscriptions within limits.

Theory of operation
-------------------
A subscription is a message a subscriber sends *to* the publishing socket,
and libzmq keeps every one in a tree with a node per byte: left alone, a few
100 KB topics cost hundreds of megabytes and one of 50 MB stalls the loop
for long enough that every peer is declared down. So the broker publishes on
an XPUB socket in manual mode (``XPUB_MANUAL``): libzmq hands each
subscribe/unsubscribe frame to the broker and filters by only the
subscriptions the broker applies. Publishing is the same ``send`` as on a
PUB; the only cost on the hot path is ``drain`` every ``DRAIN_EVERY_S``.

Limits, per connection (told apart by the file descriptor libzmq reports
for each frame, with the socket's inode so a reused descriptor starts a new
count):

- ``MAXMSGSIZE`` = ``MAX_SUBSCRIPTION_FRAME``: libzmq closes a connection
  that sends a bigger frame before buffering it, as on the ROUTER.
- A topic longer than ``MAX_TOPIC_BYTES`` is ignored: never applied, so the
  subscriber gets nothing for it (``pub_topic_too_long``).
- Past ``MAX_SUBSCRIPTIONS`` topics, further subscriptions are ignored
  (``pub_too_many_subscriptions``); the first ones keep working.
- A connection whose ignored subscriptions reach ``MAX_SUBSCRIPTIONS`` is
  flooding (libzmq stores what it receives even when the broker does not
  apply it): it is cut (``pub_connection_cut``) by shutting its TCP
  connection down, which makes libzmq drop it and free what it held. A SUB
  reconnects and resends; it is cut again, at the cost of one log line a
  minute.

Each refusal is counted in the broker's ``refused`` counter and logged at
most once a minute per kind and peer address (``broker.auth.Quiet``).
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from llmo.broker.auth import Quiet

log = logging.getLogger("llmo.broker")

# Topics are "<type>/<source>/" (proto.pubsub.topic): a type of ~20 bytes and an
# actor name of at most 64; 256 leaves room for any prefix a monitor may use.
MAX_TOPIC_BYTES = 256
# Frames up to this reach the broker and are refused by it (counted, logged);
# bigger ones make libzmq drop the connection.
MAX_SUBSCRIPTION_FRAME = 1024
MAX_SUBSCRIPTIONS = 128  # live topics per connection; a monitor needs a handful
DRAIN_EVERY_S = 0.01  # how often a busy loop reads subscriptions
DRAIN_BATCH = 512  # frames read per drain, so a flood cannot hold up routing
_SUBSCRIBE = 1
_UNSUBSCRIBE = 0


@dataclass(slots=True)
class _Connection:
    inode: int
    topics: set[bytes] = field(default_factory=set)
    ignored: int = 0
    cut: bool = False


class SubscriptionGate:
    """The XPUB socket and the subscriptions it has admitted, per connection."""

    def __init__(
        self,
        context: zmq.Context,
        refused: collections.Counter[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket = context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.XPUB_MANUAL, 1)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_FRAME)
        self._refused = refused
        self._quiet = Quiet(clock)
        self._connections: dict[int, _Connection] = {}

    @property
    def subscriptions(self) -> int:
        """Topics applied, over all connections."""
        return sum(len(c.topics) for c in list(self._connections.values()))

    def drain(self) -> int:
        """Read and decide the subscription frames waiting; returns how many."""
        sock = self.socket
        for n in range(DRAIN_BATCH):
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return n
            self._decide(frame)
        return DRAIN_BATCH

    def _decide(self, frame: zmq.Frame) -> None:
        data = frame.bytes
        try:
            fd = int(frame.get(zmq.SRCFD))
        except zmq.ZMQError:
            fd = -1
        if fd < 0:
            # libzmq's own unsubscriptions for a connection that closed: it has
            # already dropped that connection's topics.
            return
        kind, topic = (data[0], data[1:]) if data else (-1, b"")
        if kind not in (_SUBSCRIBE, _UNSUBSCRIBE) or frame.more:
            self._refuse(frame, "pub_bad_frame", "a frame that is not a (un)subscription")
            return
        conn = self._connection(fd)
        if conn is None:
            return  # the connection closed while its frames were queued
        if kind == _UNSUBSCRIBE:
            if topic in conn.topics:
                conn.topics.discard(topic)
                self.socket.setsockopt(zmq.UNSUBSCRIBE, topic)
            return
        if topic in conn.topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, topic)  # harmless; keeps libzmq's count
            return
        if len(topic) > MAX_TOPIC_BYTES:
            self._ignore(
                frame,
                conn,
                fd,
                "pub_topic_too_long",
                f"a {len(topic)}-byte topic {_shown(topic)} (at most {MAX_TOPIC_BYTES} bytes)",
            )
            return
        if len(conn.topics) >= MAX_SUBSCRIPTIONS:
            self._ignore(
                frame,
                conn,
                fd,
                "pub_too_many_subscriptions",
                f"topic {_shown(topic)} beyond {MAX_SUBSCRIPTIONS} subscriptions on one connection",
            )
            return
        conn.topics.add(topic)
        self.socket.setsockopt(zmq.SUBSCRIBE, topic)

    def _connection(self, fd: int) -> _Connection | None:
        inode = _socket_inode(fd)
        if inode is None:
            self._connections.pop(fd, None)
            return None
        conn = self._connections.get(fd)
        if conn is None or conn.inode != inode:  # a new connection on a reused descriptor
            conn = self._connections[fd] = _Connection(inode)
        return conn

    def _ignore(self, frame: zmq.Frame, conn: _Connection, fd: int, code: str, what: str) -> None:
        conn.ignored += 1
        self._refuse(frame, code, f"ignored {what}")
        if conn.ignored >= MAX_SUBSCRIPTIONS and not conn.cut:
            conn.cut = True
            if _shutdown(fd, conn.inode):
                self._refuse(
                    frame,
                    "pub_connection_cut",
                    f"cut the connection after {conn.ignored} ignored subscriptions",
                )

    def _refuse(self, frame: zmq.Frame, code: str, text: str) -> None:
        self._refused[code] += 1
        peer = _peer(frame)
        self._quiet.warn(("pub", code, peer), f"PUB subscriber {peer}: {text}")

    def prune(self) -> None:
        """Forget connections that have closed (called now and then from the loop)."""
        for fd, conn in list(self._connections.items()):
            if _socket_inode(fd) != conn.inode:
                del self._connections[fd]

    def close(self) -> None:
        self.socket.close(linger=0)


def _socket_inode(fd: int) -> int | None:
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return info.st_ino if stat.S_ISSOCK(info.st_mode) else None


def _shutdown(fd: int, inode: int) -> bool:
    """End the connection on ``fd`` (still libzmq's: it sees the peer go and cleans up)."""
    if _socket_inode(fd) != inode:
        return False
    try:
        with socket.socket(fileno=os.dup(fd)) as conn:
            conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    return True


def _peer(frame: zmq.Frame) -> str:
    """Who sent ``frame``: its address and, with CurveZMQ, its key's name; escaped."""
    parts = []
    for prop, label in (("Peer-Address", "at"), ("User-Id", "key")):
        try:
            value = frame.get(prop)
        except zmq.ZMQError:
            continue
        text = str(value)
        if text:
            parts.append(f"{label} {text if text.isprintable() else ascii(text)}")
    return " ".join(parts) or "(unknown peer)"


def _shown(topic: bytes) -> str:
    """A topic for a log line: escaped, and cut short."""
    return ascii(topic[:40]) + ("..." if len(topic) > 40 else "")
