"""The OpenAI-compatible endpoint a hot worker serves to its own tasks.

Theory of operation
-------------------
A ``ThreadingHTTPServer`` from the standard library, bound to 127.0.0.1 on a
port the kernel picks, in a daemon thread. Tasks find it through
``LLM_API_BASE`` (``http://127.0.0.1:<port>/v1``) and ``LLM_MODEL`` in their
environment (``BRAIN_*`` on a brain-role worker; also under the original
system's names ``WORKER_API_BASE`` and ``WORKER_MODEL``), and identify
themselves with the bearer key ``LLM_API_KEY`` (see ``worker.meter``).

Routes: ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions``, each with ``"stream": true`` answered as
server-sent events (``data: {...}`` lines, then ``data: [DONE]``) on a
connection that closes after the stream. Bodies are OpenAI-shaped
(``worker.shapes``) with ``model`` set to the worker's model name, and
``usage.prompt_tokens_details.cached_tokens`` counting reused prompt tokens.

Each request becomes one sequence in the worker's batch loop
(``worker.batching``): a handler thread only tokenizes, submits, and reads
the request's event queue, so concurrent requests generate together.
Sampling values are checked first (``worker.sampling``): a bad one is a 400
naming the field.

A request naming a model other than the one loaded gets 404, never an answer
from the wrong model; with no model loaded every generation gets 503. A
client that goes away mid-stream ends its generation at once, and so does an
attempt that ends (its meter is cancelled) or an unload.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llmo.worker.batching import Request
from llmo.worker.llm import Cancelled, NotHot, Runtime
from llmo.worker.meter import Meters
from llmo.worker.sampling import SamplingParams
from llmo.worker.shapes import Shape

log = logging.getLogger("llmo.worker.api")

MAX_BODY = 16 * 1024 * 1024
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
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class ApiServer:
    def __init__(
        self, runtime: Runtime, meters: Meters, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.runtime = runtime
        self.meters = meters
        handler = type("Handler", (_Handler,), {"api": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="llm-api"
        )
        self._thread.daemon = True

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> ApiServer:
        self._thread.start()
        log.info("OpenAI-compatible endpoint on %s", self.base_url)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()

    # --- requests ------------------------------------------------------------------

    def serves(self, requested: Any) -> bool:
        """Whether a request's ``model`` names the loaded model (absent: yes)."""
        if requested in (None, ""):
            return True
        spec = self.runtime.spec
        if spec is None or self.runtime.state != "hot":
            return False
        return isinstance(requested, str) and spec.answers_to(requested)


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer
    protocol_version = "HTTP/1.1"
    server_version = "llmo-worker"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # --- plumbing --------------------------------------------------------------------

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: ApiError) -> None:
        self._send_json(
            error.status, {"error": {"message": str(error), "type": error.kind, "code": None}}
        )

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "a Content-Length header is required") from None
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    # --- routes ---------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/models":
            runtime = self.api.runtime
            data = []
            if runtime.state == "hot" and runtime.spec is not None:
                data.append({"id": runtime.spec.name, "object": "model", "owned_by": "llmo"})
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_error(ApiError(404, f"no route GET {path}"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path == "/v1/completions":
                chat = False
            elif path == "/v1/chat/completions":
                chat = True
            else:
                raise ApiError(404, f"no route POST {path}")
            body = self._body()
            self._generate(body, chat)
        except ApiError as error:
            self._send_error(error)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _request(self, body: dict[str, Any], chat: bool) -> Request:
        """The engine request for ``body``; ApiError names what is wrong with it."""
        if not self.api.serves(body.get("model")):
            runtime = self.api.runtime
            loaded = runtime.spec.name if runtime.spec and runtime.state == "hot" else "none"
            raise ApiError(
                404,
                f"model {body.get('model')!r} is not loaded here (loaded: {loaded})",
                "model_not_found",
            )
        if body.get("n", 1) != 1:
            raise ApiError(400, "only n=1 is supported")
        for name in UNSUPPORTED:
            if body.get(name) not in (None, False, 0, "", [], {}):
                raise ApiError(400, f"'{name}' is not supported by this endpoint")
        runtime = self.api.runtime
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
        if stop is not None and not (
            isinstance(stop, list) and all(isinstance(x, str) for x in stop)
        ):
            raise ApiError(400, "'stop' must be a string or a list of strings")
        sampling = SamplingParams.checked(**{k: body.get(k) for k in SAMPLING_FIELDS})
        return Request(
            prompt=prompt,
            sampling=sampling,
            stop=tuple(x for x in (*stops, *(stop or ())) if x),
            max_tokens=max_tokens,
        )

    def _generate(self, body: dict[str, Any], chat: bool) -> None:
        runtime = self.api.runtime
        try:
            request = self._request(body, chat)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except NotHot as exc:
            raise ApiError(503, str(exc), "model_not_loaded") from None
        auth = self.headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        request.meter = self.api.meters.resolve(key, self.headers.get(ATTEMPT_HEADER))
        name = runtime.spec.name if runtime.spec is not None else ""
        shape = Shape(name=name, chat=chat)
        try:
            runtime.submit(request)
        except NotHot as exc:
            raise ApiError(503, str(exc), "model_not_loaded") from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        stream = bool(body.get("stream"))
        streaming = False
        try:
            if not stream:
                self._send_json(200, shape.result(request.result()))
                return
            self._start_stream()
            streaming = True
            if chat:
                self._event(shape.chunk(role=True))
            pieces = request.stream()
            while True:
                try:
                    self._event(shape.chunk(text=next(pieces)))
                except StopIteration as end:
                    self._event(shape.chunk(done=end.value))
                    break
            self._event("[DONE]")
        except Cancelled as exc:
            if not streaming:
                raise ApiError(503, f"generation stopped: {exc}", "cancelled") from None
            self._event({"error": {"message": f"generation stopped: {exc}", "type": "cancelled"}})
        except RuntimeError as exc:
            if not streaming:
                raise ApiError(500, str(exc), "server_error") from None
            self._event({"error": {"message": str(exc), "type": "server_error"}})
        finally:
            request.cancel()  # a client gone mid-stream frees its slot at the next step

    def _start_stream(self) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()

    def _event(self, data: Any) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        self.wfile.write(f"data: {text}\n\n".encode())
        self.wfile.flush()
