"""Waiting in tests: poll a condition until it holds, never sleep and hope.

A test that needs something to have happened (a peer known to the broker, a
request out, a process gone) waits for that very thing. The timeouts are
generous, since they only bound a hang: a passing test waits as long as the
condition takes and no longer. ``wait_for`` fails naming what it awaited;
``wait_until`` answers a bool, for ``assert`` and for retry loops.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

WAIT_S = 15.0  # a default bound for a hang, not an expected duration
POLL_S = 0.05


def wait_until(
    predicate: Callable[[], Any], timeout: float = WAIT_S, *, poll_s: float = POLL_S
) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str | Callable[[], str],
    *,
    poll_s: float = POLL_S,
) -> T:
    """The first truthy value of ``predicate()``; after ``timeout`` seconds without
    one, an ``AssertionError`` saying what was awaited. ``what`` may be a callable,
    asked only then, for what is known at that time (the tail of a log)."""
    found: list[T] = []

    def holds() -> bool:
        value = predicate()
        if value:
            found.append(value)
        return bool(value)

    if not wait_until(holds, timeout, poll_s=poll_s):
        said = what() if callable(what) else what
        raise AssertionError(f"timed out after {timeout:g} s waiting for {said}")
    return found[0]
