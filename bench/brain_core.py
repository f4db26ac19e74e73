"""Benchmark of the brain's pure core: a 100,000-task foreach with instant workers.

    .venv/bin/python bench/brain_core.py [--items 100000] [--workers 8] [--slots 4]

Three figures, against the brain's targets:

* completions/s: every item assigned, started and done through ``step``
  (workers answer at once, in memory; no sockets, no journal): aim 20,000/s;
* memory per task: the traced peak of the whole run (tracemalloc, a second
  run) divided by the tasks, and what the state still holds at the end:
  aim under 1 KB;
* journal replay: the run's events written to a journal, then recovered
  (decode + fold of ``step``), per 10,000 events: aim under 0.5 s.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import sys
import tempfile
import time
import tracemalloc

from llmo.brain.commands import ReadManifest, ReadPlan, Send
from llmo.brain.config import BrainConfig
from llmo.brain.core import new_state, step
from llmo.brain.events import Configure, ManifestRead, PlanLoaded, Received
from llmo.brain.journal import Journal
from llmo.proto.messages import (
    Heartbeat,
    PlanSubmit,
    Register,
    TaskAssign,
    TaskDone,
    TaskStarted,
)

PLAN = """# Plan: bench

## Objective
Many small tasks.

## Tasks

### each
- **executor**: worker
- **task_class**: cpu
- **command**: `python {PLAN_PATH}/scripts/item.py --batch {BATCH_ID} --item {ITEM.id}`
- **depends_on**: none
- **foreach**: {BATCH_PATH}/manifest.json:items

### total
- **executor**: worker
- **task_class**: cpu
- **command**: `python {PLAN_PATH}/scripts/total.py`
- **depends_on**: each
"""


def run(items: int, workers: int, slots: int, record: list | None) -> dict:
    state = new_state()
    now = 1_700_000_000.0
    assigns: collections.deque[TaskAssign] = collections.deque()
    counter = [0]

    def feed(event, t):
        nonlocal state
        if record is not None:
            record.append((t, event))
        state, commands = step(state, event, t)
        for command in commands:
            kind = type(command)
            if kind is Send:
                if type(command.msg) is TaskAssign:
                    assigns.append(command.msg)
            elif kind is ReadPlan:
                feed(PlanLoaded(command.request_id, PLAN), t)
            elif kind is ReadManifest:
                manifest = tuple({"id": str(i)} for i in range(items))
                feed(ManifestRead(command.batch_id, command.task_id, manifest), t)

    def message(msg, src):
        counter[0] += 1
        return Received(_stamp(msg, src, counter[0], now))

    feed(Configure(BrainConfig(summary_interval_s=5.0).to_dict()), now)
    for w in range(workers):
        name = f"w{w}"
        feed(
            message(Register(role="worker", slots=slots, vram_budget_mb=6000, pid=w + 1), name), now
        )
        feed(message(Heartbeat(role="worker", state="cold", slots_total=slots), name), now)
    started = time.perf_counter()
    feed(message(PlanSubmit(plan_path="/plans/bench"), "submit-1"), now)
    expanded = time.perf_counter()
    done = 0
    while assigns:
        a = assigns.popleft()
        now += 0.0001
        ids = {"batch_id": a.batch_id, "task_id": a.task_id, "attempt_id": a.attempt_id}
        n = counter[0] = counter[0] + 2
        env = {"src": a.dst, "dst": "brain", "ts": now}
        feed(Received(TaskStarted(id=f"{a.dst}-{n - 1}", **env, **ids)), now)
        feed(Received(TaskDone(id=f"{a.dst}-{n}", **env, **ids)), now)
        done += 1
    finished = time.perf_counter()
    batch = next(iter(state.batches.values()))
    assert batch.state == "complete", (batch.state, dict(batch.counts))
    return {
        "state": state,
        "tasks": len(batch.tasks),
        "done": done,
        "expand_s": expanded - started,
        "run_s": finished - expanded,
        "events": state.events,
    }


def _stamp(msg, src, n, now):
    import dataclasses

    return dataclasses.replace(msg, src=src, dst="brain", id=f"{src}-{n}", ts=now)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()

    gc.collect()
    events: list = []
    result = run(args.items, args.workers, args.slots, events)
    rate = result["done"] / result["run_s"]
    total_rate = result["done"] / (result["run_s"] + result["expand_s"])
    print(
        f"tasks: {result['tasks']:,} ({result['done']:,} assignments run), "
        f"events {result['events']:,}"
    )
    print(f"expansion of {args.items:,} items: {result['expand_s']:.2f} s")
    print(f"completions/s: {rate:,.0f} (with expansion: {total_rate:,.0f})  [aim >= 20,000]")
    del result

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "brain.journal")
        journal = Journal(path, fsync="never")
        journal.recover()
        for t, event in events:
            journal.append(t, event)
        journal.close()
        size = os.path.getsize(path)
        count = len(events)
        del events
        gc.collect()
        started = time.perf_counter()
        replayer = Journal(path)
        state = replayer.recover()
        replay_s = time.perf_counter() - started
        replayer.close()
        assert next(iter(state.batches.values())).state == "complete"
        del state
        print(
            f"journal: {count:,} events, {size / 1e6:.1f} MB; replay {replay_s:.2f} s = "
            f"{replay_s / count * 10_000:.3f} s per 10,000 events  [aim < 0.5 s]"
        )

    gc.collect()
    tracemalloc.start()
    result = run(args.items, args.workers, args.slots, None)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tasks = result["tasks"]
    print(
        f"memory: peak {peak / 1e6:.1f} MB = {peak / tasks:,.0f} B per task; "
        f"held at the end {current / 1e6:.1f} MB = {current / tasks:,.0f} B per task  [aim < 1 KB]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
