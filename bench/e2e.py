"""End-to-end overhead: shell tasks through a real ``llmo up`` against no orchestrator.

    .venv/bin/python bench/e2e.py [--tasks 1000] [--chain 200] [--rounds 3] [--slots 2]
                                  [--big 10000] [--no-tty] [--quick]

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

llmo's time for a batch there runs from sending ``PlanSubmit`` (from this
process, so no CLI start-up is counted) to hearing ``batch_completed``.

The same two graphs also go through the CLI as an operator runs them:
``llmo submit PLAN --watch``, timed from exec to exit of that command, its
output to a pipe and (unless ``--no-tty``) to a pseudo-terminal, where the
watcher redraws in place; Python's bytecode is cached, as an installed llmo
has it (a first ``submit`` fills the cache). Printed: tasks/s and the ratio to the floor for the
fan-out, ms per task (all of it, CLI start-up included) and per hop added for
the chain; and for each, the CPU time per task of every process (from /proc
for the rig's, from ``wait4`` for the submit process), which says where the
orchestration's cost goes on a machine whose cores the tasks themselves need.

``--big N`` runs one fan-out of N items and prints the brain's resident
memory before and after (``VmRSS``; ``VmHWM`` its peak) and its CPU per task.
Without the flag it runs 10,000 items when the rounds' fan-out rate says that
takes under two minutes, and says so when it skips them; ``--big 0`` never.
Each side reports its median over the rounds; a last block sets each
headline figure beside its aim. ``--quick`` is a smoke run: one round, 300
tasks, a chain of 50, no big fan-out.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import pty
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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
        # Python's bytecode cached, as an installed llmo has it, whatever this shell's
        # PYTHONDONTWRITEBYTECODE says: each `llmo submit` would compile llmo's modules.
        self.env = dict(
            os.environ,
            LLMO_BROKER=self.broker,
            LLMO_PUB=self.pub,
            PYTHONPYCACHEPREFIX=str(root / "pycache"),
        )
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
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
        self.submit(write_fanout(root / "warm-up", 2), tty=False)  # caches the CLI's bytecode

    def run(self, plan: Path) -> dict[str, float]:
        """Submit ``plan``; seconds from the submission to the first start and to the end."""
        while self.subscriber.recv(timeout=0) is not None:
            pass  # events of batches the CLI followed: none of this one's
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

    def submit(self, plan: Path, tty: bool) -> dict[str, float]:
        """``llmo submit PLAN --watch`` to its exit, its output to a pipe or a pseudo-terminal:
        seconds from exec to exit, and the CPU seconds the command spent (``wait4``)."""
        argv = [sys.executable, "-P", "-m", "llmo.cli.main", "submit", str(plan), "--watch"]
        if tty:
            reader, writer = pty.openpty()
        else:
            reader, writer = os.pipe()
        sent = time.monotonic()
        process = subprocess.Popen(
            argv, env=self.env, stdout=writer, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        os.close(writer)
        drained = threading.Thread(target=drain, args=(reader,))
        drained.start()
        _, status, usage = os.wait4(process.pid, 0)
        took = time.monotonic() - sent
        process.returncode = os.waitstatus_to_exitcode(status)
        drained.join()
        os.close(reader)
        if process.returncode != 0:
            raise SystemExit(f"llmo submit {plan} --watch exited {process.returncode}")
        return {"total": took, "cpu": usage.ru_utime + usage.ru_stime}

    def pids(self) -> dict[str, int]:
        """The processes ``llmo up`` started, by name (``brain``, ``broker``, ``cpu-1``)."""
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
            found[name] = int(entry)
        return found

    def cpu(self) -> dict[str, tuple[float, float]]:
        """Seconds of CPU by child of ``llmo up``: (its own, its reaped children's)."""
        tick = os.sysconf("SC_CLK_TCK")
        found = {}
        for name, pid in self.pids().items():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
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


BIG = 10_000  # the big fan-out's items, unless --big says otherwise
BIG_LIMIT_S = 120.0  # run by default only when it would take less than this


def drain(fd: int) -> None:
    """Read ``fd`` to its end (a pipe's EOF, a pseudo-terminal's EIO once the writer exits)."""
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def memory_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (its peak) of ``pid``, in KiB, from /proc."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


def ms_per_task(seconds: list[float], tasks: int) -> float:
    return statistics.median(seconds) / tasks * 1000 if seconds else float("nan")


def verdict(met: bool) -> str:
    return "met" if met else "NOT MET"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, help="fan-out size (a); 1000, --quick 300")
    parser.add_argument("--chain", type=int, help="chain length (b); 200, --quick 50")
    parser.add_argument("--rounds", type=int, help="rounds; 3, --quick 1")
    parser.add_argument("--slots", type=int, default=2, help="slots per worker")
    parser.add_argument(
        "--big",
        type=int,
        help="items of the one big fan-out (10000 if done in 2 minutes, --quick 0; 0 skips it)",
    )
    parser.add_argument("--no-tty", action="store_true", help="no CLI run on a pseudo-terminal")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small and one round")
    args = parser.parse_args()
    quick = args.quick

    def pick(given: int | None, normal: int, small: int) -> int:
        return given if given is not None else (small if quick else normal)

    tasks = pick(args.tasks, 1000, 300)
    chain_n = pick(args.chain, 200, 50)
    rounds = pick(args.rounds, 3, 1)
    big = pick(args.big, BIG, 0)
    big_note = "--quick" if quick and args.big is None else ""
    outputs = ["pipe"] if args.no_tty else ["pipe", "tty"]
    kinds = ["direct", *outputs]

    with tempfile.TemporaryDirectory(prefix="llmo-bench-e2e-") as tmp:
        root = Path(tmp)
        rig = Rig(root, args.slots)
        pool = concurrent.futures.ProcessPoolExecutor(2)
        # (graph, kind) -> seconds per run; (graph, kind) -> process -> CPU seconds per run
        took: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], dict[str, list[float]]] = {}
        fan_floor, chain_floor, firsts, between, running = [], [], [], [], []
        big_figures: dict[str, float] = {}

        def measure(graph: str, kind: str, plan: Path) -> dict[str, float]:
            before = rig.cpu()
            result = rig.run(plan) if kind == "direct" else rig.submit(plan, tty=kind == "tty")
            after = rig.cpu()
            took.setdefault((graph, kind), []).append(result["total"])
            spent = cpu.setdefault((graph, kind), {})
            kids_spent = 0.0
            for name, (own, kids) in after.items():
                was = before.get(name, (0.0, 0.0))
                spent.setdefault(name, []).append(own - was[0])
                kids_spent += kids - was[1]
            spent.setdefault("tasks", []).append(kids_spent)
            if kind != "direct":
                spent.setdefault("submit", []).append(result["cpu"])
            return result

        try:
            list(pool.map(run_true, range(4)))  # start the pool's processes
            for n in range(1, rounds + 1):
                for kind in kinds:
                    fan = measure("fan", kind, write_fanout(root / f"fanout-{n}-{kind}", tasks))
                    if kind == "direct":
                        firsts.append(fan["first"])
                        fan_floor.append(floor_fanout(pool, tasks))
                for kind in kinds:
                    chain = measure("chain", kind, write_chain(root / f"chain-{n}-{kind}", chain_n))
                    if kind == "direct":
                        gap, run = chain_breakdown(chain["history"])
                        between.append(gap)
                        running.append(run)
                        firsts.append(chain["first"])
                        chain_floor.append(floor_chain(chain_n))
                line = ", ".join(f"{kind} {took['fan', kind][-1]:.2f} s" for kind in kinds)
                chains = ", ".join(f"{kind} {took['chain', kind][-1]:.2f} s" for kind in kinds)
                print(
                    f"round {n}: fan-out {line}, floor {fan_floor[-1]:.2f} s; "
                    f"chain {chains}, floor {chain_floor[-1]:.2f} s",
                    flush=True,
                )
            rate = tasks / statistics.median(took["fan", "direct"])
            if args.big is None and big / rate > BIG_LIMIT_S:
                big_note = (
                    f"skipped: about {big / rate:.0f} s at {rate:.0f} tasks/s (--big {big} runs it)"
                )
                big = 0
            if big:
                brain = rig.pids()["brain"]
                was, cpu_was = memory_kb(brain), rig.cpu()["brain"][0]
                result = rig.run(write_fanout(root / "big", big))
                now, cpu_now = memory_kb(brain), rig.cpu()["brain"][0]
                big_figures = {
                    "total": result["total"],
                    "rss_before": was["VmRSS"] / 1024,
                    "rss_after": now["VmRSS"] / 1024,
                    "hwm": now["VmHWM"] / 1024,
                    "brain_ms": (cpu_now - cpu_was) / big * 1000,
                }
        finally:
            pool.shutdown()
            rig.client.close()
            rig.subscriber.close()
            rig.stop()

    ff, cf = statistics.median(fan_floor), statistics.median(chain_floor)
    fan = {kind: statistics.median(took["fan", kind]) for kind in kinds}
    chain = {kind: statistics.median(took["chain", kind]) for kind in kinds}
    label = {
        "direct": "llmo (no CLI):",
        "pipe": "submit --watch, pipe:",
        "tty": "submit --watch, tty:",
    }
    print(f"\nllmo up: 2 workers x {args.slots} slots, no brain-role worker; medians of {rounds}")
    print("'no CLI': from this process's PlanSubmit to batch_completed; 'submit --watch': from")
    print("exec to exit of `llmo submit PLAN --watch`, its output to a pipe or a pseudo-terminal")
    print(f"(a) fan-out of {tasks} `true` tasks")
    print(
        f"    floor:                 {tasks / ff:8.1f} tasks/s ({ff:.2f} s, ProcessPoolExecutor(2))"
    )
    for kind in kinds:
        print(
            f"    {label[kind]:22} {tasks / fan[kind]:8.1f} tasks/s ({fan[kind]:.2f} s), "
            f"{ff / fan[kind]:.3f} of the floor"
        )
    print(f"(b) chain of {chain_n} dependent `true` tasks")
    print(
        f"    floor:                 {cf / chain_n * 1000:6.2f} ms per task ({cf:.2f} s, "
        "plain loop)"
    )
    for kind in kinds:
        print(
            f"    {label[kind]:22} {chain[kind] / chain_n * 1000:6.2f} ms per task "
            f"({chain[kind]:.2f} s), {(chain[kind] - cf) / chain_n * 1000:+6.2f} ms per hop "
            "over the floor"
        )
    print(
        f"    as the brain saw a hop: {statistics.median(between) * 1000:.2f} ms from a task's "
        f"success to the next one's start, {statistics.median(running) * 1000:.2f} ms from "
        "a start to its success\n"
        "    (a worker reports a start once the attempt has run 50 ms: the brain hears of a\n"
        "    shorter one's start with its result, so the first figure holds the task's run)"
    )
    print(
        f"submit to first task started: median {statistics.median(firsts) * 1000:.1f} ms, "
        f"max {max(firsts) * 1000:.1f} ms ({len(firsts)} batches)"
    )
    print("CPU per task by process, median ms ('tasks': the `true` processes the workers ran):")
    columns = [(graph, kind) for graph in ("fan", "chain") for kind in kinds]
    print("    " + " " * 8 + "".join(f"{graph + ' ' + kind:>14}" for graph, kind in columns))
    names = sorted({name for column in columns for name in cpu[column]}, key=process_order)
    for name in names:
        cells = []
        for graph, kind in columns:
            size = tasks if graph == "fan" else chain_n
            value = ms_per_task(cpu[graph, kind].get(name, []), size)
            cells.append(f"{value:14.3f}" if value == value else f"{'-':>14}")
        print(f"    {name:8}" + "".join(cells))
    if big_figures:
        print(f"(c) fan-out of {big} `true` tasks (no CLI), once")
        print(f"    {big / big_figures['total']:.1f} tasks/s ({big_figures['total']:.2f} s)")
        print(
            f"    brain: {big_figures['brain_ms']:.3f} ms CPU per task; resident "
            f"{big_figures['rss_before']:.1f} MiB before, {big_figures['rss_after']:.1f} MiB "
            f"after, peak {big_figures['hwm']:.1f} MiB"
        )

    print("\naims (on 2 cores, through the CLI):")
    for kind in outputs:
        ratio = ff / fan[kind]
        print(
            f"    fan-out, submit --watch ({kind}): {ratio:.3f} of the floor (aim >= 0.6): "
            f"{verdict(ratio >= 0.6)}"
        )
    for kind in outputs:
        hop = chain[kind] / chain_n * 1000
        print(
            f"    chain, submit --watch ({kind}): {hop:.2f} ms per hop, all of it from exec "
            f"to exit (aim < 2 ms): {verdict(hop < 2.0)}"
        )
    if big_figures:
        brain_ms = big_figures["brain_ms"]
        print(
            f"    brain CPU at {big} items: {brain_ms:.3f} ms per task (aim < 0.1 ms): "
            f"{verdict(brain_ms < 0.1)}"
        )
    else:
        print(f"    brain CPU at {BIG} items: not run ({big_note or '--big 0'})")
    return 0


def process_order(name: str) -> tuple[int, str]:
    order = ["brain", "broker", "submit", "tasks"]
    return (order.index(name), name) if name in order else (len(order) - 2, name)


if __name__ == "__main__":
    sys.exit(main())
