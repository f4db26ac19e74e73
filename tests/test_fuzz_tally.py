"""The fuzz suite's shared pieces: how many examples to run, and the tally of inputs.

Every fuzz module imports ``fuzz_tally`` and adds the inputs it threw at
the system; all of them count into one tally per session. At the end of the session the tally
prints one line, ``llmo fuzz: N inputs tried (broker a, brain b, ...)``, on
the terminal and stores the counts in the pytest cache under
``llmo/fuzz_inputs`` (``.pytest_cache/v/llmo/fuzz_inputs``).

``LLMO_FUZZ_EXAMPLES=N`` raises every fuzz test's example count to at least
N for a longer run; the defaults keep the suite near a minute on two cores.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator

import pytest

from tests.reporting import say

ENV = "LLMO_FUZZ_EXAMPLES"


def examples(default: int) -> int:
    """The example count for a fuzz test: its default, or ``$LLMO_FUZZ_EXAMPLES`` if larger."""
    try:
        wanted = int(os.environ.get(ENV, "0"))
    except ValueError:
        wanted = 0
    return max(default, wanted)


class Tally:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, area: str, n: int = 1) -> None:
        self.counts[area] += n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        parts = ", ".join(f"{area} {n}" for area, n in sorted(self.counts.items()))
        return f"llmo fuzz: {self.total} inputs tried ({parts or 'none'})"


TALLY = Tally()  # one per session, however many modules import the fixture
_holders = 0


@pytest.fixture(scope="session")
def fuzz_tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """The session's tally. Each module that imports this gets its own fixture
    instance; they share ``TALLY``, and the last one torn down reports it."""
    global _holders
    _holders += 1
    yield TALLY
    _holders -= 1
    if _holders:
        return
    line = TALLY.line()
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        cache.set("llmo/fuzz_inputs", {"total": TALLY.total, **TALLY.counts})
    say(request.config, line)


def test_examples_grow_with_the_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert examples(50) == 50
    monkeypatch.setenv(ENV, "2000")
    assert examples(50) == 2000
    monkeypatch.setenv(ENV, "10")
    assert examples(50) == 50
    monkeypatch.setenv(ENV, "lots")
    assert examples(50) == 50


def test_the_tally_counts_by_area():
    tally = Tally()
    tally.add("broker", 3)
    tally.add("brain")
    assert tally.total == 4
    assert tally.line() == "llmo fuzz: 4 inputs tried (brain 1, broker 3)"
