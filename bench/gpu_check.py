"""GPU check: a worker pinned to a GPU against one on CPU, through the OpenAI endpoint.

    .venv/bin/python bench/gpu_check.py [--cpu-only] [--quick] [--gpu 0] [--threads N]
                                        [--parallel 16] [--ctx 512] [--max-tokens 64]

Usually run by ``bench/gpu_check.sh``, which first builds llama-cpp-python
with CUDA for the card present and puts that build first on ``PYTHONPATH``.

Theory of operation
-------------------
This process runs a broker on loopback and plays the brain (as
``bench/llm_parallel.py`` does). For each side, one after the other so they
never share the CPU:

* ``gpu``: an ``llmo worker --gpus N`` (``CUDA_VISIBLE_DEVICES`` pinned by the
  worker itself), the embedded model loaded with ``n_gpu_layers`` -1, every
  layer offloaded;
* ``cpu``: an ``llmo worker --gpus none`` (CUDA hidden), ``n_gpu_layers`` 0.

Each worker runs with ``--parallel`` sequences. Once its ``ModelStatus`` is
hot, one ``llm`` task (``llm_parallel.run_task``) sends 1, 2, 4, 8 and 16
concurrent requests of ``--max-tokens`` tokens each to the worker's endpoint
(``llm_parallel.CLIENT_REQUESTS``; end-of-generation banned, so every request
generates exactly that many) and the aggregate tok/s of each level is all
tokens / wall time; one request at a time is the single-stream figure.

NVML readings are the worker's own, from the telemetry of its heartbeats
(what ``llmo status --json`` shows as ``gpu``): after the load, and the peak
while the requests ran. Offload is confirmed from them too: the worker's PID
holds VRAM on its GPU, or (where NVML sees another PID namespace) the card's
VRAM grew by at least the model's size. A GPU side without that evidence
fails the check (exit 1) after the table is printed. A worker without NVML
reports "no GPU telemetry" and why; that is never a crash.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from llm_overhead import expect
from llm_parallel import CLIENT_REQUESTS, PROMPT, run_task

from llmo.broker.roles import Roles
from llmo.broker.service import Broker
from llmo.proto.client import Client
from llmo.proto.messages import (
    BRAIN,
    Ack,
    Heartbeat,
    ModelLoad,
    ModelStatus,
    Register,
    TaskDone,
    TaskFailed,
    Telemetry,
)
from llmo.proto.vocab import model_alias

ROOT = Path(__file__).resolve().parent.parent
LEVELS = (1, 2, 4, 8, 16)
QUICK_LEVELS = (1, 2)
QUICK_TOKENS = 16
LOAD_S = 300.0  # a model load, from ModelLoad to hot
TASK_S = 600.0  # all levels of one side
MB = 1024 * 1024

DRIVER = """
post(body("Hello", 4))  # warm: nothing measured pays for first use
json.dump({str(n): together(n) for n in args["levels"]}, sys.stdout)
"""


@dataclass(kw_only=True)
class Side:
    name: str  # the worker's name, and the table's column
    gpus: str  # --gpus of the worker
    n_gpu_layers: int
    load_s: float = 0.0
    rates: dict[int, float] = field(default_factory=dict)
    after_load: Heartbeat | None = None
    before_load: Heartbeat | None = None
    peak: dict[str, float] = field(default_factory=dict)
    last: Heartbeat | None = None


class Recorder:
    """The bench's brain client: keeps the heartbeats that pass on the way, and
    acknowledges results as the brain does (a worker stops without waiting on them)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.heartbeats: list[Heartbeat] = []

    def recv(self, timeout: float | None = None) -> Any:
        msg = self.client.recv(timeout)
        if isinstance(msg, Heartbeat):
            self.heartbeats.append(msg)
        if isinstance(msg, TaskDone | TaskFailed):
            self.client.send(Ack(dst=msg.src, reply_to=msg.id))
        return msg

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


# --- the report (pure) ----------------------------------------------------------------


def _num(value: float | None, fmt: str) -> str:
    return "?" if value is None else format(value, fmt)


def telemetry_lines(telemetry: Telemetry | None) -> list[str]:
    """NVML readings as a worker reported them, one line a GPU, or why there are none."""
    if telemetry is None:
        return ["no GPU telemetry: the worker sent none"]
    if not telemetry.gpu_available or not telemetry.gpus:
        note = telemetry.note or "the worker gave no reason"
        return [note if note.startswith("no GPU telemetry") else f"no GPU telemetry: {note}"]
    lines = []
    for g in telemetry.gpus:
        power = _num(g.power_w, ".1f")
        if g.power_limit_w is not None:
            power += f"/{g.power_limit_w:.0f}"
        lines.append(
            f"GPU {g.index} {g.name or '(unnamed)'}: {_num(g.temperature_c, '.0f')} C, "
            f"VRAM {_num(g.vram_used_mb, 'd')}/{_num(g.vram_total_mb, 'd')} MB, "
            f"power {power} W, util {_num(g.util_percent, '.0f')}%"
        )
    return lines


