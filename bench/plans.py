"""Plan handling cost per foreach item: parse + validate + read + expand.

Run: ``.venv/bin/python bench/plans.py [--items N] [--repeat R]``

A plan with a ``foreach`` task over an N-item manifest (default 100,000) is
parsed and validated, its placeholders checked against a configuration, the
manifest read from disk and the template expanded into tasks, for
``batch_size`` 1 and 10 and for a per-item pipeline (a second foreach that
depends on ``<first>_{ITEM.id}``). The figure is the best of R runs divided
by N. Aim: under 20 µs per item, so a large manifest never stalls the brain.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from llmo.plans import (
    expand_foreach,
    parse_plan,
    read_foreach_items,
    run_variables,
    undefined_placeholders,
)

PLAN = """# Plan: bench

## Objective

Summarise many documents.

## Tasks

### prepare
- **executor**: worker
- **task_class**: cpu
- **command**: `python3 {PLAN_PATH}/scripts/prepare.py --out {BATCH_PATH}/manifest.json`
- **depends_on**: none

### extract
- **executor**: worker
- **task_class**: cpu
- **command**: `python3 {PLAN_PATH}/scripts/x.py --id {ITEM.id} --path "{ITEM.path}" --lang {LANG}`
- **depends_on**: prepare
- **foreach**: {BATCH_PATH}/manifest.json:items
- **batch_size**: @BATCH_SIZE@
- **produces**: {BATCH_PATH}/extracted/{ITEM.id}.txt

### summarize
- **executor**: worker
- **task_class**: llm
- **command**: `python3 {PLAN_PATH}/scripts/summarize.py --id {ITEM.id} --batch {BATCH_ID}`
- **depends_on**: @SUMMARIZE_DEPENDS_ON@
- **foreach**: {BATCH_PATH}/manifest.json:items

### aggregate
- **executor**: worker
- **task_class**: cpu
- **command**: `python3 {PLAN_PATH}/scripts/aggregate.py --batch {BATCH_ID}`
- **depends_on**: summarize
"""


def run_once(batch_dir: str, batch_size: int, pipeline: bool) -> tuple[float, int]:
    started = time.perf_counter()
    text = PLAN.replace("@BATCH_SIZE@", str(batch_size))
    text = text.replace(
        "@SUMMARIZE_DEPENDS_ON@", "extract_{ITEM.id}" if batch_size == 1 else "extract"
    )
    plan, problems = parse_plan(text, "bench/plan.md")
    config = {"LANG": "en"}
    problems += undefined_placeholders(plan, config)
    assert plan is not None and not problems, [str(p) for p in problems]
    variables = run_variables("/plans/bench", batch_dir, "20250101_000000", config)
    extract = plan.task("extract")
    items = read_foreach_items(extract.foreach, variables)
    tasks = expand_foreach(extract, items, variables, reserved=plan.task_ids)
    if pipeline:
        tasks += expand_foreach(plan.task("summarize"), items, variables, reserved=plan.task_ids)
    return time.perf_counter() - started, len(tasks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.items
    with tempfile.TemporaryDirectory() as batch_dir:
        manifest = {"items": [{"id": f"doc{i:06d}", "path": f"/data/doc{i}.txt"} for i in range(n)]}
        Path(batch_dir, "manifest.json").write_text(json.dumps(manifest))
        print(
            f"plans: parse + validate + read manifest + expand, {n:,} items, best of {args.repeat}"
        )
        worst = 0.0
        for label, batch_size, pipeline in (
            ("foreach, batch_size 1", 1, False),
            ("foreach, batch_size 10", 10, False),
            ("per-item pipeline (2 x foreach)", 1, True),
        ):
            best, count = min(run_once(batch_dir, batch_size, pipeline) for _ in range(args.repeat))
            per_item = best / n * 1e6
            worst = max(worst, per_item)
            print(f"  {label:34s} {count:>8,} tasks  {best:6.3f} s  {per_item:5.2f} µs/item")
        tracemalloc.start()
        _, count = run_once(batch_dir, 1, True)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"  peak memory, pipeline: {peak / count:,.0f} bytes per task ({count:,} tasks)")
    verdict = "meets" if worst < 20 else "misses"
    print(f"worst: {worst:.2f} µs per item ({verdict} the 20 µs aim)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
