"""``llmo history [PLAN_DIR]``: a plan's past runs, one row each, from their RUN_SUMMARY.json.

Reads ``PLAN_DIR/history/*/RUN_SUMMARY.json`` (or the run folders of
``--history-dir``) on this machine; the brain is not asked, so it works
with the rig down. Each run gives: batch id, status (as the summary has it:
``complete``, ``partial``, ``failed``, ``cancelled``, ``interrupted``,
``running``), when it started, wall time, tasks done of all, tasks that
failed (failed, or skipped because a dependency failed), and tokens
generated. A folder whose summary cannot be read is listed as
``unreadable`` (the reason on stderr) and one without a summary yet as
``no-summary``, so no run goes missing from the list. Runs are ordered by
their start (a folder's time where the summary has none).

Only summary fields that every llmo version writes are read (``batch_id``,
``plan``, ``status``, ``created_at``, ``finished_at``, ``wall_s``,
``counts``, ``tokens``, ``failures``); others are ignored. ``--json`` prints
``{"plan_dir", "history_dir", "runs": [...], "totals": {...}}`` with the
same figures. Exit status: 0, or 2 when the folder does not exist.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

STATUS_ORDER = (
    "complete",
    "partial",
    "failed",
    "interrupted",
    "cancelled",
    "running",
    "unreadable",
    "no-summary",
)
FAILED_STATES = ("failed", "skipped")  # a task that failed, or one skipped after a failure


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "plan_dir", nargs="?", default=".", metavar="PLAN_DIR", help="the plan folder (default .)"
    )
    parser.add_argument(
        "--history-dir", help="the folder holding the run folders (default PLAN_DIR/history)"
    )
    parser.add_argument("--json", action="store_true", help="print the rollup as JSON")


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f}s"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def read_run(folder: Path) -> tuple[dict[str, Any], str]:
    """One run's row, and the reason when its summary cannot be read ("" when it can)."""
    path = folder / "RUN_SUMMARY.json"
    row: dict[str, Any] = {"batch_id": folder.name, "summary": str(path)}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        row["status"] = "no-summary"
        return row, ""
    except OSError as exc:
        reason = f"cannot read {path}: {exc.strerror or exc}"
    except ValueError as exc:
        reason = f"{path} is not valid JSON ({exc})"
    else:
        if isinstance(data, dict):
            return _summary_row(row, data), ""
        reason = f"{path} holds {type(data).__name__}, not a JSON object"
    row.update(status="unreadable", error=reason)
    return row, reason


def _summary_row(row: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    counts = data.get("counts")
    counts = (
        {k: int(v) for k, v in counts.items() if _number(v) is not None}
        if isinstance(counts, dict)
        else {}
    )
    failures = data.get("failures")
    first = failures[0] if isinstance(failures, list) and failures else None
    row = {
        "batch_id": str(data.get("batch_id") or row["batch_id"]),
        "plan": str(data.get("plan", "")),
        "status": str(data.get("status") or data.get("state") or "unknown"),
        "created_at": _number(data.get("created_at")),
        "finished_at": _number(data.get("finished_at")),
        "wall_s": _number(data.get("wall_s")),
        "tasks": sum(counts.values()),
        "done": counts.get("done", 0),
        "failed": sum(counts.get(s, 0) for s in FAILED_STATES),
        "counts": counts,
        "tokens": int(_number(data.get("tokens")) or 0),
        "first_failure": _failure_text(first),
        "summary": row["summary"],
    }
    return row


def _failure_text(row: object) -> str:
    if not isinstance(row, dict):
        return ""
    error = str(row.get("error") or f"exit {row.get('exit_code')}")
    return f"{row.get('id', '?')}: {error.splitlines()[0] if error else ''}"[:200]


def rollup(history_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every run folder's row, ordered by start, and the problems met reading them."""
    runs: list[tuple[float, str, dict[str, Any]]] = []
    problems: list[str] = []
    for folder in history_dir.iterdir():
        if not folder.is_dir():
            continue
        row, problem = read_run(folder)
        if problem:
            problems.append(f"{folder.name}: {problem}")
        started = row.get("created_at")
        if started is None:
            try:
                started = folder.stat().st_mtime
            except OSError:
                started = 0.0
        runs.append((started, folder.name, row))
    runs.sort(key=lambda r: (r[0], r[1]))
    return [row for _, _, row in runs], problems


def totals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for row in runs:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
    rank = {name: n for n, name in enumerate(STATUS_ORDER)}
    ordered = dict(sorted(by_status.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    return {
        "runs": len(runs),
        "by_status": ordered,
        "wall_s": round(sum(r.get("wall_s") or 0.0 for r in runs), 3),
        "tasks": sum(r.get("tasks", 0) for r in runs),
        "failed": sum(r.get("failed", 0) for r in runs),
        "tokens": sum(r.get("tokens", 0) for r in runs),
    }


def render(runs: list[dict[str, Any]], history_dir: Path) -> str:
    if not runs:
        return f"no runs in {history_dir}"
    lines = [
        f"{'BATCH':20} {'STATUS':11} {'STARTED':16} {'WALL':>10} {'TASKS':>9} "
        f"{'FAILED':>6} {'TOKENS':>9}  FIRST FAILURE"
    ]
    for row in runs:
        started = row.get("created_at")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "-"
        tasks = f"{row['done']}/{row['tasks']}" if "tasks" in row else "-"
        failed = str(row["failed"]) if "failed" in row else "-"
        tokens = str(row["tokens"]) if "tokens" in row else "-"
        lines.append(
            f"{row['batch_id']:20} {row['status']:11} {when:16} "
            f"{duration(row.get('wall_s')):>10} {tasks:>9} {failed:>6} {tokens:>9}  "
            f"{row.get('first_failure', '')}".rstrip()
        )
    total = totals(runs)
    statuses = ", ".join(f"{name} {n}" for name, n in total["by_status"].items())
    lines.append(
        f"{total['runs']} runs: {statuses}; wall {duration(total['wall_s'])}, "
        f"tasks {total['tasks']}, failed {total['failed']}, tokens {total['tokens']}"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    plan_dir = Path(args.plan_dir).resolve()
    history_dir = Path(args.history_dir).resolve() if args.history_dir else plan_dir / "history"
    if not plan_dir.is_dir() and not args.history_dir:
        print(f"llmo history: {plan_dir} is not a folder", file=sys.stderr)
        return 2
    if args.history_dir and not history_dir.is_dir():
        print(f"llmo history: {history_dir} is not a folder", file=sys.stderr)
        return 2
    runs, problems = rollup(history_dir) if history_dir.is_dir() else ([], [])
    for problem in problems:
        print(f"llmo history: {problem}", file=sys.stderr)
    if args.json:
        out = {
            "plan_dir": str(plan_dir),
            "history_dir": str(history_dir),
            "runs": runs,
            "totals": totals(runs),
        }
        print(json.dumps(out, indent=2))
    else:
        print(render(runs, history_dir))
    return 0
