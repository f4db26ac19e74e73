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

Generation goes through ``worker.batching.Engine``: one scheduler thread per
loaded model decodes up to ``parallel`` sequences in one batch (each with
``n_ctx`` tokens of context), reuses shared prompt prefixes, and counts every
sampled token on the request's ``Meter`` and the runtime's total. The
end-of-generation token is not counted, so the counts match the response's
``usage.completion_tokens``. ``submit`` is safe from any thread. An unload
closes the engine first: running requests end ``Cancelled``, the batch
thread is joined, and only then is the model freed.

With a result cache (``digest``), a load also takes the model file's content
hash (``model_hash``, remembered by the cache per path, size and mtime)
before the model is hot, so every result stored is keyed by what the file
holds, not by its name.

The ``Llama`` object is kept for loading, tokenizing and the chat template;
its own context is small (``HOLDER_CTX``) and never generates.

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
from llmo.worker.batching import Cancelled, Engine, Request
from llmo.worker.chat import chat_prompt
from llmo.worker.sampling import SamplingParams

log = logging.getLogger("llmo.worker.llm")

GGUF_MAGIC = b"GGUF"
TEST_PROMPT = "The capital of France is"
HOLDER_CTX = 256  # the ``Llama`` object only tokenizes; the batch loop has its own context

ModelState = Literal["cold", "loading", "hot"]


class NotHot(Exception):
    """No model is loaded."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadSpec:
    path: str
    alias: str = ""
    n_gpu_layers: int = -1
    tensor_split: tuple[float, ...] = ()
    n_ctx: int = 4096  # per sequence
    parallel: int = 4  # sequences generated at once; the context is parallel x n_ctx
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
def suppress_llama_logs() -> Iterator[None]:
    """llama.cpp prints context set-up to the process's stderr; quiet, as ``Llama`` does."""
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):
        yield


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


def open_llama(spec: LoadSpec, n_ctx: int | None = None) -> Any:
    """Open ``spec``'s model with the worker's parameters (the benchmark's
    direct side uses this too, so both sides run the same configuration).
    ``n_ctx`` overrides the context of the ``Llama`` object's own context."""
    import llama_cpp

    with _model_params(use_extra_bufts(spec.extra_bufts)):
        return llama_cpp.Llama(
            model_path=spec.path,
            n_gpu_layers=spec.n_gpu_layers,
            tensor_split=list(spec.tensor_split) or None,
            n_ctx=n_ctx or spec.n_ctx,
            n_threads=spec.threads or None,
            n_threads_batch=spec.threads or None,
            verbose=False,
        )


