"""The OpenAI-compatible endpoint a hot worker serves to its own tasks.

Theory of operation
-------------------
An aiohttp server on its own asyncio loop, in one daemon thread, bound to
127.0.0.1 on a port the kernel picks (the socket is bound before the thread
starts, so ``base_url`` is known at once). Tasks find it through
``LLM_API_BASE`` (``http://127.0.0.1:<port>/v1``) and ``LLM_MODEL`` in their
environment (``BRAIN_*`` on a brain-role worker; also under the original
system's names ``WORKER_API_BASE`` and ``WORKER_MODEL``), and identify
themselves with the bearer key ``LLM_API_KEY`` (or an ``X-LLMO-Attempt``
header; see ``worker.meter``), so every token is counted on its attempt's
meter.

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (each with ``"stream": true`` answered as
server-sent events: ``data: {...}`` lines, then ``data: [DONE]``, on a
keep-alive connection), and ``GET /health``. Bodies are OpenAI-shaped
(``worker.shapes``) with ``model`` set to the worker's model name;
``stream_options.include_usage`` adds a last chunk with ``usage`` and no
choices. Every error answer is an OpenAI-shaped JSON body, and the
connection stays usable for the next request.

Each request becomes one sequence in the worker's batch loop
(``worker.batching``): no thread per request. The engine's thread wakes the
loop (``Request.wake`` -> ``call_soon_threadsafe``) after each event it puts
on the request's queue, and the handler reads the queue. ``generation`` is
the one place a request turns into events.

Deterministic requests go through the result cache first (``worker.cache``,
``_from_cache``): a hit is answered from it, marked ``llmo.cached``, without
generating (a streamed hit sends the stored text as one chunk, then the final
chunk); a miss is stored once it finishes. ``"cache": false`` in a body opts
that request out; the attempt's ``LLM_CACHE`` policy (on its meter) decides
which requests are cacheable.

Refusals, each naming what is wrong: a request naming a model other than the
one loaded is 404, never an answer from the wrong model; with no model loaded
a generation is 503; bad sampling values (``worker.sampling``), ``n`` other
than 1, a body that is not a JSON object or is nested deeper than Python's
parser goes are 400; a body over ``MAX_BODY`` is 413.

Load: requests beyond the model's sequence slots wait in the engine's queue,
at most ``max_queued`` of them (``MAX_QUEUED`` unless configured); past that
a request is answered at once with 503 and ``Retry-After``, never reset.

A client that goes away (streaming or not) cancels its generation: aiohttp
cancels the handler when the connection closes, and the engine drops the
request at its next decode step. So does an attempt that ends (its meter is
cancelled) and an unload.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import socket
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from llmo.worker.batching import Delta, Done, Event, Failed, Request
from llmo.worker.cache import ResultCache, cacheable, check_policy, key_for, request_params
from llmo.worker.llm import Cancelled, NotHot, Runtime
from llmo.worker.meter import Meters
from llmo.worker.sampling import SamplingParams
from llmo.worker.shapes import Shape

log = logging.getLogger("llmo.worker.api")

MAX_BODY = 16 * 1024 * 1024
MAX_QUEUED = 64  # requests waiting for a sequence slot before new ones get 503
RETRY_AFTER_S = 1
BACKLOG = 1024  # pending connections the kernel holds while the loop accepts
ATTEMPT_HEADER = "X-LLMO-Attempt"

SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "min_p",
    "top_k",
    "typical_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "logit_bias",
)
# Fields that change what an answer means and that this endpoint cannot honour.
UNSUPPORTED = ("suffix", "echo", "logprobs", "top_logprobs", "tools", "functions")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headers = headers or {}


def error_response(error: ApiError) -> web.Response:
    body = {"error": {"message": str(error), "type": error.kind, "code": None}}
    return web.json_response(body, status=error.status, headers=error.headers)


class ApiServer:
    def __init__(
        self,
        runtime: Runtime,
        meters: Meters,
        host: str = "127.0.0.1",
        port: int = 0,
        max_queued: int = MAX_QUEUED,
        cache: ResultCache | None = None,
    ) -> None:
        self.runtime = runtime
        self.meters = meters
        self.cache = cache
        self.max_queued = max_queued
        self.requests = 0  # generation requests received (read by heartbeats)
        self.sock = socket.create_server((host, port), backlog=BACKLOG)
        self.sock.setblocking(False)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="llm-api", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> ApiServer:
        self._thread.start()
        self._ready.wait()
        log.info("OpenAI-compatible endpoint on %s", self.base_url)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            done = asyncio.run_coroutine_threadsafe(self._cleanup(), self.loop)
            done.result(timeout=30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.sock.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors])
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model:.+}", self.model)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.SockSite(runner, self.sock, backlog=BACKLOG).start())
        self._runner = runner
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- what the endpoint serves ------------------------------------------------------

    def serves(self, requested: Any) -> bool:
        """Whether a request's ``model`` names the loaded model (absent: yes)."""
        if requested in (None, ""):
            return True
        spec = self.runtime.spec
        if spec is None or self.runtime.state != "hot":
            return False
        return isinstance(requested, str) and spec.answers_to(requested)

    def not_loaded(self, requested: Any) -> ApiError:
        runtime = self.runtime
        loaded = runtime.spec.name if runtime.spec and runtime.state == "hot" else "none"
        return ApiError(
            404, f"model {requested!r} is not loaded here (loaded: {loaded})", "model_not_found"
        )

    def _model_card(self) -> dict[str, Any] | None:
        runtime = self.runtime
        if runtime.state != "hot" or runtime.spec is None:
            return None
        return {"id": runtime.spec.name, "object": "model", "created": 0, "owned_by": "llmo"}

    def load(self) -> tuple[int, int, int]:
        """(sequences generating, requests queued for a slot, slots)."""
        engine = self.runtime.engine
        slots = self.runtime.slots
        if engine is None:
            return 0, 0, slots
        busy = sum(1 for s in engine.slots if s.run is not None)
        return busy, max(0, engine.active - busy), slots

    # --- routes ------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        busy, queued, slots = self.load()
        runtime = self.runtime
        return web.json_response(
            {
                "status": "ok",
                "state": runtime.state,
                "model": runtime.model,
                "slots": {"busy": busy, "total": slots},
                "queued": queued,
                "max_queued": self.max_queued,
                "requests": self.requests,
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        card = self._model_card()
        return web.json_response({"object": "list", "data": [card] if card else []})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        card = self._model_card()
        if card is None or not self.serves(name):
            raise self.not_loaded(name)
        return web.json_response({**card, "id": name})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    # --- generation ----------------------------------------------------------------------

    async def _complete(self, http: web.Request, chat: bool) -> web.StreamResponse:
        body = await _json_body(http)
        self.requests += 1
        self._admit()
        try:
            request = await asyncio.to_thread(build_request, self, body, chat)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except NotHot as exc:
            raise ApiError(503, str(exc), "model_not_loaded") from None
        auth = http.headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        request.meter = self.meters.resolve(key, http.headers.get(ATTEMPT_HEADER))
        shape = Shape(name=self.runtime.model, chat=chat)
        stored, store = await asyncio.to_thread(self._from_cache, body, request, shape)
        if stored is not None:
            return await self._answer_cached(http, body, shape, stored)
        events = self.generation(request, store)
        try:
            try:
                first = await anext(events)  # refusals (not hot, too long) come before it
            except (NotHot, Cancelled) as exc:
                raise ApiError(503, str(exc), "model_not_loaded") from None
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
            if not body.get("stream"):
                return await _whole(shape, first, events)
            options = body.get("stream_options")
            usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return await _stream(http, shape, first, events, usage)
        finally:
            request.cancel()  # a client gone away frees its slot at the next decode step
            await events.aclose()

    def _admit(self) -> None:
        """Refuse at once, politely, when the queue for a sequence slot is full."""
        busy, queued, slots = self.load()
        if slots and queued >= self.max_queued:
            raise ApiError(
                503,
                f"the model is busy ({busy} of {slots} sequences generating, {queued} "
                f"requests queued, at most {self.max_queued}): retry after {RETRY_AFTER_S}s",
                "server_busy",
                {"Retry-After": str(RETRY_AFTER_S)},
            )

    def _from_cache(
        self, body: dict[str, Any], request: Request, shape: Shape
    ) -> tuple[Done | None, Callable[[Done], object] | None]:
        """The result cache around one request (``worker.cache``; blocking: run it off
        the loop). A hit: the stored result, counted on the attempt's meter as a hit
        with no generated token. A miss: ``store``, which keeps a finished result
        when the request is cacheable (None when it is not)."""
        results, meter = self.cache, request.meter
        opt = body.get("cache", True)
        if not isinstance(opt, bool):
            raise ApiError(400, f"'cache' must be true or false (got {opt!r})")
        try:
            policy = check_policy(meter.cache_policy if meter is not None else None)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        model_hash, model = self.runtime.model_hash, shape.name
        if results is None or not opt or not model_hash or not cacheable(policy, request):
            return None, None
        key = key_for(model_hash, request.prompt, request_params(request))
        stored = results.get(key, model)
        if stored is None:
            return None, lambda done: results.put(key, done, model=model, model_hash=model_hash)
        if meter is not None:
            meter.cache_hits += 1
            meter.cache_hit_tokens += stored.completion_tokens
        return replace(stored, cached_tokens=stored.prompt_tokens), None

    async def _answer_cached(
        self, http: web.Request, body: dict[str, Any], shape: Shape, done: Done
    ) -> web.StreamResponse:
        mark = {"llmo": {"cached": True, **({"capped_by_context": True} if done.capped else {})}}

        async def replay() -> AsyncGenerator[Event, None]:
            yield done

        if not body.get("stream"):
            return await _whole(shape, done, replay(), mark)
        options = body.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return await _stream(http, shape, Delta(text=done.text), replay(), usage, mark)

    async def generation(
        self, request: Request, store: Callable[[Done], object] | None = None
    ) -> AsyncGenerator[Event, None]:
        """``request``'s events: ``Delta`` pieces, then one ``Done`` (a ``Failed`` raises);
        ``store`` keeps the ``Done`` (the result cache) before it is yielded.

        Raises NotHot or ValueError before the first event when the runtime
        refuses the request.
        """
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the loop closed (the worker stops)
                pass

        request.wake = wake
        self.runtime.submit(request)
        while True:
            try:
                event = request.events.get_nowait()
            except queue.Empty:
                await ready.wait()
                ready.clear()
                continue
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Done) and store is not None:
                await asyncio.to_thread(store, event)
            yield event
            if isinstance(event, Done):
                return


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every refusal as an OpenAI-shaped JSON error (aiohttp's own ones too)."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as error:
        return error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no route {request.method} {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 413:
            message = f"request body over {MAX_BODY} bytes"
        else:
            message = exc.text or exc.reason
        return error_response(ApiError(exc.status, message))


async def _json_body(http: web.Request) -> dict[str, Any]:
    raw = await http.read()  # aiohttp answers 413 past client_max_size
    try:
        body = json.loads(raw or b"null")
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply to parse") from None
    except ValueError as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def build_request(api: ApiServer, body: dict[str, Any], chat: bool) -> Request:
    """The engine request for ``body`` (tokenized); ApiError/ValueError name what is wrong."""
    if not api.serves(body.get("model")):
        raise api.not_loaded(body.get("model"))
    n = body.get("n", 1)
    if n not in (None, 1):
        raise ApiError(400, f"'n' must be 1 here (got {n!r}): send one request per choice")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False, 0, "", [], {}):
            raise ApiError(400, f"'{name}' is not supported by this endpoint")
    runtime = api.runtime
    stops: tuple[str, ...] = ()
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list")
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type", "text") != "text":
            raise ApiError(400, "'response_format' other than text is not supported")
        prompt, stops = runtime.chat_prompt(messages)
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    else:
        text = body.get("prompt", "")
        if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str):
            text = text[0]
        if not isinstance(text, str):
            raise ApiError(400, "'prompt' must be a string")
        prompt = runtime.tokenize(text)
        max_tokens = body.get("max_tokens", 16)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int | None):
        raise ApiError(400, f"'max_tokens' must be an integer (got {max_tokens!r})")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(x, str) for x in stop)):
        raise ApiError(400, "'stop' must be a string or a list of strings")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise ApiError(400, "'stream_options' must be an object")
    sampling = SamplingParams.checked(**{k: body.get(k) for k in SAMPLING_FIELDS})
    return Request(
        prompt=prompt,
        sampling=sampling,
        stop=tuple(x for x in (*stops, *(stop or ())) if x),
        max_tokens=max_tokens,
    )


