"""The worker's endpoint as the official ``openai`` client and plain HTTP clients see it.

Against a real worker with the real model: each client call, errors that
leave the keep-alive connection usable, clients that go away, many
connections at once, and bodies built to break a parser.
"""

from __future__ import annotations

import collections
import http.client
import json
import socket
import threading

import openai
import pytest

from llmo.proto.messages import Register
from tests.test_worker_llm import llm_setup, load  # noqa: F401  (fixture)
from tests.waiting import wait_until
from tests.worker_fixtures import (  # noqa: F401  (fixtures)
    brain_factory,
    model_path,
    worker_factory,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MODEL = "gemma-3-270m-q4_k_m"
LONG = 1500  # tokens a generation would run to if nothing stopped it


@pytest.fixture
def hot(llm_setup):  # noqa: F811
    """A worker with the model hot: its ``Worker``."""
    brain, worker = llm_setup(slots=1, parallel=4)
    load(brain)
    return worker.worker


def client(worker) -> openai.OpenAI:
    return openai.OpenAI(base_url=worker.api.base_url, api_key="none", max_retries=0, timeout=60)


def connect(worker) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", worker.api.port, timeout=60)


def post(conn: http.client.HTTPConnection, path: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_the_official_client_lists_retrieves_and_completes(hot):
    with client(hot) as oa:
        assert [m.id for m in oa.models.list().data] == [MODEL]
        assert oa.models.retrieve(MODEL).id == MODEL
        with pytest.raises(openai.NotFoundError):
            oa.models.retrieve("some-other-model")

        done = oa.completions.create(
            model=MODEL, prompt="The three primary colours are", max_tokens=6, temperature=0
        )
        assert done.choices[0].text and done.usage.completion_tokens > 0

        pieces = list(
            oa.completions.create(
                model=MODEL, prompt="One, two, three,", max_tokens=6, temperature=0, stream=True
            )
        )
        assert "".join(p.choices[0].text for p in pieces if p.choices)
        assert pieces[-1].choices[0].finish_reason in ("stop", "length")

        chat = oa.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=6
        )
        assert chat.choices[0].message.role == "assistant"
        assert chat.usage.completion_tokens > 0

        chunks = list(
            oa.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Count to five."}],
                max_tokens=6,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert reasons[-1] in ("stop", "length")
        last = chunks[-1]
        assert last.choices == [] and last.usage is not None
        streamed = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
        assert last.usage.completion_tokens >= streamed > 0

        with pytest.raises(openai.BadRequestError) as refused:
            oa.completions.create(model=MODEL, prompt="Hi", max_tokens=2, n=2)
        assert "'n'" in refused.value.message


def test_a_capped_max_tokens_says_so(hot):
    prompt = "one two three four " * 500  # leaves a sequence's context little room
    with client(hot) as oa:
        done = oa.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=10**6,
            temperature=0,
            logit_bias={"1": -100, "106": -100},  # Gemma's end tokens: only the cap ends it
        )
    assert done.usage.prompt_tokens + done.usage.completion_tokens == 2048
    assert done.choices[0].finish_reason == "length"
    assert done.model_dump()["llmo"] == {"capped_by_context": True}


def test_error_answers_leave_the_keep_alive_connection_usable(hot):
    conn = connect(hot)
    ok = {"prompt": "Hello", "max_tokens": 2, "temperature": 0}
    answers = [
        post(conn, "/v1/no-such-route", {"prompt": "x" * 5000}),
        post(conn, "/v1/completions", ok),
        post(conn, "/v1/completions", b"[" * 100_000 + b"]" * 100_000),
        post(conn, "/v1/completions", ok),
        post(conn, "/v1/completions", {**ok, "model": "some-other-model"}),
        post(conn, "/v1/completions", ok),
        post(conn, "/v1/completions", {**ok, "temperature": -1}),
        post(conn, "/v1/completions", ok),
    ]
    conn.close()
    assert [status for status, _ in answers] == [404, 200, 400, 200, 404, 200, 400, 200]
    assert "nested" in answers[2][1]["error"]["message"]
    assert "temperature" in answers[6][1]["error"]["message"]


def test_a_body_over_the_limit_is_413_and_the_endpoint_serves_on(hot):
    conn = connect(hot)
    status, body = post(conn, "/v1/completions", b" " * (17 * 1024 * 1024))
    conn.close()
    assert status == 413 and "body" in body["error"]["message"]
    conn = connect(hot)
    assert post(conn, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})[0] == 200
    conn.close()


