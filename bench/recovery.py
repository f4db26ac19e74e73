"""Benchmark of recovery: a brain killed with a 100,000-item foreach batch in its journal.

    .venv/bin/python bench/recovery.py [--items 100000] [--workers 8] [--slots 4]

The batch is run through the brain's core with instant workers (as in
``bench/brain_core.py``) and journaled the way the brain's shell journals it:
each event appended, the snapshot policy consulted after every burst, a
snapshot written when it is due. Then the brain is "killed" (the journal is
left as a ``kill -9`` leaves it: flushed, never closed) and recovered:

* in this process: ``Journal.recover`` (snapshot load + tail replay), with
  the records it replayed;
* as a real ``llmo brain`` process against a real broker (in a thread, on
  loopback): the time from its start until it answers a snapshot request,
  and its peak RSS;
* ``llmo replay`` of the journal: its time and peak RSS.

The floor, measured in the same run: reading the journal's bytes, plus
loading a state of the same size with pickle (``loads(dumps(state))``), which
is what any recovery from a whole-state snapshot must at least pay; and the
start of an ``llmo`` process that does nothing (``llmo --help``), which the
real brain pays before it reads anything. Aim: the brain answers within 1 s.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from brain_core import run as run_batch

from llmo.brain.core import step
from llmo.brain.journal import Journal
from llmo.broker.service import Broker
from llmo.proto.client import Client
from llmo.proto.messages import SnapshotReply, SnapshotRequest

ANSWER_S = 120.0  # bounds a hang of the restarted brain


def journal_the_run(path: str, events: list) -> tuple[object, int]:
    """Fold ``events`` and journal them as the brain's shell does; return the state and
    how many snapshots were written. The journal is left as a killed brain leaves it."""
    journal = Journal(path, fsync="never")
    state = journal.recover()
    stalls: list[float] = []
    for index, (now, event) in enumerate(events):
        state, _ = step(state, event, now)
        journal.append(now, event)
        if index % 64 == 63:  # a loop iteration: commit, then the snapshot policy
            journal.commit()
            started = time.perf_counter()
            journal.maybe_snapshot(state, time.monotonic())
            stalls.append(time.perf_counter() - started)
    journal.commit()
    stalls.sort()
    print(
        f"the loop's time in the snapshot policy per iteration: longest {stalls[-1] * 1000:.1f} ms,"
        f" 99.9th percentile {stalls[int(len(stalls) * 0.999)] * 1000:.2f} ms, "
        f"all {sum(stalls):.2f} s"
    )
    # A snapshot still being written when the brain is killed finishes, but is never
    # installed: the restarted brain uses the previous one.
    writing = journal.snapshot_writing
    snapshots = journal.snapshots
    # kill -9: the records are with the OS; the handle and the lock die with the process.
    assert journal.handle is not None
    journal.handle.close()
    journal.handle = None
    journal.unlock()
    if writing:
        os.waitpid(-1, 0)
    return state, snapshots


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def llmo_argv() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "llmo")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "llmo.cli.main"]


PEAK = (
    "import atexit, sys\n"
    "def peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'): sys.stderr.write('peak ' + line.split()[1] + '\\n')\n"
    "atexit.register(peak)\n"
    "from llmo.cli.main import main\n"
    "sys.argv[0] = 'llmo'\n"
    "sys.exit(main())\n"
)


def llmo_run(*args: str) -> tuple[float, float, int]:
    """Seconds, peak RSS (MB, the process's own: VmHWM at exit) and exit code of
    ``llmo ARGS``."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PEAK, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    peaks = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("peak ")]
    return seconds, int(peaks[-1]) / 1024 if peaks else float("nan"), done.returncode


def brain_answers(path: str, batch_id: str) -> tuple[float, float]:
    """Start a real brain on the journal; seconds until it answers, and its peak RSS."""
    broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", interval=0.5)
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    tool = Client("bench-status", broker.router_endpoint)
    log = open(path + ".brain.log", "wb")  # noqa: SIM115 (closed below)
    started = time.perf_counter()
    brain = subprocess.Popen(
        [*llmo_argv(), "brain", "--broker", broker.router_endpoint, "--journal", path],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        while True:
            if brain.poll() is not None:
                raise SystemExit(f"the brain exited {brain.returncode}: see {log.name}")
            reply = tool.request(SnapshotRequest(dst="brain"), timeout=0.2)
            if isinstance(reply, SnapshotReply) and any(b.id == batch_id for b in reply.batches):
                answered = time.perf_counter() - started
                break
            if time.perf_counter() - started > ANSWER_S:
                raise SystemExit(f"the brain did not answer in {ANSWER_S:.0f} s")
        rss = peak_rss_mb(brain.pid)
        with open(log.name, encoding="utf-8", errors="replace") as text:
            said = [line.strip() for line in text if "holds" in line]
        print(f"the brain said: {said[-1] if said else '(no recovery line)'}")
    finally:
        brain.terminate()
        brain.wait(30)
        tool.close()
        broker.stop()
        thread.join(5)
        log.close()
    return answered, rss


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()

    events: list = []
    result = run_batch(args.items, args.workers, args.slots, events)
    batch_id = next(iter(result["state"].batches))
    del result
    gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "brain.journal")
        built = time.perf_counter()
        state, snapshots = journal_the_run(path, events)
        built = time.perf_counter() - built
        count = len(events)
        del events
        size = os.path.getsize(path)
        snap = os.path.getsize(path + ".snap") if os.path.exists(path + ".snap") else 0
        print(
            f"journaled {count:,} events of a {args.items:,}-item batch in {built:.1f} s, "
            f"{snapshots} snapshots"
        )
        print(f"journal left: {size / 1e6:.2f} MB; snapshot: {snap / 1e6:.2f} MB")

        gc.collect()
        started = time.perf_counter()
        with open(path, "rb") as handle:
            handle.read()
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        body = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        dump_s = time.perf_counter() - started
        started = time.perf_counter()
        pickle.loads(body)
        load_s = time.perf_counter() - started
        del state, body
        gc.collect()
        idle_s, _, _ = llmo_run("--help")
        print(
            f"floor: read the journal {read_s:.3f} s + load a state of the same size "
            f"{load_s:.3f} s (pickle; dumping it: {dump_s:.3f} s); an idle llmo start "
            f"{idle_s:.3f} s"
        )

        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        journal = Journal(path)
        recovered = journal.recover()
        recover_s = time.perf_counter() - started
        report = getattr(journal, "recovery", None)
        journal.close()
        assert recovered.batches[batch_id].state == "complete"
        del recovered
        tail = f", replayed {report.replayed:,} records" if report is not None else ""
        print(f"recover in process: {recover_s:.3f} s{tail}  (process peak {before:.0f} MB)")

        answered, rss = brain_answers(path, batch_id)
        print(f"a restarted brain answers after {answered:.3f} s, peak RSS {rss:.0f} MB", end="")
        print("  [aim < 1 s]")

        replay_s, replay_rss, code = llmo_run("replay", path)
        print(f"llmo replay: {replay_s:.2f} s, peak RSS {replay_rss:.0f} MB (exit {code})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
