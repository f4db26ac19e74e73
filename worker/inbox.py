"""Wake the worker's loop from other threads.

Threads (the model loader, a signal handler, ``Worker.stop``) ``put`` events
on a deque and write one byte to a pipe whose read end sits in the loop's
poll set beside the ZeroMQ sockets; the loop ``drain``s both. An event put
while the loop drains is either taken now or wakes the next poll: none is
lost, at worst a wake-up finds nothing.
"""

from __future__ import annotations

import collections
import contextlib
import os
from typing import Any


class Inbox:
    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._events: collections.deque[Any] = collections.deque()

    def fileno(self) -> int:
        return self._read

    def put(self, event: Any) -> None:
        self._events.append(event)
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"!")

    def drain(self) -> list[Any]:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass
        events = []
        while self._events:
            events.append(self._events.popleft())
        return events

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)
