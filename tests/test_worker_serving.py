"""A hot worker serves concurrent requests of its LLM tasks together, through its endpoint."""

from __future__ import annotations

import json
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

from llmo.proto.messages import TaskDone, TaskStarted
from tests.test_worker_llm import llm_setup, llm_task, load  # noqa: F401  (fixture)
from tests.worker_fixtures import (  # noqa: F401  (fixtures)
    brain_factory,
    model_path,
    worker_factory,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PREFIX = (
    "Answer with one word, the sentiment of the review: positive, negative or mixed. "
    "Read the whole review; ignore spelling, prices and shop names. Sarcasm counts "
    "against the product. Praise for the delivery alone is negative. "
) * 2

CLIENT = textwrap.dedent(
    """
    import json, os, sys, threading, urllib.request

    base, key = os.environ["LLM_API_BASE"], os.environ["LLM_API_KEY"]
    prefix = sys.argv[1]

    def post(review, out, i):
        body = {"prompt": prefix + "Review: " + review + "\\nSentiment:", "max_tokens": 16,
                "temperature": 0, "logit_bias": {"1": -100, "106": -100}}
        request = urllib.request.Request(
            base + "/completions", data=json.dumps(body).encode(),
            headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
        )
        out[i] = json.load(urllib.request.urlopen(request, timeout=120))

    reviews = ["Great kettle.", "Broke in a week.", "Nice but late."]
    together = [None] * 3
    threads = [threading.Thread(target=post, args=(r, together, i)) for i, r in enumerate(reviews)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = [None]
    post("Fine, I suppose.", after, 0)
    json.dump({"together": together, "after": after[0]}, sys.stdout)
    """
)


def test_concurrent_requests_of_a_task_generate_together_and_reuse_the_prefix(
    llm_setup,  # noqa: F811
    tmp_path,
):
    brain, worker = llm_setup(slots=1, parallel=4)
    load(brain)
    assert brain.heartbeat("gpu-t", state="hot").llm_slots == 4
    runtime = worker.worker.runtime

    (tmp_path / "client.py").write_text(CLIENT)
    (tmp_path / "prefix.txt").write_text(PREFIX)
    command = f'{sys.executable} client.py "$(cat prefix.txt)" > out.json'
    msg = brain.send(llm_task(tmp_path, "ask", command))
    brain.expect(TaskStarted, attempt_id=msg.attempt_id)
    done = brain.expect(TaskDone, attempt_id=msg.attempt_id, timeout=120)
    out = json.loads((tmp_path / "out.json").read_text())

    usages = [r["usage"] for r in [*out["together"], out["after"]]]
    assert done.tokens == sum(u["completion_tokens"] for u in usages)
    engine = runtime.engine
    assert engine is not None
    print(f"decode steps by sequences carried: {dict(engine.steps_by_width)}")
    # Three requests in flight at once share decode steps (at least two of them
    # in one step: each runs 16 tokens, far longer than the others take to join).
    assert engine.peak_width >= 2
    # The request after them copies the shared instructions instead of computing them.
    assert out["after"]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert out["after"]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -1), ("top_k", -1), ("seed", 2**70), ("top_p", 7), ("max_tokens", "x")],
)
def test_absurd_sampling_values_are_refused_naming_the_field(
    llm_setup,  # noqa: F811
    field,
    value,
):
    brain, worker = llm_setup()
    load(brain)
    body = {"prompt": "Hello", "max_tokens": 2, field: value}
    request = urllib.request.Request(
        worker.worker.api.base_url + "/completions", data=json.dumps(body).encode()
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
    assert field in json.load(refused.value)["error"]["message"]
    refused.value.close()
