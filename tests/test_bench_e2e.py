"""``bench/e2e.py --quick``, made smaller still: the bench runs and prints every figure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_end_to_end_bench_prints_each_figure_beside_its_aim(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/e2e.py", "--quick", "--tasks", "8", "--chain", "3", "--big", "12"],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for kind in ("pipe", "tty"):
        assert f"submit --watch, {kind}:" in out
        assert f"fan-out, submit --watch ({kind}): " in out
        assert f"chain, submit --watch ({kind}): " in out
    table = out.split("CPU per task by process")[1]
    for name in ("brain", "broker", "cpu-1", "cpu-2", "submit", "tasks"):
        assert f"\n    {name} " in table
    assert "(c) fan-out of 12 `true` tasks" in out and "MiB after, peak" in out
    assert "brain CPU at 12 items:" in out