def offload_evidence(
    after: Heartbeat, before: Heartbeat | None, *, pid: int, model_mb: int
) -> tuple[bool, str]:
    """Whether the worker's heartbeats show the model on its GPU, and the evidence."""
    t = after.telemetry
    if t is None or not t.gpu_available or not t.gpus:
        (why,) = telemetry_lines(t)[:1]
        return False, f"cannot confirm offload: {why}"
    for g in t.gpus:
        for p in g.processes:
            if p.pid == pid and p.vram_mb > 0:
                return True, f"the worker (pid {pid}) holds {p.vram_mb} MB on GPU {g.index}"
    idle = (
        {g.index: g.vram_used_mb for g in before.telemetry.gpus}
        if before and before.telemetry
        else {}
    )
    for g in t.gpus:
        was = idle.get(g.index)
        if g.vram_used_mb is not None and was is not None and g.vram_used_mb - was >= model_mb:
            return True, (
                f"VRAM used on GPU {g.index} grew by {g.vram_used_mb - was} MB with the load "
                f"(model {model_mb} MB; NVML does not list pid {pid})"
            )
    return False, (
        f"not offloaded: pid {pid} holds no VRAM and no GPU's VRAM grew by the model's "
        f"{model_mb} MB (is llama-cpp-python built with CUDA? bench/gpu_check.sh builds it)"
    )


def table(levels: list[int], rates: dict[str, dict[int, float]], load_s: dict[str, float]) -> str:
    """Aggregate tok/s per level, GPU against CPU, and the load times."""

    def cell(side: str, level: int) -> str:
        value = rates.get(side, {}).get(level)
        return "-" if value is None else f"{value:.1f}"

    lines = [f"{'requests at once':20} {'GPU tok/s':>10} {'CPU tok/s':>10} {'GPU/CPU':>8}"]
    for n in levels:
        label = "1 (single stream)" if n == 1 else str(n)
        gpu, cpu = rates.get("gpu", {}).get(n), rates.get("cpu", {}).get(n)
        ratio = f"{gpu / cpu:.2f}" if gpu and cpu else "-"
        lines.append(f"{label:20} {cell('gpu', n):>10} {cell('cpu', n):>10} {ratio:>8}")
    loads = [f"{load_s[s]:.2f}" if s in load_s else "-" for s in ("gpu", "cpu")]
    lines.append(f"{'load to hot, s':20} {loads[0]:>10} {loads[1]:>10}")
    return "\n".join(lines)


def peak(heartbeats: list[Heartbeat]) -> dict[str, float]:
    """The highest temperature, power and VRAM used over the heartbeats, GPU by GPU."""
    out: dict[str, float] = {}
    for hb in heartbeats:
        for g in hb.telemetry.gpus if hb.telemetry else ():
            for key, value in (
                ("temperature_c", g.temperature_c),
                ("power_w", g.power_w),
                ("vram_used_mb", g.vram_used_mb),
                ("util_percent", g.util_percent),
            ):
                if value is not None:
                    name = f"{g.index}.{key}"
                    out[name] = max(out.get(name, value), float(value))
    return out


def peak_lines(p: dict[str, float]) -> list[str]:
    gpus = sorted({key.split(".")[0] for key in p}, key=int)
    return [
        f"GPU {i} peak while serving: {_num(p.get(f'{i}.temperature_c'), '.0f')} C, "
        f"VRAM {_num(p.get(f'{i}.vram_used_mb'), '.0f')} MB, "
        f"power {_num(p.get(f'{i}.power_w'), '.1f')} W, "
        f"util {_num(p.get(f'{i}.util_percent'), '.0f')}%"
        for i in gpus
    ]


# --- running it ---------------------------------------------------------------------------


def end_tokens(model: Path) -> dict[str, float]:
    """A logit bias that bans end-of-generation, so each request runs to its max_tokens."""
    import llama_cpp

    from llmo.worker.llm import suppress_llama_logs

    with suppress_llama_logs():
        vocab = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    try:
        ends = {vocab.token_eos(), *vocab.tokenize(b"<end_of_turn>", add_bos=False, special=True)}
    finally:
        vocab.close()
    return {str(t): -100.0 for t in ends}


def next_heartbeat(brain: Recorder, worker: str, match: Any = None) -> Heartbeat:
    msg = expect(
        brain,
        lambda m: isinstance(m, Heartbeat) and m.src == worker and (match is None or match(m)),
        30,
    )
    assert isinstance(msg, Heartbeat)
    return msg


