"""`make run` is `llmo demo`: a fresh rig, the summarize example, a clean stop."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e_fixtures import free_port

EXAMPLE = Path(__file__).resolve().parent.parent / "plans" / "examples" / "summarize"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_demo_runs_the_example_and_says_where_its_results_are(tmp_path):
    plan = tmp_path / "summarize"
    shutil.copytree(EXAMPLE, plan, ignore=shutil.ignore_patterns("history"))
    env = dict(
        os.environ,
        LLMO_BROKER=f"tcp://127.0.0.1:{free_port()}",
        LLMO_PUB=f"tcp://127.0.0.1:{free_port()}",
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmo.cli.main",
            "demo",
            str(plan),
            "--rig-dir",
            str(tmp_path / "rig"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (history,) = (plan / "history").iterdir()
    assert f"llmo demo: results  {history}/results/" in run.stdout
    assert f"llmo demo: summary  {history}/RUN_SUMMARY.md" in run.stdout
    assert "llmo up: stopped" in run.stdout
    results = sorted((history / "results").glob("*.json"))
    assert len(results) == 4
    assert all(json.loads(r.read_text())["summary"].strip() for r in results)
    summary = json.loads((history / "RUN_SUMMARY.json").read_text())
    assert summary["status"] == "complete"
    assert (tmp_path / "rig" / "logs" / "brain.log").exists()


def test_demo_stops_waiting_when_llmo_up_refuses_to_start(tmp_path):
    # Another llmo up holds the rig folder: llmo up refuses at once, and the
    # demo says so instead of waiting out its ready timeout.
    from llmo.brain.lockfile import FileLock
    from llmo.cli.up_cmd import RIG_LOCK

    rig = tmp_path / "rig"
    rig.mkdir()
    held = FileLock.acquire(str(rig / RIG_LOCK), {"broker": "tcp://127.0.0.1:1"})
    env = dict(
        os.environ,
        LLMO_BROKER=f"tcp://127.0.0.1:{free_port()}",
        LLMO_PUB=f"tcp://127.0.0.1:{free_port()}",
    )
    try:
        run = subprocess.run(
            [sys.executable, "-m", "llmo.cli.main", "demo", "--rig-dir", str(rig)],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        held.release()
    assert run.returncode == 1, run.stdout + run.stderr
    assert "is in use by llmo up pid" in run.stderr
    assert "llmo demo: llmo up exited with code 2" in run.stderr
