"""Continuous batching: one llama.cpp context serving up to ``parallel`` sequences at once.

Theory of operation
-------------------
One scheduler thread owns the llama context; nothing else touches it. Callers
on any thread ``submit`` a ``Request`` (prompt tokens, sampling parameters,
stop strings, ``max_tokens``, the attempt's ``Meter``) and read its ``events``
queue: ``Delta`` pieces of text as they are sampled, then one ``Done`` (or
``Failed``). ``Request.cancel`` may be called from any thread.

The context has ``parallel`` sequence slots of ``ctx`` tokens each (the
context is ``parallel x ctx`` cells, in one unified KV cache). Each loop turn:

1. drops requests that were cancelled (or whose meter's attempt ended), so a
   cancelled request leaves the batch within one decode step;
2. admits waiting requests into free slots (prefix reuse, below);
3. builds one batch: the last sampled token of every generating sequence,
   then prompt chunks of newcomers up to ``n_batch`` tokens in all;
4. decodes it, and samples one token for every sequence whose logits it
   asked for, each with its own sampler chain.

A sampled token that is end-of-generation finishes the sequence with
``stop`` and is not counted; any other token is counted on the request's
meter and the engine's total (so meters equal ``usage.completion_tokens``),
detokenised, and checked against the stop strings. While streaming, text that
could be the start of a stop string is held back until it is decided.
``max_tokens`` is capped by what the sequence's context has left; reaching
it finishes with ``length``.

Prefix reuse: a slot keeps the tokens in its cache after its request ends.
A newcomer takes the free slot whose cache shares the longest prefix with its
prompt; if another slot (running or finished) shares a longer one, that
prefix is copied (``llama_memory_seq_cp``) into the newcomer's slot instead.
Only the rest of the prompt is computed (at least its last token, for the
logits). ``Done.cached_tokens`` says how many prompt tokens were reused.
Requests that arrive together (a ``foreach`` batch starting) would each
compute the shared prefix; instead a newcomer whose prompt shares a long
prefix with a sequence still computing its prompt waits until that prefix is
in the cache (one decode step for a prompt under ``n_batch``), then copies it.

A meter's busy time (``gen_s``) is the union of its requests' lifetimes in a
slot, so an attempt's tok/s stays exact when its requests overlap.

``close`` fails what is waiting, cancels what runs, and joins the thread
before the context is freed: an unload never races a decode.
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from llmo.worker.meter import Meter
from llmo.worker.sampling import SamplingParams, build_chain, free_chain

log = logging.getLogger("llmo.worker.batching")

WAIT_FOR_PREFIX = 32  # tokens of a prefix being computed worth waiting for


class Cancelled(Exception):
    """A generation stopped because its attempt ended, it was cancelled, or the model unloads."""


@dataclass(frozen=True, slots=True)
class Delta:
    text: str


@dataclass(frozen=True, slots=True)
class Done:
    text: str  # the whole completion, stop string excluded
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens reused from the cache, not computed
    capped: bool = False  # max_tokens was lowered to what the context has left


@dataclass(frozen=True, slots=True)
class Failed:
    error: Exception


Event = Delta | Done | Failed


@dataclass(eq=False, kw_only=True)
class Request:
    """One generation. Build it on any thread, ``submit`` it, read ``events``."""

    prompt: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    max_tokens: int | None = 16  # None or <= 0: as many as the context allows
    meter: Meter | None = None
    events: queue.SimpleQueue[Event] = field(default_factory=queue.SimpleQueue)
    wake: Callable[[], None] | None = None  # called after each event (e.g. an event loop's)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def stream(self, timeout: float | None = None) -> Generator[str, None, Done]:
        """Text pieces as they come; returns the ``Done`` (StopIteration.value)."""
        while True:
            event = self.events.get(timeout=timeout)
            if isinstance(event, Delta):
                yield event.text
            elif isinstance(event, Done):
                return event
            else:
                raise event.error

    def result(self, timeout: float | None = None) -> Done:
        stream = self.stream(timeout)
        while True:
            try:
                next(stream)
            except StopIteration as end:
                done: Done = end.value
                return done

    def _emit(self, event: Event) -> None:
        self.events.put(event)
        if self.wake is not None:
            self.wake()


@dataclass(eq=False)
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV is in the cache
    run: _Running | None = None
    used_at: int = 0


@dataclass(eq=False)
class _Running:
    request: Request
    chain: Any
    left: list[int]  # prompt tokens still to compute
    limit: int
    capped: bool
    cached_tokens: int
    next_token: int | None = None  # sampled, to be decoded next step
    generated: int = 0
    text: str = ""
    sent: int = 0
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` could begin a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class Engine:
    """The scheduler over one loaded model (``llm``: a ``llama_cpp.Llama``)."""

    def __init__(
        self,
        llm: Any,
        *,
        parallel: int,
        ctx: int,
        threads: int = 0,
        n_batch: int = 512,
        clock: Callable[[], float] = time.monotonic,
        on_token: Callable[[], None] | None = None,
    ) -> None:
        import llama_cpp as ll

        self.ll = ll
        self.llm = llm
        self.parallel = parallel
        self.ctx = ctx
        self.clock = clock
        self.on_token = on_token
        params = ll.llama_context_default_params()
        params.n_ctx = parallel * ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)
        params.n_seq_max = parallel
        if hasattr(params, "kv_unified"):
            params.kv_unified = True
        if hasattr(params, "swa_full"):
            params.swa_full = True  # partial removal keeps working on sliding-window models
        if threads:
            params.n_threads = params.n_threads_batch = threads
        else:
            params.n_threads = llm.context_params.n_threads
            params.n_threads_batch = llm.context_params.n_threads_batch
        self.ctx_p = ll.llama_init_from_model(llm.model, params)
        if not self.ctx_p:
            raise RuntimeError(f"cannot create a context of {parallel} x {ctx} tokens")
        self.mem = ll.llama_get_memory(self.ctx_p)
        self.n_batch = n_batch
        self.batch = ll.llama_batch_init(n_batch, 0, 1)
        self.vocab = llm._model.vocab
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self.slots = [_Slot(seq) for seq in range(parallel)]
        self._waiting: collections.deque[Request] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._turn = 0
        self._meter_runs: dict[int, int] = {}  # id(meter) -> requests running for it
        # Figures: decode steps by the number of sequences they carried.
        self.steps_by_width: collections.Counter[int] = collections.Counter()
        self.peak_width = 0
        self.total_tokens = 0
        self._thread = threading.Thread(target=self._loop, name="llm-batch", daemon=True)
        self._thread.start()

    # --- any thread ----------------------------------------------------------------------

    def submit(self, request: Request) -> Request:
        self.submit_all([request])
        return request

    def submit_all(self, requests: list[Request]) -> None:
        """Queue ``requests`` at once: the loop sees them all in the same turn."""
        for request in requests:
            if not request.prompt:
                raise ValueError("the prompt has no tokens")
            if len(request.prompt) >= self.ctx:
                raise ValueError(
                    f"the prompt has {len(request.prompt)} tokens; a sequence's context here "
                    f"is {self.ctx} tokens"
                )
        with self._wake:
            if self._closing:
                raise Cancelled("the model is unloading")
            self._waiting.extend(requests)
            self._wake.notify()

    @property
    def active(self) -> int:
        """Requests waiting or running."""
        return len(self._waiting) + sum(1 for s in self.slots if s.run is not None)

    def close(self) -> None:
        """Cancel everything, stop the thread, free the context."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        for request in self._waiting:
            request._emit(Failed(Cancelled("the model is unloading")))
        self._waiting.clear()
        ll = self.ll
        ll.llama_batch_free(self.batch)
        ll.llama_free(self.ctx_p)
        self.ctx_p = None

    # --- the scheduler thread --------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._closing and not self._waiting and not self._running():
                        self._wake.wait()
                    if self._closing:
                        break
                self._sweep()
                self._admit()
                if self._running():
                    self._step()
        except Exception as exc:  # a broken context: fail every request, say why
            log.exception("the batch loop failed")
            for slot in self.slots:
                if slot.run is not None:
                    self._finish(slot, error=RuntimeError(f"the batch loop failed: {exc}"))
        for slot in self.slots:
            if slot.run is not None:
                self._finish(slot, error=Cancelled("the model is unloading"))

    def _running(self) -> bool:
        return any(s.run is not None for s in self.slots)

    def _sweep(self) -> None:
        for slot in self.slots:
            run = slot.run
            if run is None:
                continue
            request = run.request
            if request.cancelled:
                self._finish(slot, error=Cancelled("the request was cancelled"))
            elif request.meter is not None and request.meter.cancelled:
                self._finish(slot, error=Cancelled("the attempt ended"))
        with self._wake:
            kept = [r for r in self._waiting if not r.cancelled]
            dropped = [r for r in self._waiting if r.cancelled]
            self._waiting = collections.deque(kept)
        for request in dropped:
            request._emit(Failed(Cancelled("the request was cancelled")))

    def _admit(self) -> None:
        deferred: list[Request] = []
        while True:
            free = [s for s in self.slots if s.run is None]
            if not free:
                break
            with self._wake:
                if not self._waiting:
                    break
                request = self._waiting.popleft()
            if self._worth_waiting(request):
                deferred.append(request)
                continue
            self._start(request, free)
        if deferred:
            with self._wake:
                self._waiting.extendleft(reversed(deferred))

    def _worth_waiting(self, request: Request) -> bool:
        """Whether a running sequence is still computing a prefix of ``request``'s prompt
        that is at least ``WAIT_FOR_PREFIX`` tokens longer than what the cache shares now:
        then the request waits a step or two and copies it, rather than computing it too."""
        prompt = request.prompt
        usable = len(prompt) - 1
        now = max(min(common_prefix(s.cached, prompt), usable) for s in self.slots)
        coming = max(
            (
                min(common_prefix(s.run.request.prompt, prompt), usable)
                for s in self.slots
                if s.run is not None and s.run.left
            ),
            default=0,
        )
        return coming >= now + WAIT_FOR_PREFIX

    def _start(self, request: Request, free: list[_Slot]) -> None:
        ll = self.ll
        prompt = request.prompt
        usable = len(prompt) - 1  # the last prompt token is always computed (its logits)

        def shared(slot: _Slot) -> int:
            return min(common_prefix(slot.cached, prompt), usable)

        target = max(free, key=lambda s: (shared(s), -s.used_at))
        source = max(self.slots, key=shared)
        reuse = shared(target)
        if shared(source) > reuse and source is not target:
            ll.llama_memory_seq_rm(self.mem, target.seq, -1, -1)
            reuse = shared(source)
            ll.llama_memory_seq_cp(self.mem, source.seq, target.seq, 0, reuse)
        elif not ll.llama_memory_seq_rm(self.mem, target.seq, reuse, -1):
            ll.llama_memory_seq_rm(self.mem, target.seq, -1, -1)  # cannot cut: start afresh
            reuse = 0
        target.cached = list(prompt[:reuse])
        room = self.ctx - len(prompt)
        wanted = request.max_tokens if request.max_tokens and request.max_tokens > 0 else room
        chain = build_chain(request.sampling, self.n_vocab)
        if request.sampling.penalised:
            for token in prompt:
                ll.llama_sampler_accept(chain, token)
        self._turn += 1
        target.used_at = self._turn
        target.run = _Running(
            request=request,
            chain=chain,
            left=list(prompt[reuse:]),
            limit=min(wanted, room),
            capped=wanted > room,
            cached_tokens=reuse,
        )
        meter = request.meter
        if meter is not None:
            meter.prompt_tokens += len(prompt)
            meter.cached_tokens += reuse
            key = id(meter)
            self._meter_runs[key] = self._meter_runs.get(key, 0) + 1
            if self._meter_runs[key] == 1:
                meter.gen_started = self.clock()

    def _step(self) -> None:
        ll = self.ll
        batch = self.batch
        n = 0
        outputs: list[tuple[_Slot, int]] = []
        carried: set[int] = set()

        def add(slot: _Slot, token: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = len(slot.cached)
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot.seq
            batch.logits[n] = logits
            slot.cached.append(token)
            carried.add(slot.seq)
            if logits:
                outputs.append((slot, n))
            n += 1

        for slot in self.slots:
            run = slot.run
            if run is not None and run.next_token is not None:
                add(slot, run.next_token, True)
                run.next_token = None
        for slot in self.slots:
            run = slot.run
            if run is None or not run.left or n >= self.n_batch:
                continue
            take = min(len(run.left), self.n_batch - n)
            chunk, run.left = run.left[:take], run.left[take:]
            for i, token in enumerate(chunk):
                add(slot, token, not run.left and i == take - 1)
        if n == 0:
            return
        batch.n_tokens = n
        width = len(carried)
        self.steps_by_width[width] += 1
        self.peak_width = max(self.peak_width, width)
        status = ll.llama_decode(self.ctx_p, batch)
        if status != 0:
            self._decode_failed(status)
            return
        for slot, index in outputs:
            run = slot.run
            if run is not None:
                self._sampled(slot, ll.llama_sampler_sample(run.chain, self.ctx_p, index))

    def _decode_failed(self, status: int) -> None:
        """No room in the cache (or a backend error): fail the running requests, clean up."""
        reason = RuntimeError(f"llama_decode failed with status {status}")
        for slot in self.slots:
            if slot.run is not None:
                self._finish(slot, error=reason)
            self.ll.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
            slot.cached = []
        log.warning("decode failed (status %d); the running requests were failed", status)

    def _sampled(self, slot: _Slot, token: int) -> None:
        run = slot.run
        assert run is not None
        if self.ll.llama_vocab_is_eog(self.vocab, token):
            self._finish(slot, reason="stop")
            return
        run.generated += 1
        self.total_tokens += 1
        meter = run.request.meter
        if meter is not None:
            meter.tokens += 1
        if self.on_token is not None:
            self.on_token()
        run.text += run.decoder.decode(self._piece(token))
        stops = run.request.stop
        if stops:
            longest = max(len(s) for s in stops)
            start = max(0, run.sent - longest)
            hits = [i for i in (run.text.find(s, start) for s in stops) if i >= 0]
            if hits:
                run.text = run.text[: min(hits)]
                self._finish(slot, reason="stop", flush=False)
                return
        if run.generated >= run.limit:
            self._finish(slot, reason="length")
            return
        ready = len(run.text) - held_back(run.text, stops)
        if ready > run.sent:
            run.request._emit(Delta(run.text[run.sent : ready]))
            run.sent = ready
        run.next_token = token

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        size = self.ll.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        if size < 0:
            buf = ctypes.create_string_buffer(-size)
            size = self.ll.llama_token_to_piece(self.vocab, token, buf, -size, 0, False)
        return buf.raw[:size]

    def _finish(
        self,
        slot: _Slot,
        *,
        reason: str = "",
        error: Exception | None = None,
        flush: bool = True,
    ) -> None:
        run = slot.run
        assert run is not None
        slot.run = None
        free_chain(run.chain)
        request = run.request
        meter = request.meter
        if meter is not None:
            key = id(meter)
            self._meter_runs[key] -= 1
            if self._meter_runs[key] == 0:
                del self._meter_runs[key]
                if meter.gen_started is not None:
                    meter.gen_s += self.clock() - meter.gen_started
                    meter.gen_started = None
        if error is not None:
            request._emit(Failed(error))
            return
        if flush:
            run.text += run.decoder.decode(b"", final=True)
        if len(run.text) > run.sent:
            request._emit(Delta(run.text[run.sent :]))
        request._emit(
            Done(
                text=run.text,
                finish_reason=reason,
                prompt_tokens=len(request.prompt),
                completion_tokens=run.generated,
                cached_tokens=run.cached_tokens,
                capped=run.capped and reason == "length",
            )
        )
