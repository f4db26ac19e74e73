"""End-to-end overhead: shell tasks through a real ``llmo up`` against no orchestrator.

    .venv/bin/python bench/e2e.py [--tasks 1000] [--chain 200] [--rounds 3] [--slots 2]

One ``llmo up`` (two CPU workers, ``--slots`` each, no brain-role worker, on
free loopback ports, in a temporary folder) runs, in the same run as the
floor, with rounds alternating between the sides so a neighbour's load falls
on both alike:

* (a) fan-out: one ``foreach`` over a ``--tasks``-item manifest whose
  command is ``true``; floor: ``ProcessPoolExecutor(2)`` (already started)
  running ``subprocess.run(["true"])`` as many times. Printed: tasks/s of
  each and their ratio (aim >= 0.85);
* (b) chain: ``--chain`` tasks, each ``true`` and depending on the one before;
  floor: a plain loop of ``subprocess.run(["true"])``. Printed: ms per task of
  each and the milliseconds llmo adds per hop (aim < 1 ms);
* submit-to-first-task: from sending ``PlanSubmit`` to hearing the first
  ``task_started`` on the PUB stream.

For the fan-out it also prints the CPU time each process of the rig spent
per task (from /proc), which says where the orchestration's cost goes on a
machine whose cores the tasks themselves need.

llmo's time for a batch runs from sending ``PlanSubmit`` (from this process,
so no CLI start-up is counted) to hearing ``batch_completed``. Each side
reports its median over the rounds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmo.proto.client import Client, tool_name
from llmo.proto.messages import BRAIN, BatchEvent, PlanAccepted, PlanSubmit
from llmo.proto.pubsub import BATCH_EVENT_TOPICS, Subscriber

TASK = """
### {id}
- **executor**: worker
- **task_class**: cpu
- **command**: `true`
- **depends_on**: {deps}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_fanout(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    items = [{"id": f"{i:05d}"} for i in range(1, n + 1)]
    (folder / "manifest.json").write_text(json.dumps({"items": items}))
    (folder / "plan.md").write_text(
        "# Plan: fanout\n\n## Objective\n\nMany `true` tasks at once.\n\n## Tasks\n"
        "\n### each\n- **executor**: worker\n- **task_class**: cpu\n"
        "- **command**: `true`\n- **depends_on**: none\n"
        "- **foreach**: {PLAN_PATH}/manifest.json:items\n"
    )
    return folder


def write_chain(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    tasks = [
        TASK.format(id=f"t{i:04d}", deps=f"t{i - 1:04d}" if i > 1 else "none")
        for i in range(1, n + 1)
    ]
    (folder / "plan.md").write_text(
        "# Plan: chain\n\n## Objective\n\n`true` tasks one after another.\n\n## Tasks\n"
        + "".join(tasks)
    )
    return folder


class Rig:
    def __init__(self, root: Path, slots: int) -> None:
        self.root = root
        self.broker = f"tcp://127.0.0.1:{free_port()}"
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        config = root / "llmo.toml"
        workers = "".join(f'\n[[workers]]\nname = "cpu-{i}"\nslots = {slots}\n' for i in (1, 2))
        config.write_text(workers)
        self.env = dict(os.environ, LLMO_BROKER=self.broker, LLMO_PUB=self.pub)
        self.log = open(root / "up.log", "wb")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-P",
                "-m",
                "llmo.cli.main",
                "up",
                "--rig-dir",
                str(root / "rig"),
                "--config",
                str(config),
                "--no-brain-worker",
            ],
            cwd=root,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        ready = subprocess.run(
            [
                sys.executable,
                "-P",
                "-m",
                "llmo.cli.main",
                "status",
                "--wait-ready",
                "60",
                "--expect",
                "cpu-1,cpu-2",
            ],
            env=self.env,
            capture_output=True,
            text=True,
        )
        if ready.returncode != 0:
            self.stop()
            raise SystemExit(f"llmo up did not get ready: {ready.stderr}")
        self.client = Client(tool_name("bench"), self.broker)
        self.subscriber = Subscriber(self.pub, topics=BATCH_EVENT_TOPICS)
        time.sleep(0.5)  # let the subscription reach the broker

    def run(self, plan: Path) -> dict[str, float]:
        """Submit ``plan``; seconds from the submission to the first start and to the end."""
        sent = time.monotonic()
        reply = self.client.request(PlanSubmit(dst=BRAIN, plan_path=str(plan)), timeout=30)
        if not isinstance(reply, PlanAccepted):
            raise SystemExit(f"the brain did not accept {plan}: {reply}")
        first = None
        while True:
            published = self.subscriber.recv(timeout=60)
            if published is None:
                raise SystemExit(f"no event of batch {reply.batch_id} for 60 s")
            event = published.message
            if not isinstance(event, BatchEvent) or event.batch_id != reply.batch_id:
                continue
            if first is None and event.event == "task_started":
                first = time.monotonic() - sent
            if event.event.startswith("batch_") and event.event != "batch_accepted":
                if event.event != "batch_completed":
                    raise SystemExit(f"batch {reply.batch_id} ended {event.event}")
                total = time.monotonic() - sent
                return {"total": total, "first": first or 0.0, "history": reply.history_path}

    def cpu(self) -> dict[str, tuple[float, float]]:
        """Seconds of CPU by child of ``llmo up``: (its own, its reaped children's)."""
        tick = os.sysconf("SC_CLK_TCK")
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if int(fields[1]) != self.process.pid:
                continue
            title = " ".join(argv).split()  # ``llmo-worker cpu-1``, ``llmo-brain``
            if title and title[0].startswith("llmo-"):
                name = title[1] if title[0] == "llmo-worker" else title[0][5:]
            elif "llmo.cli.main" in argv:
                rest = argv[argv.index("llmo.cli.main") + 1 :]
                name = rest[rest.index("--name") + 1] if "--name" in rest else rest[0]
            else:
                continue
            own = (int(fields[11]) + int(fields[12])) / tick
            found[name] = (own, (int(fields[13]) + int(fields[14])) / tick)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def chain_breakdown(history: str) -> tuple[float, float]:
    """Median seconds, from the brain's batch_events.jsonl, between a task's success
    and the next task's start (done -> brain -> assign -> spawn -> started), and
    between a task's start and its success (run -> exit seen -> done -> brain)."""
    started, succeeded = {}, {}
    with open(os.path.join(history, "batch_events.jsonl"), encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            if event["event"] == "task_started":
                started[event["task_id"]] = event["ts"]
            elif event["event"] == "task_succeeded":
                succeeded[event["task_id"]] = event["ts"]
    order = sorted(started)
    between = [started[b] - succeeded[a] for a, b in itertools.pairwise(order)]
    running = [succeeded[t] - started[t] for t in order]
    return statistics.median(between), statistics.median(running)


def run_true(_: int) -> int:
    return subprocess.run(["true"]).returncode


def floor_fanout(pool: concurrent.futures.ProcessPoolExecutor, n: int) -> float:
    started = time.monotonic()
    codes = list(pool.map(run_true, range(n), chunksize=1))
    took = time.monotonic() - started
    assert not any(codes)
    return took


def floor_chain(n: int) -> float:
    started = time.monotonic()
    for _ in range(n):
        subprocess.run(["true"], check=True)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="fan-out size (a)")
    parser.add_argument("--chain", type=int, default=200, help="chain length (b)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slots", type=int, default=2, help="slots per worker")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="llmo-bench-e2e-") as tmp:
        root = Path(tmp)
        rig = Rig(root, args.slots)
        pool = concurrent.futures.ProcessPoolExecutor(2)
        try:
            list(pool.map(run_true, range(4)))  # start the pool's processes
            fan_llmo, fan_floor, chain_llmo, chain_floor, firsts = [], [], [], [], []
            between, running = [], []
            cpu: dict[str, tuple[list[float], list[float]]] = {}
            for n in range(1, args.rounds + 1):
                before = rig.cpu()
                fan = rig.run(write_fanout(root / f"fanout-{n}", args.tasks))
                after = rig.cpu()
                for name, (own, kids) in after.items():
                    was = before.get(name, (0.0, 0.0))
                    spent = cpu.setdefault(name, ([], []))
                    spent[0].append(own - was[0])
                    spent[1].append(kids - was[1])
                fan_llmo.append(fan["total"])
                firsts.append(fan["first"])
                fan_floor.append(floor_fanout(pool, args.tasks))
                chain = rig.run(write_chain(root / f"chain-{n}", args.chain))
                chain_llmo.append(chain["total"])
                gap, run = chain_breakdown(chain["history"])
                between.append(gap)
                running.append(run)
                firsts.append(chain["first"])
                chain_floor.append(floor_chain(args.chain))
                print(
                    f"round {n}: fan-out llmo {fan['total']:.2f} s, floor {fan_floor[-1]:.2f} s; "
                    f"chain llmo {chain['total']:.2f} s, floor {chain_floor[-1]:.2f} s",
                    flush=True,
                )
        finally:
            pool.shutdown()
            rig.client.close()
            rig.subscriber.close()
            rig.stop()

    fl, ff = statistics.median(fan_llmo), statistics.median(fan_floor)
    cl, cf = statistics.median(chain_llmo), statistics.median(chain_floor)
    print(
        f"\nllmo up: 2 workers x {args.slots} slots, no brain-role worker; medians of {args.rounds}"
    )
    print(f"(a) fan-out of {args.tasks} `true` tasks")
    print(f"    llmo:  {args.tasks / fl:8.1f} tasks/s ({fl:.2f} s, submit to batch_completed)")
    print(f"    floor: {args.tasks / ff:8.1f} tasks/s ({ff:.2f} s, ProcessPoolExecutor(2))")
    print(f"    ratio: {ff / fl:.3f} (aim >= 0.85)")
    print("    CPU per task by process (median ms; tasks are counted under their worker):")
    for name, (own, kids) in sorted(cpu.items()):
        own_ms = statistics.median(own) / args.tasks * 1000
        kids_ms = statistics.median(kids) / args.tasks * 1000
        print(f"      {name:8} {own_ms:5.2f} ms itself, {kids_ms:5.2f} ms in its tasks")
    print(f"(b) chain of {args.chain} dependent `true` tasks")
    print(f"    llmo:  {cl / args.chain * 1000:6.2f} ms per task ({cl:.2f} s)")
    print(f"    floor: {cf / args.chain * 1000:6.2f} ms per task ({cf:.2f} s, plain loop)")
    print(f"    added: {(cl - cf) / args.chain * 1000:6.2f} ms per hop (aim < 1 ms)")
    print(
        f"    as the brain saw a hop: {statistics.median(between) * 1000:.2f} ms from a task's "
        f"success to the next one's start, {statistics.median(running) * 1000:.2f} ms from "
        "a start to its success"
    )
    print(
        f"submit to first task started: median {statistics.median(firsts) * 1000:.1f} ms, "
        f"max {max(firsts) * 1000:.1f} ms ({len(firsts)} batches)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