class Runtime:
    """One model at a time, loaded and unloaded off the loop's thread.

    ``state`` and ``model`` are what heartbeats report; ``post`` receives a
    ``RuntimeEvent`` (on the runtime's thread) whenever a transition ends.
    ``clock`` times loads and generations (the worker's clock: meters' busy
    time is read against it).
    """

    def __init__(
        self,
        post: Callable[[RuntimeEvent], None],
        clock: Callable[[], float] = time.monotonic,
        digest: Callable[[str], str] | None = None,
    ) -> None:
        self.post = post
        self.clock = clock
        self.digest = digest  # the model file's content hash, for the result cache
        self.model_hash = ""  # of the loaded model; empty: unknown (nothing is cached)
        self.state: ModelState = "cold"
        self.spec: LoadSpec | None = None  # the model loaded, or being loaded
        self.load_s = 0.0
        self.total_tokens = 0
        self._llm: Any = None
        self._engine: Engine | None = None
        self._loaded: LoadSpec | None = None
        self._closing = False
        self._pending = 0  # loads submitted and not yet finished
        self._count_lock = threading.Lock()
        self._lock = threading.Lock()
        self._jobs = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="llm-runtime"
        )

    @property
    def model(self) -> str:
        return self.spec.name if self.spec is not None and self.state != "cold" else ""

    @property
    def engine(self) -> Engine | None:
        return self._engine

    @property
    def slots(self) -> int:
        """Sequences the loaded model generates at once (0 when cold)."""
        engine = self._engine
        return engine.parallel if engine is not None and self.state == "hot" else 0

    @property
    def in_flight(self) -> int:
        """Requests waiting for or holding a sequence slot."""
        engine = self._engine
        return engine.active if engine is not None else 0

    # --- commands from the loop -------------------------------------------------------

    def load(self, spec: LoadSpec) -> None:
        """Start loading ``spec`` (after anything queued before it)."""
        self.state = "loading" if self.state != "hot" or self._loaded != spec else "hot"
        self.spec = spec
        with self._count_lock:
            self._pending += 1
        self._jobs.submit(self._load, spec)

    def unload(self) -> None:
        self._closing = True  # new requests are refused; running ones are cancelled
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
        llm = engine = None
        model_hash = ""
        if reason is None:
            try:
                llm = open_llama(spec, n_ctx=HOLDER_CTX)
                with suppress_llama_logs():
                    engine = Engine(
                        llm,
                        parallel=spec.parallel,
                        ctx=spec.n_ctx,
                        threads=spec.threads,
                        clock=self.clock,
                    )
                self._test(llm, engine)
                engine.on_token = self._count
                model_hash = self._hash(spec.path)
            except Exception as exc:
                reason = f"cannot load {spec.path}: {type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):
                    if engine is not None:
                        engine.close()
                    if llm is not None:
                        llm.close()
                llm = engine = None
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
            self._engine = engine
            self._loaded = spec
            self.load_s = load_s
            self.model_hash = model_hash
            self.state = "hot"
        log.info(
            "model %s is hot (%.2fs from load to first completion; %d sequences of %d tokens)",
            spec.name,
            load_s,
            spec.parallel,
            spec.n_ctx,
        )
        self.post(RuntimeEvent("hot", spec.name, load_s=load_s))

    def _test(self, llm: Any, engine: Engine) -> None:
        """A real completion through the batch loop; hot only if it sampled a token."""
        prompt = llm.tokenize(TEST_PROMPT.encode(), add_bos=True, special=True)
        request = Request(prompt=prompt, sampling=SamplingParams(temperature=0.0), max_tokens=4)
        done = engine.submit(request).result(timeout=600)
        if done.completion_tokens == 0 and done.finish_reason != "stop":
            raise RuntimeError("the test completion produced no token")
        if done.completion_tokens == 0:
            raise RuntimeError("the test completion ended before its first token")

    def _hash(self, path: str) -> str:
        """The content hash of the model file (remembered by the digest's owner), or ""."""
        if self.digest is None:
            return ""
        try:
            return self.digest(path)
        except OSError as exc:
            log.warning("cannot hash %s for the result cache (%s); not caching", path, exc)
            return ""

    def _count(self) -> None:
        self.total_tokens += 1  # the batch thread is the only writer

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
        with self._lock:
            llm, self._llm, self._loaded = self._llm, None, None
            self.model_hash = ""
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()  # cancels what runs and joins the batch thread: no decode races this
        if llm is not None:
            llm.close()
            log.info("model unloaded")

    # --- generation (any thread) ------------------------------------------------------------

    def submit(self, request: Request) -> Request:
        """Queue ``request`` on the loaded model; read its ``events``.

        Raises NotHot with no model loaded (or one unloading), ValueError for a
        prompt that does not fit a sequence's context.
        """
        with self._lock:
            engine = self._engine
            if engine is None or self._closing or self.state != "hot":
                raise NotHot("no model is loaded")
            try:
                return engine.submit(request)
            except Cancelled:
                raise NotHot("the model is unloading") from None

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        llm = self._llm
        if llm is None:
            raise NotHot("no model is loaded")
        tokens: list[int] = llm.tokenize(text.encode(), add_bos=add_bos, special=True)
        return tokens

    def chat_prompt(self, messages: list[Any]) -> tuple[list[int], tuple[str, ...]]:
        """A chat's prompt tokens and its template's stop strings.

        The model's own template (GGUF ``tokenizer.chat_template``) when it has
        one; otherwise a plain ``role: content`` transcript ending in
        ``assistant:``, stopping where the next user turn would begin.
        """
        llm = self._llm
        if llm is None:
            raise NotHot("no model is loaded")
        return chat_prompt(llm, messages)
