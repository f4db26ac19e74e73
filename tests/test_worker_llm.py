"""The LLM runtime with the real model: load, the endpoint from a task, tokens, unload."""

from __future__ import annotations

import json
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

from llmo.proto.messages import (
    Heartbeat,
    ModelLoad,
    ModelStatus,
    ModelUnload,
    Register,
    TaskAssign,
    TaskCancel,
    TaskDone,
    TaskFailed,
    TaskProgress,
    TaskStarted,
)
from tests.worker_fixtures import (  # noqa: F401  (fixtures)
    brain_factory,
    model_path,
    worker_factory,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CLIENT = textwrap.dedent(
    """
    import json, os, sys, urllib.error, urllib.request

    base, key, model = (os.environ[k] for k in ("LLM_API_BASE", "LLM_API_KEY", "LLM_MODEL"))

    def post(path, body):
        request = urllib.request.Request(
            base + path,
            data=json.dumps(body).encode(),
            headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
        )
        return urllib.request.urlopen(request, timeout=120)

    out = {"base": base, "model": model}
    out["models"] = json.load(urllib.request.urlopen(base + "/models", timeout=10))
    body = {"model": model, "prompt": "The three primary colours are", "max_tokens": 12}
    out["completion"] = json.load(post("/completions", {**body, "temperature": 0}))
    chunks = []
    stream = {"prompt": "One, two, three, four,", "max_tokens": 8, "temperature": 0}
    with post("/completions", {**stream, "stream": True}) as response:
        for line in response:
            line = line.decode().strip()
            if line == "data: [DONE]":
                out["done"] = True
            elif line.startswith("data: "):
                chunks.append(json.loads(line[6:]))
    out["chunks"] = chunks
    chat = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    out["chat"] = json.load(post("/chat/completions", {**chat, "temperature": 0}))
    try:
        post("/completions", {"model": "some-other-model", "prompt": "x"})
    except urllib.error.HTTPError as exc:
        out["wrong_model"] = exc.code
    json.dump(out, sys.stdout)
    """
)


@pytest.fixture
def llm_setup(running_broker, brain_factory, worker_factory, model_path):  # noqa: F811
    def start(**config):
        brain = brain_factory(running_broker.endpoint)
        worker = worker_factory(running_broker.endpoint, models=(str(model_path),), **config)
        brain.heartbeat(worker.name)
        return brain, worker

    return start


def llm_task(tmp_path, task_id, command, cls="llm") -> TaskAssign:
    return TaskAssign(
        dst="gpu-t",
        batch_id="b",
        task_id=task_id,
        attempt_id=f"b:{task_id}:1",
        task_class=cls,
        command=command,
        batch_path=str(tmp_path),
        grace_s=1.0,
    )


def load(brain, model="gemma-3-270m-q4_k_m") -> ModelStatus:
    brain.send(ModelLoad(dst="gpu-t", model=model, n_ctx=2048))
    brain.expect(ModelStatus, src="gpu-t", state="loading", model=model)
    hot = brain.expect(ModelStatus, src="gpu-t", model=model, timeout=60)
    assert hot.state == "hot", hot.error
    return hot


def test_load_serve_count_and_unload(llm_setup, tmp_path):
    brain, worker = llm_setup()
    hot = load(brain)
    assert hot.load_s > 0
    beat = brain.heartbeat("gpu-t", state="hot")
    assert beat.model == "gemma-3-270m-q4_k_m"

    (tmp_path / "client.py").write_text(CLIENT)
    msg = brain.send(llm_task(tmp_path, "ask", f"{sys.executable} client.py > out.json"))
    brain.expect(TaskStarted, attempt_id=msg.attempt_id)
    done = brain.expect(TaskDone, attempt_id=msg.attempt_id, timeout=120)
    out = json.loads((tmp_path / "out.json").read_text())

    assert out["base"] == worker.worker.api.base_url and out["model"] == "gemma-3-270m-q4_k_m"
    assert [m["id"] for m in out["models"]["data"]] == ["gemma-3-270m-q4_k_m"]
    completion = out["completion"]
    assert completion["model"] == "gemma-3-270m-q4_k_m" and completion["choices"][0]["text"]
    assert out["done"] and out["chunks"][-1]["choices"][0]["finish_reason"] == "length"
    assert out["wrong_model"] == 404
    generated = (
        completion["usage"]["completion_tokens"] + 8 + out["chat"]["usage"]["completion_tokens"]
    )
    assert done.tokens == generated
    assert done.tok_s > 0
    progress = [m for m in brain.seen if isinstance(m, TaskProgress)]
    assert progress and all(p.attempt_id == msg.attempt_id for p in progress)
    assert [p.tokens for p in progress] == sorted(p.tokens for p in progress)
    assert 0 < progress[-1].tokens <= done.tokens
    assert any(m.tok_s > 0 for m in brain.seen if isinstance(m, Heartbeat))

    brain.send(ModelUnload(dst="gpu-t", reason="test"))
    brain.expect(ModelStatus, src="gpu-t", state="cold")
    beat = brain.heartbeat("gpu-t", state="cold")
    assert beat.model == ""
    models = json.load(urllib.request.urlopen(out["base"] + "/models", timeout=10))
    assert models["data"] == []
    request = urllib.request.Request(
        out["base"] + "/completions", data=b'{"prompt": "x"}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 503
    refused.value.close()


def test_a_cancelled_attempt_stops_its_generation(llm_setup, tmp_path):
    brain, _ = llm_setup()
    load(brain)
    long = (
        "import json, os, urllib.request\n"
        "body = json.dumps({'prompt': 'Write a very long story.', 'max_tokens': 1500}).encode()\n"
        "req = urllib.request.Request(os.environ['LLM_API_BASE'] + '/completions', data=body,\n"
        "    headers={'Authorization': 'Bearer ' + os.environ['LLM_API_KEY']})\n"
        "urllib.request.urlopen(req, timeout=300).read()\n"
    )
    (tmp_path / "long.py").write_text(long)
    msg = brain.send(llm_task(tmp_path, "long", f"exec {sys.executable} long.py"))
    brain.expect(TaskProgress, attempt_id=msg.attempt_id, timeout=30)
    brain.send(TaskCancel(dst="gpu-t", batch_id="b", task_id="long", attempt_id=msg.attempt_id))
    failed = brain.expect(TaskFailed, attempt_id=msg.attempt_id)
    assert failed.reason == "aborted" and 0 < failed.tokens < 1500
    # The model is free again at once, not after 1500 tokens: had the cancelled
    # generation gone on, the short request would queue behind about a minute
    # of it on one thread, past the generous timeout that guards this wait.
    (tmp_path / "short.py").write_text(long.replace("1500", "4"))
    short = brain.send(llm_task(tmp_path, "short", f"{sys.executable} short.py"))
    done = brain.expect(TaskDone, attempt_id=short.attempt_id, timeout=30)
    assert done.tokens == 4


def test_meta_assignments_are_refused_the_brain_drives_the_runtime(llm_setup, tmp_path):
    """Meta tasks are the brain's to run, with ModelLoad and ModelUnload: an
    assignment of one is refused, saying so, and the runtime is left alone."""
    brain, worker = llm_setup()
    for task_id, command in (("load", "load_llm"), ("unload", "unload_llm")):
        msg = brain.send(llm_task(tmp_path, task_id, command, cls="meta"))
        failed = brain.expect(TaskFailed, attempt_id=msg.attempt_id)
        assert failed.reason == "refused", failed
        assert "runs no meta tasks" in failed.error and "ModelLoad" in failed.error
    beat = brain.heartbeat("gpu-t", state="cold", model="")
    assert beat.active == ()
    assert worker.worker.runtime.state == "cold"
    assert not [m for m in brain.seen if isinstance(m, ModelStatus)]


def test_a_model_named_by_path_is_reported_by_that_name(llm_setup, model_path):  # noqa: F811
    brain, _ = llm_setup()
    register = brain.expect(Register, src="gpu-t")
    assert register.models == ("gemma-3-270m-q4_k_m", str(model_path))
    load(brain, model=str(model_path))
    brain.heartbeat("gpu-t", state="hot", model=str(model_path))


def test_a_brain_role_worker_gives_its_tasks_the_brain_endpoint(llm_setup, tmp_path):
    brain, worker = llm_setup(role="brain")
    load(brain)
    msg = brain.send(llm_task(tmp_path, "think", "env -0 > env.bin", cls="brain"))
    brain.expect(TaskDone, attempt_id=msg.attempt_id)
    pairs = (tmp_path / "env.bin").read_bytes().decode().split("\0")
    env = dict(pair.split("=", 1) for pair in pairs if pair)
    assert env["BRAIN_API_BASE"] == worker.worker.api.base_url
    assert env["BRAIN_MODEL"] == "gemma-3-270m-q4_k_m"
    assert env["BRAIN_API_KEY"].startswith("llmo-")
    assert not any(key.startswith("LLM_") for key in env)
    # The original's names, which its scripts read.
    assert env["WORKER_API_BASE"] == worker.worker.api.base_url
    assert env["WORKER_MODEL"] == "gemma-3-270m-q4_k_m"
    assert env["WORKER_NAME"] == "gpu-t"


def test_bad_models_fail_cleanly_and_the_worker_stays_usable(llm_setup, tmp_path):
    brain, _ = llm_setup()
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello, I am not a model")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    cases = [
        (str(tmp_path / "missing.gguf"), "does not exist"),
        (str(not_gguf), "not a GGUF file"),
        (str(broken), "cannot load"),
        ("no-such-model", "unknown model"),
    ]
    for model, reason in cases:
        brain.send(ModelLoad(dst="gpu-t", model=model))
        status = brain.expect(ModelStatus, src="gpu-t", state="failed", model=model, timeout=30)
        assert reason in status.error, status.error
    brain.heartbeat("gpu-t", state="cold", model="")
    msg = brain.send(llm_task(tmp_path, "after", "echo still here", cls="cpu"))
    done = brain.expect(TaskDone, attempt_id=msg.attempt_id)
    assert "still here" in done.log_tail