async def _whole(
    shape: Shape, event: Event, events: AsyncIterator[Event], extra: dict[str, Any] | None = None
) -> web.Response:
    try:
        while not isinstance(event, Done):
            event = await anext(events)
    except Cancelled as exc:
        raise ApiError(503, f"generation stopped: {exc}", "cancelled") from None
    except RuntimeError as exc:
        raise ApiError(500, str(exc), "server_error") from None
    return web.json_response({**shape.result(event), **(extra or {})})


async def _stream(
    http: web.Request,
    shape: Shape,
    event: Event,
    events: AsyncIterator[Event],
    include_usage: bool,
    extra: dict[str, Any] | None = None,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(http)

    async def send(data: Any) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        await response.write(f"data: {text}\n\n".encode())  # waits while the client is slow

    try:
        if shape.chat:
            await send(shape.chunk(role=True))
        while True:
            if isinstance(event, Delta):
                await send(shape.chunk(text=event.text))
            elif isinstance(event, Done):
                last = {**shape.chunk(done=event), **(extra or {})}
                if include_usage:
                    usage = last.pop("usage")
                    await send(last)
                    await send({**shape.chunk(), "choices": [], "usage": usage})
                else:
                    await send(last)
                break
            event = await anext(events)
        await send("[DONE]")
    except ConnectionResetError:
        log.debug("a streaming client went away; its generation is cancelled")
        return response
    except Cancelled as exc:
        await send({"error": {"message": f"generation stopped: {exc}", "type": "cancelled"}})
    except RuntimeError as exc:
        await send({"error": {"message": str(exc), "type": "server_error"}})
    await response.write_eof()
    return response
