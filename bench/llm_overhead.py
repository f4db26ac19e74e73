"""LLM overhead: tokens/s through a worker task versus llama-cpp-python alone.

    .venv/bin/python bench/llm_overhead.py [--model PATH] [--threads 1]
                                          [--max-tokens 256] [--rounds 5]

Both sides run in the same run, with the same model file, threads, context,
prompt, greedy sampling and llama.cpp parameters (``worker.llm.open_llama``):

* direct: ``create_completion`` on a model opened in this process, timed
  around the call;
* worker: a real ``llmo worker`` process behind a broker (in this process,
  which also plays the brain) runs one ``llm`` task per round; the task is a
  Python subprocess that POSTs to ``$LLM_API_BASE/completions`` with urllib
  and times the request itself, HTTP and JSON included.

Rounds alternate between the sides so that a neighbour's load on the machine
falls on both alike; each side reports its median. The aim is a ratio of at
least 0.97. Also printed: the time from the brain's ``ModelLoad`` to the
worker's ``ModelStatus hot`` (which follows a real test completion).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from llmo.broker.roles import Roles
from llmo.broker.service import Broker
from llmo.proto.client import Client
from llmo.proto.messages import (
    BRAIN,
    Ack,
    Message,
    ModelLoad,
    ModelStatus,
    Register,
    TaskAssign,
    TaskDone,
    TaskFailed,
)
from llmo.proto.vocab import model_alias
from llmo.worker.llm import LoadSpec, open_llama

WORKER = "bench-worker"
PROMPT = (
    "The following is a long, detailed chapter from a history of the printing press, "
    "covering its invention, its spread across Europe and its effects on science.\n\n"
    "Chapter 1.\n"
)

CLIENT = """
import json, os, sys, time, urllib.request
body = json.loads(sys.argv[1])
request = urllib.request.Request(
    os.environ["LLM_API_BASE"] + "/completions",
    data=json.dumps(body).encode(),
    headers={"Authorization": "Bearer " + os.environ["LLM_API_KEY"],
             "Content-Type": "application/json"},
)
started = time.perf_counter()
with urllib.request.urlopen(request, timeout=600) as response:
    result = json.load(response)
