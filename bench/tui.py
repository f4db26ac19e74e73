"""The monitor under load: CPU share, peak memory and update lag of ``llmo tui``.

Run: ``.venv/bin/python bench/tui.py [--seconds 30] [--tasks 10000] [--events 1000]``

A broker runs in this process with a scripted brain that answers snapshot
requests (5 workers, one running batch of ``--tasks`` tasks) and publishes
``--events`` task events a second, while 5 workers heartbeat at ``--hz``
(with GPU telemetry) and report token progress at the same rate. About one
task in fifty is retried instead of finishing, so the events pane scrolls too. The monitor
runs as its own process on a pseudo-terminal of 120 x 40 cells, so it draws
for real. Once it has taken its snapshot, the load runs for ``--seconds``;
the monitor's CPU time over that window (all its threads, from /proc), its
peak resident memory (VmHWM) and the lag from a publication's send time to
the screen refresh that shows it are printed, with the monitor's targets beside
them: under 25 % of one core, under 150 MB, lag under 250 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

AIM_CPU = 0.25
AIM_MB = 150.0
AIM_LAG_S = 0.250
COLUMNS, ROWS = 120, 40


# --- the monitor's side (a child process on a pseudo-terminal) ------------------------------


def child(args: argparse.Namespace) -> int:
    from llmo.proto.endpoints import Endpoints
    from llmo.tui.app import MonitorApp
    from llmo.tui.feed import Feed

    endpoints = Endpoints(args.broker, args.pub)
    app = MonitorApp(lambda post: Feed(endpoints, post), endpoint=endpoints.broker)
    stop_file = Path(args.stop_file)

    def watch() -> None:
        while not stop_file.exists():
            time.sleep(0.2)
        app.call_from_thread(app.exit)

    threading.Thread(target=watch, daemon=True).start()
    if args.profile:
        import cProfile

        cProfile.runctx("app.run()", globals(), {"app": app}, args.profile)
    else:
        app.run()
    Path(args.out).write_text(
        json.dumps(
            {
                "updates": app.stats.updates,
                "messages": app.stats.messages,
                "lags": sorted(app.stats.lags),
                "fresh_lags": sorted(app.stats.fresh_lags),
                "work": sorted(app.stats.work),
                "tasks": sum(len(t) for t in app.model.tasks.values()),
            }
        )
    )
    return 0


# --- the rig's side ---------------------------------------------------------------------------


class Load:
    """The broker, a scripted brain and five workers, in threads of this process."""

    def __init__(self, tasks: int, workers: int, retry_every: int = 101) -> None:
        import zmq

        from llmo.broker.service import Broker

        self.context = zmq.Context()
        self.broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
        self.broker_thread = threading.Thread(target=self.broker.run, daemon=True)
        self.broker_thread.start()
        self.n_tasks = tasks
        self.retry_every = retry_every  # one finish in so many is a retry (an events-pane line)
        self.names = [f"gpu-{i}" for i in range(1, workers + 1)]
        self.batch_id = "20261129_120000"
        self.rev = 100
        self.snapshots = 0
        self.sent = 0
        self.stop = threading.Event()
        self.loaded = threading.Event()

    def snapshot_reply(self, request):
        from llmo.proto.messages import BatchInfo, SnapshotReply, TaskInfo, WorkerInfo

        tasks = tuple(
            TaskInfo(
                batch_id=self.batch_id,
                id=f"item_{i:05d}",
                state="ready",
                task_class="llm",
                template="item",
            )
            for i in range(self.n_tasks)
        )
        workers = tuple(
            WorkerInfo(name=n, state="hot", model="q7b.gguf", gpus=(i,), slots=1, slots_free=0)
            for i, n in enumerate(self.names, 1)
        )
        batch = BatchInfo(
            id=self.batch_id,
            plan="bench",
            history_path="/tmp/none",
            state="running",
            priority_name="normal",
            created_at=time.time(),
            tasks=self.n_tasks,
            counts={"ready": self.n_tasks},
        )
        return SnapshotReply(
            dst=request.src,
            reply_to=request.id,
            rev=self.rev,
            workers=workers,
            batches=(batch,),
            tasks=tasks,
        )

    def run(self, events_per_s: int, hz: float) -> None:
        from llmo.proto.client import Client
        from llmo.proto.messages import (
            BRAIN,
            BROKER,
            BatchEvent,
            GpuReading,
            Heartbeat,
            SnapshotRequest,
            TaskProgress,
            Telemetry,
        )

        endpoint = self.broker.router_endpoint
        brain = Client(BRAIN, endpoint, context=self.context)
        workers = [Client(n, endpoint, context=self.context) for n in self.names]
        step = 0.01
        per_step = events_per_s * step
        owed = 0.0
        k = 0
        next_step = time.monotonic()
        next_beat = next_step
        try:
            while not self.stop.is_set():
                while (msg := brain.recv(timeout=0)) is not None:
                    if isinstance(msg, SnapshotRequest):
                        brain.send(self.snapshot_reply(msg))
                        self.snapshots += 1
                now = time.monotonic()
                if self.loaded.is_set():
                    owed += per_step
                    while owed >= 1.0:
                        owed -= 1.0
                        i = (k // 2) % self.n_tasks
                        w = self.names[i % len(self.names)]
                        self.rev += 1
                        started = k % 2 == 0
                        event, state = (
                            ("task_started", "running") if started else ("task_succeeded", "done")
                        )
                        detail = {}
                        if not started and k % self.retry_every == 1:
                            event, state = "task_retried", "delayed"
                            detail = {"reason": "exit 1: CUDA error: out of memory"}
                        brain.send(
                            BatchEvent(
                                dst=BROKER,
                                rev=self.rev,
                                batch_id=self.batch_id,
                                event=event,
                                task_id=f"item_{i:05d}",
                                state=state,
                                worker=w,
                                attempt_id=f"{self.batch_id}:item_{i:05d}:{k}",
                                detail=detail,
                            )
                        )
                        k += 1
                        self.sent += 1
                    if now >= next_beat:
                        next_beat += 1.0 / hz
                        for n, client in enumerate(workers):
                            gpu = GpuReading(
                                index=n,
                                name="GTX 1060 6GB",
                                temperature_c=60.0 + n,
                                vram_used_mb=4200,
                                vram_total_mb=6144,
                                power_w=95.0,
                                util_percent=88.0,
                            )
                            client.send(
                                Heartbeat(
                                    dst=BRAIN,
                                    role="worker",
                                    state="hot",
                                    model="q7b.gguf",
                                    tok_s=20.0 + (k % 7),
                                    telemetry=Telemetry(gpu_available=True, gpus=(gpu,)),
                                )
                            )
                            i = (k // 2) % self.n_tasks
                            client.send(
                                TaskProgress(
                                    dst=BRAIN,
                                    batch_id=self.batch_id,
                                    task_id=f"item_{i:05d}",
                                    attempt_id=f"{self.batch_id}:item_{i:05d}:{k}",
                                    tokens=k,
                                    tok_s=21.0,
                                )
                            )
                            self.sent += 2
                next_step += step
                time.sleep(max(0.0, next_step - time.monotonic()))
        finally:
            brain.close()
            for client in workers:
                client.close()

    def close(self) -> None:
        self.stop.set()
        self.broker.stop()
        self.broker_thread.join(timeout=5)
        self.context.destroy(linger=0)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def drain(fd: int, stop: threading.Event) -> None:
    """Read and drop what the monitor draws, as a terminal would."""
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                os.read(fd, 65536)
            except OSError:
                return


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def main(args: argparse.Namespace) -> int:
    import fcntl
    import termios

    load = Load(args.tasks, args.workers)
    publisher = threading.Thread(target=load.run, args=(args.events, args.hz), daemon=True)
    publisher.start()
    with tempfile.TemporaryDirectory() as tmp:
        out, stop_file = Path(tmp, "stats.json"), Path(tmp, "stop")
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS), "LINES": str(ROWS)}
        argv = [
            sys.executable,
            __file__,
            "--child",
            "--broker",
            load.broker.router_endpoint,
            "--pub",
            load.broker.pub_endpoint,
            "--out",
            str(out),
            "--stop-file",
            str(stop_file),
        ]
        if args.profile:
            argv += ["--profile", str(Path(args.profile).resolve())]
        proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        stop_drain = threading.Event()
        threading.Thread(target=drain, args=(master, stop_drain), daemon=True).start()
        try:
            deadline = time.monotonic() + 60
            while load.snapshots == 0 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            if load.snapshots == 0:
                print("the monitor never asked for a snapshot", file=sys.stderr)
                return 1
            time.sleep(2.0)  # the 10,000-task snapshot lands and is drawn
            start_mb = peak_mb(proc.pid)
            load.loaded.set()
            t0, c0, sent0 = time.monotonic(), cpu_seconds(proc.pid), load.sent
            time.sleep(args.seconds)
            t1, c1, sent1 = time.monotonic(), cpu_seconds(proc.pid), load.sent
            mb = peak_mb(proc.pid)
            load.stop.set()
            stop_file.touch()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            stop_drain.set()
            load.close()
            os.close(master)
        stats = json.loads(out.read_text())
    share = (c1 - c0) / (t1 - t0)
    rate = (sent1 - sent0) / (t1 - t0)
    print(
        f"load: {rate:,.0f} publications/s for {t1 - t0:.1f} s ({args.events} task events/s, "
        f"{args.workers} workers x {args.hz:g} Hz heartbeats + progress), "
        f"batch of {args.tasks:,} tasks, {COLUMNS}x{ROWS} terminal"
    )
    work = stats["work"]
    print(
        f"screen updates: {stats['updates'] / (t1 - t0):.1f}/s, each folded in and redrawn in "
        f"p50 {percentile(work, 0.5) * 1000:.1f} ms / p95 {percentile(work, 0.95) * 1000:.1f} ms; "
        f"snapshots taken: {load.snapshots}"
    )
    print(f"cpu:  {share:6.1%} of one core   (aim < {AIM_CPU:.0%}: {share / AIM_CPU:.2f} of it)")
    print(
        f"peak: {mb:6.1f} MB            (aim < {AIM_MB:.0f} MB: {mb / AIM_MB:.2f} of it; "
        f"{start_mb:.1f} MB before the load)"
    )
    for name, key in (("oldest", "lags"), ("newest", "fresh_lags")):
        lags = stats[key]
        p50, p95 = percentile(lags, 0.5), percentile(lags, 0.95)
        worst = max(lags, default=float("nan"))
        print(
            f"lag, {name} publication of an update to its screen: p50 {p50 * 1000:4.0f} ms, "
            f"p95 {p95 * 1000:4.0f} ms, max {worst * 1000:4.0f} ms "
            f"(aim < {AIM_LAG_S * 1000:.0f} ms: p95 is {p95 / AIM_LAG_S:.2f} of it)"
        )
    return 0


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1000, help="task events per second")
    parser.add_argument("--hz", type=float, default=10.0, help="heartbeats per second per worker")
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--profile", help="write a cProfile of the monitor's UI thread here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    parser.add_argument("--pub", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--stop-file", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    sys.exit(child(arguments) if arguments.child else main(arguments))
