"""The worker's in-process LLM runtime (llama-cpp-python).

Theory of operation
-------------------
Loads and unloads run on one background thread, in the order they were
asked for, so the worker's loop keeps answering messages while a model loads
and two loads can never race. Each finished transition is posted to the loop
as a ``RuntimeEvent`` (``hot``, ``cold`` or ``failed``); the loop turns them
into ``ModelStatus`` messages.

A load checks the file first (it exists, is a regular file, starts with the
GGUF magic) so the common mistakes come back as a plain reason, then opens
the model and runs a real test completion. Only when that completion has
sampled a token is the runtime ``hot``: a model that loads but cannot serve
is a failed load, and the worker stays cold and usable.

Generation (``generate``) holds the runtime's lock, so requests run one after
another. Every sampled token goes through ``CountingLlama.sample``, which
adds it to the request's ``Meter`` and the runtime's total, and stops the
generation (``Cancelled``) when the meter's attempt has ended or an unload
is waiting. The end-of-generation token is not counted, so the counts match
the ``usage.completion_tokens`` that llama-cpp-python reports.

llama-cpp-python is imported on first use: the worker sets
``CUDA_VISIBLE_DEVICES`` before anything touches CUDA.

``extra_bufts``: llama.cpp's CPU backend repacks weights into "extra" buffer
types, including Intel AMX tiles where the CPU advertises AMX. Under some
hypervisors the advertised AMX faults and the process dies mid-prompt
(seen on these development VMs). ``auto`` turns the extra buffers off where
``/proc/cpuinfo`` lists ``amx_tile``; a GPU-offloaded model is not affected.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from llmo.proto.vocab import model_alias, names_model
from llmo.worker.meter import Meter

log = logging.getLogger("llmo.worker.llm")

GGUF_MAGIC = b"GGUF"
TEST_PROMPT = "The capital of France is"

ModelState = Literal["cold", "loading", "hot"]


class Cancelled(Exception):
    """A generation stopped because its attempt ended or the model is unloading."""


class NotHot(Exception):
    """No model is loaded."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadSpec:
    path: str
    alias: str = ""
    n_gpu_layers: int = -1
    tensor_split: tuple[float, ...] = ()
    n_ctx: int = 4096
    threads: int = 0  # 0 = llama.cpp's own choice
    extra_bufts: Literal["auto", "on", "off"] = "auto"

    @property
    def name(self) -> str:
        return self.alias or model_alias(self.path)

    def answers_to(self, requested: str) -> bool:
        """Whether ``requested`` names this model: its name, or a name of its file."""
        return requested == self.name or names_model(requested, self.path)


@dataclass(frozen=True, slots=True)
class RuntimeEvent:
    state: Literal["hot", "cold", "failed"]
    model: str
    error: str = ""
    load_s: float = 0.0


def check_gguf(path: str) -> str | None:
    """Why ``path`` cannot be a GGUF model, or None if it may be one."""
    if not path:
        return "no model path given"
    if not os.path.exists(path):
        return f"model file {path} does not exist"
    if not os.path.isfile(path):
        return f"model path {path} is not a regular file"
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        return f"cannot read model file {path}: {exc.strerror or exc}"
    if magic != GGUF_MAGIC:
        return f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})"
    return None


