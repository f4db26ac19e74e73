"""The result cache in a real worker with the real model: a re-run generates nothing."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

from llmo.proto.messages import TaskDone
from llmo.worker.cache import ResultCache
from tests.test_worker_llm import llm_setup, llm_task, load  # noqa: F401  (fixture)
from tests.worker_fixtures import (  # noqa: F401  (fixtures)
    brain_factory,
    model_path,
    worker_factory,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CLIENT = textwrap.dedent(
    """
    import json, os, sys, urllib.request

    base, key = os.environ["LLM_API_BASE"], os.environ["LLM_API_KEY"]
    extra = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}

    def post(path, body):
        request = urllib.request.Request(
            base + path, data=json.dumps({**body, **extra}).encode(),
            headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
        )
        return urllib.request.urlopen(request, timeout=120)

    out = {}
    greedy = {"prompt": "The three primary colours are", "max_tokens": 12, "temperature": 0}
    out["completion"] = json.load(post("/completions", greedy))
    chat = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
            "temperature": 0}
    out["chat"] = json.load(post("/chat/completions", chat))
    chunks = []
    stream = {"prompt": "One, two, three, four,", "max_tokens": 8, "temperature": 0,
              "stream": True}
    with post("/completions", stream) as response:
        for line in response:
            line = line.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    out["chunks"] = chunks
    out["sampled"] = json.load(post("/completions", {**greedy, "temperature": 0.9}))
    json.dump(out, sys.stdout)
    """
)


def streamed_text(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["text"] for c in chunks)


def run_task(brain, tmp_path, name: str, env: dict[str, str] | None = None, extra: str = ""):
    command = f"{sys.executable} client.py {extra} > {name}.json"
    msg = llm_task(tmp_path, name, command)
    if env:
        msg = dataclasses.replace(msg, env=env)
    brain.send(msg)
    # (no TaskStarted to wait for: a task served from the cache may end before it is due)
    done = brain.expect(TaskDone, attempt_id=msg.attempt_id, timeout=120)
    return done, json.loads((tmp_path / f"{name}.json").read_text())


def test_a_rerun_of_greedy_requests_generates_no_token_and_answers_the_same(
    llm_setup,  # noqa: F811
    tmp_path,
    caplog,
):
    caplog.set_level("INFO", logger="llmo.worker")
    cache_dir = tmp_path / "cache"
    brain, _ = llm_setup(cache_dir=str(cache_dir))
    load(brain)
    (tmp_path / "client.py").write_text(CLIENT)

    first_done, first = run_task(brain, tmp_path, "first")
    second_done, second = run_task(brain, tmp_path, "second")

    sampled = second["sampled"]["usage"]["completion_tokens"]
    assert first_done.tokens > first["sampled"]["usage"]["completion_tokens"]
    # Only the sampled (temperature 0.9) request generated again.
    assert second_done.tokens == sampled > 0
    for name in ("completion", "chat"):
        a, b = first[name], second[name]
        assert b["choices"] == a["choices"], name
        assert b["usage"]["completion_tokens"] == a["usage"]["completion_tokens"] > 0
        assert (b["llmo"]["cached"] is True and "llmo" not in a) or not a["llmo"].get("cached")
    # A cached stream: the stored text as one chunk, then the final chunk.
    assert streamed_text(second["chunks"]) == streamed_text(first["chunks"])
    assert [c["choices"][0]["finish_reason"] for c in second["chunks"]] == [None, "length"]
    assert second["chunks"][-1]["llmo"] == {"cached": True}
    assert "llmo" not in second["sampled"]
    saved = first_done.tokens - first["sampled"]["usage"]["completion_tokens"]
    assert (
        f"attempt b:second:1: 3 completions ({saved} tokens) from the result cache" in caplog.text
    )
    stats = ResultCache(str(cache_dir)).stats()
    print(f"cache after two runs: {stats['entries']} entries, {stats['hits']} hits")
    assert stats["entries"] == 3 and stats["hits"] == 3


def test_a_plan_or_a_request_can_turn_the_cache_off(llm_setup, tmp_path):  # noqa: F811
    brain, _ = llm_setup(cache_dir=str(tmp_path / "cache"))
    load(brain)
    (tmp_path / "client.py").write_text(CLIENT)
    first_done, _ = run_task(brain, tmp_path, "first")

    off_done, off = run_task(brain, tmp_path, "off", env={"LLMO_VAR_LLM_CACHE": "off"})
    assert off_done.tokens == first_done.tokens
    assert "llmo" not in off["completion"]

    optout_done, _ = run_task(brain, tmp_path, "optout", extra="'{\"cache\": false}'")
    assert optout_done.tokens == first_done.tokens

    # "seeded" also serves a request with a fixed seed from the cache.
    seeded = "'{\"seed\": 5}'"
    env = {"LLMO_VAR_LLM_CACHE": "seeded"}
    run_task(brain, tmp_path, "seeded1", env=env, extra=seeded)
    again_done, again = run_task(brain, tmp_path, "seeded2", env=env, extra=seeded)
    assert again_done.tokens == 0
    assert again["sampled"]["llmo"] == {"cached": True}


def test_a_bad_cache_field_is_a_400_naming_it(llm_setup, tmp_path):  # noqa: F811
    brain, worker = llm_setup(cache_dir=str(tmp_path / "cache"))
    load(brain)
    body = {"prompt": "Hello", "max_tokens": 2, "temperature": 0, "cache": "no"}
    request = urllib.request.Request(
        worker.worker.api.base_url + "/completions", data=json.dumps(body).encode()
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
    assert "'cache' must be true or false" in json.load(refused.value)["error"]["message"]
    refused.value.close()
    # An attempt whose environment names no known policy: its requests say so.
    (tmp_path / "bad.py").write_text(BAD_POLICY_CLIENT)
    msg = dataclasses.replace(
        llm_task(tmp_path, "bad", f"{sys.executable} bad.py > err.txt"),
        env={"LLMO_VAR_LLM_CACHE": "sometimes"},
    )
    brain.send(msg)
    brain.expect(TaskDone, attempt_id=msg.attempt_id, timeout=60)
    assert (tmp_path / "err.txt").read_text().startswith("400 the plan variable LLM_CACHE is")


BAD_POLICY_CLIENT = textwrap.dedent(
    """
    import json, os, urllib.error, urllib.request

    body = {"prompt": "Hello", "max_tokens": 2, "temperature": 0}
    request = urllib.request.Request(
        os.environ["LLM_API_BASE"] + "/completions", data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + os.environ["LLM_API_KEY"]},
    )
    try:
        urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        print(exc.code, json.load(exc)["error"]["message"])
    """
)
