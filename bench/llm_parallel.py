"""LLM parallel serving: aggregate tok/s of concurrent requests through a worker's endpoint.

    .venv/bin/python bench/llm_parallel.py [--model PATH] [--threads 2] [--parallel 8]
                                           [--max-tokens 64]

In one run, on one model file (default: the embedded Gemma 3 270M):

* raw: llama-cpp-python ``create_completion`` in this process, one stream
  (the floor for one stream);
* through a real ``llmo worker`` process (behind a broker; this process
  plays the brain), one ``llm`` task whose Python client times, over HTTP:
  1, 2, 4 and 8 concurrent requests of ``--max-tokens`` tokens each
  (aggregate completion tok/s = all tokens / wall time), the same four
  requests sent one after another (sequential aggregate), and a shared
  300-token prefix: prompt time of the first request against the later
  ones, which copy the prefix from the cache.

End-of-generation is banned (logit bias) so every request generates exactly
``--max-tokens``. Printed: the figures, the 4-concurrent / sequential ratio
(aim >= 2 on CPU), single-stream through the worker / raw (aim >= 0.97),
and the prefix speed-up (aim >= 5). The throughput requests opt out of the
result cache (``"cache": false``); the last figure is its hit latency: one
greedy request stored, then the same request repeated, median over 20
(aim < 5 ms, HTTP round trip included; the worker's cache is in a fresh
temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from llm_overhead import bench_rig, expect, load

from llmo.proto.client import Client
from llmo.proto.messages import (
    TaskAssign,
    TaskDone,
    TaskFailed,
)
from llmo.proto.vocab import model_alias
from llmo.worker.llm import LoadSpec, open_llama

WORKER = "bench-worker"
PROMPT = "The following is a long, detailed chapter from a history of the printing press.\n\n"

CLIENT_REQUESTS = """
import json, os, sys, threading, time, urllib.request

args = json.loads(sys.argv[1])
base, key = os.environ["LLM_API_BASE"], os.environ["LLM_API_KEY"]


def post(body):
    request = urllib.request.Request(
        base + "/completions", data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def body(prompt, max_tokens):
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "logit_bias": args["ban"], "cache": False}


def together(n):
    out = [None] * n
    def one(i):
        out[i] = post(body(args["prompt"] + f"Part {i}.", args["max_tokens"]))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return sum(r["usage"]["completion_tokens"] for r in out), wall
"""

CLIENT = (
    CLIENT_REQUESTS
    + """
post(body("Hello", 4))  # warm
figures = {}
for n in (1, 2, 4, 8):
    figures[f"concurrent_{n}"] = together(n)
started, tokens = time.perf_counter(), 0
for i in range(4):
    tokens += post(body(args["prompt"] + f"Part {i}.", args["max_tokens"]))["usage"][
        "completion_tokens"]
figures["sequential_4"] = (tokens, time.perf_counter() - started)
prefix = args["prefix"]
prompt_s, cached = [], []
for i, review in enumerate(["Great.", "Broken.", "Late.", "Fine."]):
    started = time.perf_counter()
    r = post(body(prefix + f"Review {i}: {review}\\nSentiment:", 1))
    prompt_s.append(time.perf_counter() - started)
    cached.append(r["usage"]["prompt_tokens_details"]["cached_tokens"])
figures["prefix"] = {"seconds": prompt_s, "cached": cached,
                     "prompt_tokens": r["usage"]["prompt_tokens"]}
repeat = {**body(args["prompt"], args["max_tokens"]), "cache": True}
stored = post(repeat)
hits = []
for _ in range(20):
    started = time.perf_counter()
    r = post(repeat)
    hits.append(time.perf_counter() - started)
    assert r["llmo"]["cached"] and r["choices"] == stored["choices"], r