def _send_raw(worker, body: dict) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", worker.api.port), timeout=60)
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    sock.sendall(head + data)
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_stops_its_generation(hot, stream):
    runtime = hot.runtime
    before = runtime.total_tokens
    body = {"prompt": "Write a long story.", "max_tokens": LONG, "temperature": 0}
    body["logit_bias"] = {"1": -100, "106": -100}  # Gemma's end tokens: it never ends by itself
    sock = _send_raw(hot, {**body, "stream": stream})
    try:
        if stream:
            seen = b""
            while b"data: " not in seen:  # generating
                seen += sock.recv(4096)
        else:
            assert wait_until(lambda: runtime.total_tokens > before)
    finally:
        sock.close()
    assert wait_until(lambda: runtime.in_flight == 0, 60)
    generated = runtime.total_tokens - before
    print(f"tokens generated before the client went away was noticed: {generated} of {LONG}")
    assert generated < LONG


def test_two_hundred_connections_are_all_answered(hot):
    results: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    go = threading.Barrier(200)

    def one(i: int) -> None:
        conn = connect(hot)
        try:
            conn.connect()
            go.wait(60)
            body = {"prompt": f"Item {i}:", "max_tokens": 2, "temperature": 0}
            conn.request("POST", "/v1/completions", body=json.dumps(body).encode())
            response = conn.getresponse()
            payload = json.loads(response.read())
            if response.status == 200:
                outcome = "served" if payload["choices"] else "malformed"
            elif response.status == 503 and response.getheader("Retry-After"):
                outcome = "busy" if "busy" in payload["error"]["message"] else "malformed"
            else:
                outcome = f"status {response.status}"
        except Exception as exc:
            outcome = type(exc).__name__
        finally:
            conn.close()
        with lock:
            results[outcome] += 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    print(f"200 concurrent connections: {dict(results)}")
    assert set(results) <= {"served", "busy"}, results
    assert sum(results.values()) == 200 and results["served"] > 0
    assert wait_until(lambda: hot.runtime.in_flight == 0)


def test_health_reports_the_model_slots_and_queue(hot):
    conn = connect(hot)
    conn.request("GET", "/health")
    response = conn.getresponse()
    health = json.loads(response.read())
    conn.close()
    assert response.status == 200
    assert health["state"] == "hot" and health["model"] == MODEL
    assert health["slots"] == {"busy": 0, "total": 4}
    assert health["queued"] == 0 and health["max_queued"] > 0


def test_the_brain_hears_of_the_endpoint_and_of_requests_in_flight(llm_setup):  # noqa: F811
    brain, running = llm_setup(slots=1, parallel=4)
    worker = running.worker
    assert brain.expect(Register, src="gpu-t").endpoint == worker.api.base_url
    load(brain)
    assert brain.heartbeat("gpu-t", state="hot").llm_requests == 0
    body = {"prompt": "Write a long story.", "max_tokens": LONG, "stream": True}
    sock = _send_raw(worker, {**body, "logit_bias": {"1": -100, "106": -100}})
    try:
        assert brain.heartbeat("gpu-t", llm_requests=1)  # one in flight, beat after beat
        assert brain.heartbeat("gpu-t", llm_requests=1)
    finally:
        sock.close()
    assert wait_until(lambda: worker.runtime.in_flight == 0)
    brain.heartbeat("gpu-t")  # the beat that may still count the request
    assert brain.heartbeat("gpu-t").llm_requests == 0
