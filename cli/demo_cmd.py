"""``llmo demo [PLAN_DIR]``: what ``make run`` does, in one command.

Starts ``llmo up`` (broker, brain, two CPU workers and a brain-role worker,
the embedded Gemma model), waits until every worker is registered, submits
the plan (``plans/examples/summarize`` by default) with ``--watch``, prints
where its results and ``RUN_SUMMARY.md`` are, and stops the rig. The rig's
folder and logs stay behind for a look afterwards.

A plan writes its history into its own folder. When llmo is installed into
a virtual environment (not from a checkout), the examples lie inside it, and
the worker's policy protects that environment from tasks: the demo then runs
a copy of the example in ``./llmo-examples/`` instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmo import plans

EXAMPLES = Path(plans.__file__).resolve().parent / "examples"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "plan_dir", nargs="?", help="the plan to run (default: the summarize example)"
    )
    parser.add_argument("--rig-dir", default="rig", help="local state and logs (default ./rig)")
    parser.add_argument("--config", help="submission configuration (JSON), passed to submit")
    parser.add_argument("--ready-timeout", type=float, default=120.0)


def example(name: str, prefix: Path, copies: Path, examples: Path = EXAMPLES) -> Path:
    """The example plan ``name``, or a fresh copy of it under ``copies`` when the
    examples lie inside ``prefix`` (the environment llmo runs from, which the
    workers' policy keeps tasks from writing)."""
    source = examples / name
    if prefix.resolve() not in source.resolve().parents:
        return source
    target = copies / name
    ignore = shutil.ignore_patterns("history", "__pycache__")
    shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
    print(f"llmo demo: the examples are installed with llmo; running a copy in {target}")
    return target


def run(args: argparse.Namespace) -> int:
    from llmo.cli.common import llmo_child
    from llmo.proto.endpoints import resolve

    endpoints = resolve()
    env = dict(os.environ, LLMO_BROKER=endpoints.broker, LLMO_PUB=endpoints.pub)
    llmo = llmo_child()
    rig_dir = Path(args.rig_dir).resolve()
    if args.plan_dir is None:
        args.plan_dir = str(example("summarize", Path(sys.prefix), Path.cwd() / "llmo-examples"))
    print(f"llmo demo: starting the rig in {rig_dir} (broker {endpoints.broker})", flush=True)
    up = subprocess.Popen([*llmo, "up", "--rig-dir", str(rig_dir)], env=env)
    try:
        waiting = subprocess.Popen(
            [
                *llmo,
                "status",
                "--wait-ready",
                str(args.ready_timeout),
                "--expect",
                "cpu-1,cpu-2,brain-llm",
            ],
            env=env,
        )
        # llmo up may refuse at once (a rig folder in use, no model): stop
        # waiting then, rather than for the whole ready timeout.
        while waiting.poll() is None and up.poll() is None:
            time.sleep(0.1)
        if up.poll() is not None:
            waiting.terminate()
            waiting.wait()
            print(
                f"llmo demo: llmo up exited with code {up.returncode}; see its message above"
                f" and {rig_dir}/logs",
                file=sys.stderr,
            )
            return 1
        if waiting.returncode != 0:
            print(f"llmo demo: the rig did not come up; see {rig_dir}/logs", file=sys.stderr)
            return 1
        submit = [*llmo, "submit", args.plan_dir, "--watch"]
        if args.config:
            submit += ["--config", args.config]
        started = time.monotonic()
        result = subprocess.run(submit, env=env)
        took = time.monotonic() - started
        history = Path(args.plan_dir).resolve() / "history"
        runs = sorted(history.glob("*/RUN_SUMMARY.md")) if history.is_dir() else []
        print()
        print(f"llmo demo: the plan ran in {took:.1f} s with exit code {result.returncode}")
        if runs:
            latest = runs[-1].parent
            print(f"llmo demo: results  {latest}/results/")
            print(f"llmo demo: summary  {latest}/RUN_SUMMARY.md")
            print(f"llmo demo: events   {latest}/batch_events.jsonl")
        print(f"llmo demo: rig logs {rig_dir}/logs/")
        return result.returncode
    finally:
        print("llmo demo: stopping the rig", flush=True)
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
