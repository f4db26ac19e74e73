"""The broker's PUB stream: topics, sequence numbers, and a subscriber.

Each published message is three frames: the topic ``<type>/<source>/``, an
8-byte big-endian sequence number, and the message exactly as its sender
encoded it. A subscriber filters by topic prefix (``heartbeat/`` for all
heartbeats, ``heartbeat/gpu-1/`` for one worker) and watches the sequence:
a gap means it missed updates (slow link, high-water mark, broker restart)
and should take a fresh snapshot from the brain, as in the zguide's Clone
pattern. With keys (given, or the process's) the SUB speaks CurveZMQ.

The brain publishes the batch events of one loop turn as one ``BatchEvents``
when there are several (topic ``batch.events/``); ``recv`` hands them out one
``BatchEvent`` at a time, in order, the first with the publication's
sequence and gap, the rest with the same sequence and no gap. Subscribe to
``BATCH_EVENT_TOPICS`` for every batch event.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass
from typing import Any

import zmq

from llmo.proto.codec import decode
from llmo.proto.errors import ErrorCode, ProtocolError
from llmo.proto.messages import BatchEvents, Message, MsgType
from llmo.proto.security import ClientKeys, secure_client

_SEQ = struct.Struct(">Q")


def topic(msg_type: MsgType | str, source: str = "") -> bytes:
    """The topic prefix for a type, or for a type from one source."""
    text = f"{msg_type}/" if not source else f"{msg_type}/{source}/"
    return text.encode()


BATCH_EVENT_TOPICS = (topic(MsgType.BATCH_EVENT), topic(MsgType.BATCH_EVENTS))
"""The topics of every batch event: one at a time, and several of one loop turn."""


def pub_frames(msg_type: str, source: str, seq: int, body: bytes) -> list[bytes]:
    return [topic(msg_type, source), _SEQ.pack(seq), body]


@dataclass(frozen=True, slots=True)
class Published:
    seq: int
    message: Message
    gap: int  # how many sequence numbers were skipped before this one


class Subscriber:
    """A SUB socket on the broker's PUB endpoint with gap detection."""

    def __init__(
        self,
        endpoint: str,
        topics: tuple[bytes, ...] = (b"",),
        context: zmq.Context[Any] | None = None,
        keys: ClientKeys | None = None,
    ) -> None:
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 10000)
        for t in topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, t)
        self.keys = secure_client(self.socket, keys)
        self.socket.connect(endpoint)
        self.endpoint = endpoint
        self.last_seq: int | None = None
        self._held: collections.deque[Published] = collections.deque()

    def recv(self, timeout: float | None = None) -> Published | None:
        """The next published message, or None after ``timeout`` seconds.

        Raises ``ProtocolError`` for a malformed publication.
        """
        if self._held:
            return self._held.popleft()
        if timeout is not None and not self.socket.poll(int(timeout * 1000)):
            return None
        frames = self.socket.recv_multipart()
        if len(frames) != 3 or len(frames[1]) != _SEQ.size:
            raise ProtocolError(ErrorCode.BAD_FRAMES, f"publication with {len(frames)} frames")
        (seq,) = _SEQ.unpack(frames[1])
        gap = 0
        if self.last_seq is not None and seq > self.last_seq + 1:
            gap = seq - self.last_seq - 1
        elif self.last_seq is not None and seq <= self.last_seq:
            gap = -1  # the broker restarted and counts from 1 again
        self.last_seq = seq
        msg = decode(frames[2])
        if isinstance(msg, BatchEvents) and msg.events:
            first, *rest = msg.unpacked()
            self._held.extend(Published(seq=seq, message=event, gap=0) for event in rest)
            return Published(seq=seq, message=first, gap=gap)
        return Published(seq=seq, message=msg, gap=gap)

    def close(self) -> None:
        self.socket.close(linger=0)
