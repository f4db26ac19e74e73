"""Token meters: who generated how many tokens, and how fast.

Theory of operation
-------------------
Generation runs on the batch loop's thread (``worker.batching``), several
requests at once; the worker's loop reads the figures. Each attempt has a
``Meter``; the batch thread is its only writer, so plain attribute updates
are safe under the GIL, and the loop only reads them. ``gen_s`` is the time
during which at least one of the attempt's requests held a sequence slot, so
its tok/s stays exact when its requests overlap.

A request finds its meter through ``Meters.resolve``: the bearer key the
attempt's environment carries (``LLM_API_KEY``), else an ``X-LLMO-Attempt``
header naming the attempt, else the only running attempt that is an LLM
task. A request that matches none still generates and counts towards the
worker's total, but belongs to no attempt.

A completion answered from the result cache (``worker.cache``) generates
nothing: it adds to ``cache_hits`` and ``cache_hit_tokens``, never to
``tokens``, so an attempt's count is what it cost the GPU. The attempt's
cache policy (``cache_policy``) comes from its ``TaskAssign.env``.

``Rate`` turns the worker's running total into its recent tok/s for
heartbeats: the slope over the last few seconds of samples.
"""

from __future__ import annotations

import collections
import secrets
import threading
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class Meter:
    attempt_id: str
    key: str = field(default_factory=lambda: f"llmo-{secrets.token_hex(16)}")
    llm: bool = False  # an llm/brain-class attempt (a fallback owner for keyless requests)
    tokens: int = 0
    prompt_tokens: int = 0  # prompt tokens of its requests, computed or reused
    cached_tokens: int = 0  # of those, reused from the cache (``worker.batching``)
    gen_s: float = 0.0  # seconds spent generating, summed over requests
    gen_started: float | None = None  # when the request generating now started
    cancelled: bool = False
    cache_policy: str | None = None  # the plan's LLM_CACHE (``worker.cache``); None: auto
    cache_hits: int = 0  # completions answered from the result cache, with no token generated
    cache_hit_tokens: int = 0  # the completion tokens those answers hold

    def tok_s(self, now: float) -> float:
        """Tokens per second of generation, ``now`` on the clock of ``gen_started``."""
        busy = self.gen_s
        if self.gen_started is not None:
            busy += now - self.gen_started
        return round(self.tokens / busy, 2) if busy > 0 and self.tokens else 0.0


class Meters:
    """The meters of the running attempts, by key and by attempt id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, Meter] = {}
        self._by_attempt: dict[str, Meter] = {}

    def add(self, meter: Meter) -> Meter:
        with self._lock:
            self._by_key[meter.key] = meter
            self._by_attempt[meter.attempt_id] = meter
        return meter

    def remove(self, attempt_id: str) -> Meter | None:
        with self._lock:
            meter = self._by_attempt.pop(attempt_id, None)
            if meter is not None:
                self._by_key.pop(meter.key, None)
                meter.cancelled = True  # a generation still running for it stops
        return meter

    def get(self, attempt_id: str) -> Meter | None:
        return self._by_attempt.get(attempt_id)

    def resolve(self, key: str | None, attempt_id: str | None) -> Meter | None:
        with self._lock:
            if key and key in self._by_key:
                return self._by_key[key]
            if attempt_id and attempt_id in self._by_attempt:
                return self._by_attempt[attempt_id]
            llm = [m for m in self._by_attempt.values() if m.llm]
            return llm[0] if len(llm) == 1 else None


class Rate:
    """Recent tokens per second from samples of a running total."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def sample(self, now: float, total: int) -> float:
        samples = self._samples
        samples.append((now, total))
        while len(samples) > 2 and now - samples[1][0] >= self.window_s:
            samples.popleft()
        t0, n0 = samples[0]
        return round((total - n0) / (now - t0), 2) if now > t0 else 0.0