def amx_advertised(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" in line.split()
    except OSError:
        pass
    return False


def use_extra_bufts(setting: str) -> bool:
    if setting == "auto":
        return not amx_advertised()
    return setting == "on"


_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def _model_params(extra_bufts: bool) -> Iterator[None]:
    """llama-cpp-python has no argument for ``use_extra_bufts``; while a model
    opens, its default model parameters are wrapped to set it. Loads are
    serialised by the lock, and only model loads read these defaults."""
    if extra_bufts:
        yield
        return
    import llama_cpp.llama as high

    low = high.llama_cpp
    if "use_extra_bufts" not in {field[0] for field in low.llama_model_params._fields_}:
        yield
        return
    with _PARAMS_LOCK:
        original = low.llama_model_default_params

        def defaults() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params = defaults
        try:
            yield
        finally:
            low.llama_model_default_params = original


_COUNTING_CLASS: Any = None


def _counting_class() -> Any:
    """A ``Llama`` whose every sampled token calls ``on_token(eog)``."""
    global _COUNTING_CLASS
    if _COUNTING_CLASS is None:
        import llama_cpp

        is_eog = llama_cpp.llama_vocab_is_eog

        class CountingLlama(llama_cpp.Llama):
            on_token: Callable[[bool], None] | None = None

            def sample(self, *args: Any, **kwargs: Any) -> int:
                token = super().sample(*args, **kwargs)
                hook = self.on_token
                if hook is not None:
                    hook(bool(is_eog(self._model.vocab, token)))
                return token

        _COUNTING_CLASS = CountingLlama
    return _COUNTING_CLASS


def open_llama(spec: LoadSpec) -> Any:
    """Open ``spec``'s model with the worker's parameters (the benchmark's
    direct side uses this too, so both sides run the same configuration)."""
    cls = _counting_class()
    with _model_params(use_extra_bufts(spec.extra_bufts)):
        return cls(
            model_path=spec.path,
            n_gpu_layers=spec.n_gpu_layers,
            tensor_split=list(spec.tensor_split) or None,
            n_ctx=spec.n_ctx,
            n_threads=spec.threads or None,
            n_threads_batch=spec.threads or None,
            verbose=False,
        )


@dataclass(slots=True)
class Generation:
    """One request holding the model: ``llm`` to call, ``tokens`` it generated."""

    llm: Any = None
    meter: Meter | None = None
    tokens: int = 0


class Runtime:
    """One model at a time, loaded and unloaded off the loop's thread.

    ``state`` and ``model`` are what heartbeats report; ``post`` receives a
    ``RuntimeEvent`` (on the runtime's thread) whenever a transition ends.
    ``clock`` times loads and generations (the worker's clock: meters' busy
    time is read against it).
    """

    def __init__(
        self, post: Callable[[RuntimeEvent], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.post = post
        self.clock = clock
        self.state: ModelState = "cold"
        self.spec: LoadSpec | None = None  # the model loaded, or being loaded
        self.load_s = 0.0
        self.total_tokens = 0
        self._llm: Any = None
        self._loaded: LoadSpec | None = None
        self._closing = False
        self._pending = 0  # loads submitted and not yet finished
        self._count_lock = threading.Lock()
        self._lock = threading.Lock()
        self._current = Generation()
        self._jobs = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="llm-runtime"
        )

    @property
    def model(self) -> str:
        return self.spec.name if self.spec is not None and self.state != "cold" else ""

    # --- commands from the loop -------------------------------------------------------

    def load(self, spec: LoadSpec) -> None:
        """Start loading ``spec`` (after anything queued before it)."""
        self.state = "loading" if self.state != "hot" or self._loaded != spec else "hot"
        self.spec = spec
        with self._count_lock:
            self._pending += 1
        self._jobs.submit(self._load, spec)

    def unload(self) -> None:
        self._closing = True  # a generation running now stops at its next token
        self._jobs.submit(self._unload)

    def shutdown(self) -> None:
        self._closing = True
        self._jobs.submit(self._unload, True)
        self._jobs.shutdown(wait=True)

    # --- the background thread ----------------------------------------------------------

    def _load(self, spec: LoadSpec) -> None:
        try:
            self._load_now(spec)
        finally:
            with self._count_lock:
                self._pending -= 1

    def _load_now(self, spec: LoadSpec) -> None:
        if self._llm is not None and self._loaded == spec:
            self.state = "hot"
            self.post(RuntimeEvent("hot", spec.name, load_s=self.load_s))
            return
        if self._llm is not None:
            self._closing = True
            self._release()
        self._closing = False
        self.state = "loading"
        self.spec = spec
        started = self.clock()
        reason = check_gguf(spec.path)
        llm = None
        if reason is None:
            try:
                llm = open_llama(spec)
                self._test(llm)
            except Exception as exc:
                reason = f"cannot load {spec.path}: {type(exc).__name__}: {exc}"
                if llm is not None:
                    with contextlib.suppress(Exception):
                        llm.close()
                llm = None
        load_s = round(self.clock() - started, 3)
        if reason is not None:
            log.warning("model load failed: %s", reason)
            if self._pending <= 1:  # no other load queued behind this one
                self.state = "cold"
                self.spec = None
            self.post(RuntimeEvent("failed", spec.name, error=reason, load_s=load_s))
            return
        with self._lock:
            self._llm = llm
            self._loaded = spec
            self.load_s = load_s
            self.state = "hot"
        log.info("model %s is hot (%.2fs from load to first completion)", spec.name, load_s)
        self.post(RuntimeEvent("hot", spec.name, load_s=load_s))

    def _test(self, llm: Any) -> None:
        """A real completion; the model is hot only if it sampled a token."""
        sampled = 0

        def count(_eog: bool) -> None:
            nonlocal sampled
            sampled += 1

        llm.on_token = count
        try:
            llm.create_completion(TEST_PROMPT, max_tokens=4, temperature=0.0)
        finally:
            llm.on_token = self._on_token
        if sampled == 0:
            raise RuntimeError("the test completion produced no token")

    def _unload(self, quiet: bool = False) -> None:
        name = self._loaded.name if self._loaded is not None else ""
        self._release()
        self._closing = False
        if self._pending == 0:  # no load queued behind this unload
            self.state = "cold"
            self.spec = None
        if not quiet:
            self.post(RuntimeEvent("cold", name))

    def _release(self) -> None:
        with self._lock:  # waits for a generation to notice _closing and stop
            llm, self._llm, self._loaded = self._llm, None, None
        if llm is not None:
            llm.close()
            log.info("model unloaded")

    # --- generation (HTTP threads) --------------------------------------------------------

    def _on_token(self, eog: bool) -> None:
        current = self._current
        meter = current.meter
        if not eog:
            current.tokens += 1
            self.total_tokens += 1
            if meter is not None:
                meter.tokens += 1
        if self._closing or (meter is not None and meter.cancelled):
            raise Cancelled("the attempt ended" if not self._closing else "the model is unloading")

    @contextlib.contextmanager
    def generate(self, meter: Meter | None, wait_s: float = 3600.0) -> Iterator[Generation]:
        """Hold the model for one request; its tokens count towards ``meter``."""
        deadline = self.clock() + wait_s
        while not self._lock.acquire(timeout=0.2):
            if (meter is not None and meter.cancelled) or self.clock() > deadline:
                raise Cancelled("the attempt ended while waiting for the model")
        try:
            if self._llm is None or self._closing:
                raise NotHot("no model is loaded")
            current = self._current = Generation(llm=self._llm, meter=meter)
            started = self.clock()
            if meter is not None:
                meter.gen_started = started
            try:
                yield current
            finally:
                if meter is not None:
                    meter.gen_s += self.clock() - started
                    meter.gen_started = None
                self._current = Generation()
        finally:
            self._lock.release()