figures["cache_hit_s"] = sorted(hits)
json.dump(figures, sys.stdout)
"""
)


def run_task(brain: Client, folder: Path, args: dict, worker: str = WORKER) -> dict:
    """Run ``client.py`` of ``folder`` as one ``llm`` task on ``worker``; its figures."""
    (folder / "args.json").write_text(json.dumps(args))
    task = TaskAssign(
        dst=worker,
        batch_id="bench",
        task_id="parallel",
        attempt_id="bench:parallel:1",
        task_class="llm",
        command=f'{sys.executable} client.py "$(cat args.json)" > out.json',
        batch_path=str(folder),
        timeout_s=1200,
    )
    brain.send(task)
    result = expect(
        brain,
        lambda m: isinstance(m, TaskDone | TaskFailed) and m.attempt_id == task.attempt_id,
        1200,
    )
    if isinstance(result, TaskFailed):
        raise SystemExit(f"the worker task failed: {result.error}\n{result.log_tail}")
    figures: dict = json.loads((folder / "out.json").read_text())
    return figures


def shared_prefix(llm, tokens: int) -> str:
    """Instructions of about ``tokens`` tokens, unique to this run (nothing cached before)."""
    text = f"Session {time.time_ns()}. "
    sentence = (
        "Answer with one word, the sentiment of the review: positive, negative or mixed; "
        "ignore spelling, prices and shop names, and count sarcasm against the product. "
    )
    while len(llm.tokenize(text.encode())) < tokens:
        text += sentence
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="GGUF file (default: the embedded Gemma 3 270M)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=1024, help="per sequence")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--extra-bufts", choices=["auto", "on", "off"], default="auto")
    args = parser.parse_args()

    if args.model:
        model = Path(args.model)
    else:
        from llmo.cli.models import default_model

        model = default_model()
    alias = model_alias(str(model))
    spec = LoadSpec(
        path=str(model), n_ctx=args.ctx, threads=args.threads, extra_bufts=args.extra_bufts
    )
    print(f"model {model.name}, threads {args.threads}, ctx {args.ctx} per sequence, ", end="")
    print(f"parallel {args.parallel}, {args.max_tokens} tokens per request, greedy")

    llm = open_llama(spec)
    ends = {llm.token_eos(), *llm.tokenize(b"<end_of_turn>", add_bos=False, special=True)}
    ban = {str(t): -100.0 for t in ends}
    llm.create_completion("Hello", max_tokens=4, temperature=0.0)  # warm
    started = time.perf_counter()
    out = llm.create_completion(
        PROMPT, max_tokens=args.max_tokens, temperature=0.0, logit_bias={t: -100.0 for t in ends}
    )
    raw = out["usage"]["completion_tokens"] / (time.perf_counter() - started)
    prefix = shared_prefix(llm, 300)
    llm.close()

    cache = tempfile.mkdtemp(prefix="llmo-bench-cache-")  # a fresh, empty result cache
    options = ("--parallel", str(args.parallel), "--slots", "2", "--cache-dir", cache)
    broker, brain, folder, worker = bench_rig(model, args, CLIENT, *options)
    try:
        load(brain, alias, args.ctx)
        figures = run_task(
            brain,
            folder,
            {"prompt": PROMPT, "max_tokens": args.max_tokens, "ban": ban, "prefix": prefix},
        )
    finally:
        worker.terminate()
        worker.wait(30)
        brain.close()
        broker.stop()

    def rate(key: str) -> float:
        tokens, seconds = figures[key]
        return float(tokens / seconds)

    print(f"raw llama-cpp-python, one stream:  {raw:7.2f} tok/s")
    for n in (1, 2, 4, 8):
        print(f"worker, {n} concurrent:             {rate(f'concurrent_{n}'):7.2f} tok/s aggregate")
    sequential = rate("sequential_4")
    print(f"worker, 4 one after another:       {sequential:7.2f} tok/s aggregate")
    print(f"4 concurrent / sequential:         {rate('concurrent_4') / sequential:7.2f} (aim >= 2)")
    print(f"worker single stream / raw:        {rate('concurrent_1') / raw:7.3f} (aim >= 0.97)")
    p = figures["prefix"]
    first, later = p["seconds"][0], p["seconds"][1:]
    mean_later = sum(later) / len(later)
    print(
        f"shared prefix ({p['prompt_tokens']} prompt tokens): first {first * 1000:.0f} ms, "
        f"later {mean_later * 1000:.0f} ms on average, reused {p['cached'][1:]} tokens"
    )
    print(f"prefix speed-up, later vs first:   {first / mean_later:7.2f} (aim >= 5)")
    hits = figures["cache_hit_s"]
    print(
        f"cache-hit latency, repeated greedy: {hits[len(hits) // 2] * 1000:6.2f} ms median, "
        f"{hits[-1] * 1000:.2f} ms worst of {len(hits)} (aim < 5 ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