def measure(
    side: Side, brain: Recorder, broker: Broker, args: argparse.Namespace, folder: Path
) -> tuple[int, Path]:
    """Start ``side``'s worker, load the model, run the levels; the worker's pid and log."""
    log_path = folder / f"worker-{side.name}.log"
    argv = [
        sys.executable,
        "-m",
        "llmo.cli.main",
        "worker",
        "--name",
        side.name,
        "--broker",
        broker.router_endpoint,
        "--model",
        str(args.model),
        "--gpus",
        side.gpus,
        "--parallel",
        str(args.parallel),
        "--ctx",
        str(args.ctx),
        "--threads",
        str(args.threads),
        "--slots",
        "2",
        "--interval",
        "0.5",
        "--log-level",
        "INFO",
    ]
    task_dir = folder / side.name
    task_dir.mkdir()
    (task_dir / "client.py").write_text(CLIENT_REQUESTS + DRIVER)
    with open(log_path, "wb") as log_file:
        worker = subprocess.Popen(argv, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        expect(brain, lambda m: isinstance(m, Register) and m.src == side.name, 60)
        side.before_load = next_heartbeat(brain, side.name)
        brain.send(
            ModelLoad(
                dst=side.name,
                model=model_alias(str(args.model)),
                n_ctx=args.ctx,
                n_gpu_layers=side.n_gpu_layers,
                threads=args.threads,
            )
        )
        status = expect(
            brain,
            lambda m: (
                isinstance(m, ModelStatus) and m.src == side.name and m.state in ("hot", "failed")
            ),
            LOAD_S,
        )
        assert isinstance(status, ModelStatus)
        if status.state != "hot":
            raise SystemExit(f"{side.name}: the model did not load: {status.error}")
        side.load_s = status.load_s
        side.after_load = next_heartbeat(brain, side.name, lambda m: m.model != "")
        del brain.heartbeats[:]
        figures = run_task(
            brain,  # stands in for the Client, recording heartbeats
            task_dir,
            {
                "prompt": PROMPT,
                "max_tokens": args.max_tokens,
                "ban": args.ban,
                "levels": list(args.levels),
            },
            worker=side.name,
        )
        serving = [hb for hb in brain.heartbeats if hb.src == side.name]
        side.last = next_heartbeat(brain, side.name)
        side.peak = peak([*serving, side.last])
        for level, (tokens, seconds) in figures.items():
            side.rates[int(level)] = tokens / seconds
        return worker.pid, log_path
    except BaseException:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        print(f"--- last lines of {log_path}:", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="GGUF file (default: the embedded Gemma 3 270M)")
    parser.add_argument("--cpu-only", action="store_true", help="no GPU side")
    parser.add_argument("--quick", action="store_true", help="levels 1 and 2, 16 tokens")
    parser.add_argument("--gpu", default="0", help="the GPU index to pin (default 0)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: llama.cpp's)")
    parser.add_argument("--parallel", type=int, default=16, help="the workers' --parallel")
    parser.add_argument("--ctx", type=int, default=512, help="context per sequence")
    parser.add_argument("--max-tokens", type=int, default=None, help="per request (default 64)")
    args = parser.parse_args()
    args.levels = [n for n in (QUICK_LEVELS if args.quick else LEVELS) if n <= args.parallel]
    if args.max_tokens is None:
        args.max_tokens = QUICK_TOKENS if args.quick else 64
    if args.model:
        args.model = Path(args.model)
    else:
        from llmo.cli.models import default_model

        args.model = default_model()
    args.ban = end_tokens(args.model)
    model_mb = args.model.stat().st_size // MB

    sides = [] if args.cpu_only else [Side(name="gpu", gpus=args.gpu, n_gpu_layers=-1)]
    sides.append(Side(name="cpu", gpus="none", n_gpu_layers=0))
    print(
        f"llmo GPU check: {args.model.name} ({model_mb} MB), {args.max_tokens} tokens per "
        f"request, greedy, --parallel {args.parallel} x --ctx {args.ctx}, "
        f"threads {args.threads or 'llama.cpp default'}",
        flush=True,
    )

    logging.getLogger("llmo.broker").setLevel(logging.ERROR)
    broker = Broker(
        "tcp://127.0.0.1:*",
        "tcp://127.0.0.1:*",
        roles=Roles(workers=frozenset(s.name for s in sides)),
    )
    threading.Thread(target=broker.run, daemon=True).start()
    brain = Recorder(Client(BRAIN, broker.router_endpoint))
    brain.tick()
    folder = Path(tempfile.mkdtemp(prefix="llmo-gpu-check-"))
    failures = []
    try:
        for side in sides:
            started = time.monotonic()
            pid, log_path = measure(side, brain, broker, args, folder)
            print(
                f"\n{side.name} worker (--gpus {side.gpus}, n_gpu_layers {side.n_gpu_layers}, "
                f"log {log_path}), {time.monotonic() - started:.0f} s:"
            )
            after = side.after_load.telemetry if side.after_load else None
            for line in telemetry_lines(after):
                print(f"  after load: {line}")
            for line in peak_lines(side.peak):
                print(f"  {line}")
            if side.name == "gpu":
                assert side.after_load is not None
                ok, why = offload_evidence(
                    side.after_load, side.before_load, pid=pid, model_mb=model_mb
                )
                print(f"  offload: {why}")
                if not ok:
                    failures.append(f"GPU {args.gpu}: {why}")
    finally:
        brain.close()
        broker.stop()
    print()
    print(
        table(
            args.levels,
            {s.name: s.rates for s in sides},
            {s.name: s.load_s for s in sides},
        )
    )
    for failure in failures:
        print(f"\nFAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