elapsed = time.perf_counter() - started
print(json.dumps({"tokens": result["usage"]["completion_tokens"], "seconds": elapsed}))
"""


def expect(client: Client, match, timeout: float) -> Message:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        client.tick()  # heartbeats, so the broker keeps the bench's brain alive
        msg = client.recv(min(left, client.heartbeat_due_in() + 0.01))
        if isinstance(msg, TaskDone | TaskFailed):
            client.send(Ack(dst=msg.src, reply_to=msg.id))  # as the brain does
        if msg is not None and match(msg):
            return msg
    raise SystemExit("timed out waiting for the worker")


def bench_rig(
    model: Path, args: argparse.Namespace, client: str, *options: str
) -> tuple[Broker, Client, Path, subprocess.Popen]:
    """A broker on loopback, this process as its brain, a folder holding the task's
    ``client.py``, and an ``llmo worker`` named ``WORKER`` serving ``model``
    (``--threads``, ``--ctx`` and ``--extra-bufts`` from ``args``, then ``options``),
    once it has registered."""
    # The bench's brain is silent while its direct side generates; that is not news.
    logging.getLogger("llmo.broker").setLevel(logging.ERROR)
    # The broker knows its worker by name, as with ``[[workers]]`` on a rig; the bench
    # itself is the brain (heartbeating as the real one does) and the only sender of
    # assignments and model loads.
    broker = Broker(
        "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", roles=Roles(workers=frozenset({WORKER}))
    )
    threading.Thread(target=broker.run, daemon=True).start()
    brain = Client(BRAIN, broker.router_endpoint)
    brain.tick()
    folder = Path(tempfile.mkdtemp(prefix="llmo-bench-"))
    (folder / "client.py").write_text(client)
    argv = [sys.executable, "-m", "llmo.cli.main", "worker", "--name", WORKER]
    argv += ["--broker", broker.router_endpoint, "--model", str(model)]
    argv += ["--threads", str(args.threads), "--ctx", str(args.ctx)]
    argv += ["--extra-bufts", args.extra_bufts, *options, "--log-level", "WARNING"]
    worker = subprocess.Popen(argv, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        expect(brain, lambda m: isinstance(m, Register) and m.src == WORKER, 60)
    except BaseException:
        worker.terminate()
        raise
    return broker, brain, folder, worker


def load(brain: Client, alias: str, n_ctx: int) -> ModelStatus:
    """Load the model on the bench's worker: its ``hot`` status, or SystemExit with the
    reason it failed."""
    brain.send(ModelLoad(dst=WORKER, model=alias, n_ctx=n_ctx))
    hot = expect(brain, lambda m: isinstance(m, ModelStatus) and m.state in ("hot", "failed"), 300)
    if hot.state != "hot":
        raise SystemExit(f"load failed: {hot.error}")
    return hot


def direct_round(llm, max_tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    out = llm.create_completion(PROMPT, max_tokens=max_tokens, temperature=0.0)
    return out["usage"]["completion_tokens"], time.perf_counter() - started


def worker_round(brain: Client, folder: Path, n: int, max_tokens: int) -> tuple[int, float, float]:
    # Every round generates: the result cache would answer a repeated greedy request.
    request = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "cache": False}
    body = json.dumps(request)
    command = f"{sys.executable} client.py '{body}' > round{n}.json"
    task = TaskAssign(
        dst=WORKER,
        batch_id="bench",
        task_id=f"round{n}",
        attempt_id=f"bench:round{n}:1",
        task_class="llm",
        command=command,
        batch_path=str(folder),
        timeout_s=600,
    )
    brain.send(task)
    result = expect(
        brain,
        lambda m: isinstance(m, TaskDone | TaskFailed) and m.attempt_id == task.attempt_id,
        600,
    )
    if isinstance(result, TaskFailed):
        raise SystemExit(f"the worker task failed: {result.error}\n{result.log_tail}")
    seen = json.loads((folder / f"round{n}.json").read_text())
    if result.tokens != seen["tokens"]:
        print(f"  note: worker counted {result.tokens} tokens, the API said {seen['tokens']}")
    return seen["tokens"], seen["seconds"], result.tok_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="GGUF file (default: the embedded Gemma 3 270M)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
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
    print(f"model {model.name}, threads {args.threads}, ctx {args.ctx}, ", end="")
    print(f"max_tokens {args.max_tokens}, {args.rounds} rounds per side, greedy")

    broker, brain, folder, worker = bench_rig(model, args, CLIENT)
    try:
        sent = time.perf_counter()
        hot = load(brain, alias, args.ctx)
        load_to_hot = time.perf_counter() - sent

        started = time.perf_counter()
        llm = open_llama(spec)
        direct_open = time.perf_counter() - started
        llm.create_completion("Hello", max_tokens=4, temperature=0.0)  # warm, as the worker's
        worker_round(brain, folder, 0, 8)  # warm the endpoint and the page cache

        direct, through, metered = [], [], []
        tokens = set()
        for n in range(1, args.rounds + 1):
            count, seconds = direct_round(llm, args.max_tokens)
            direct.append(count / seconds)
            tokens.add(count)
            count, seconds, tok_s = worker_round(brain, folder, n, args.max_tokens)
            through.append(count / seconds)
            metered.append(tok_s)
            tokens.add(count)
            print(f"  round {n}: direct {direct[-1]:6.2f} tok/s, worker {through[-1]:6.2f} tok/s")
        llm.close()
    finally:
        worker.terminate()
        worker.wait(30)
        brain.close()
        broker.stop()

    d, w = statistics.median(direct), statistics.median(through)
    print(f"load command -> hot:          {load_to_hot:.2f} s", end="")
    print(f" (worker's load + test completion {hot.load_s:.2f} s; direct open {direct_open:.2f} s)")
    print(f"llama-cpp-python directly:    {d:.2f} tok/s (median)")
    print(f"through a worker task:        {w:.2f} tok/s (median, timed in the task's subprocess)")
    print(f"  as the worker metered it:   {statistics.median(metered):.2f} tok/s")
    print(f"tokens per completion:        {sorted(tokens)}")
    print(f"ratio worker / direct:        {w / d:.3f} (aim >= 0.97)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
