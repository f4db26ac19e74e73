"""Run history content: RUN_SUMMARY.json, RUN_SUMMARY.md and ESCALATION.md, built purely.

The core calls these with a batch and ``now`` and hands the text to the
shell in ``WriteFile`` commands. The summary holds counts by state, one row
per task (state, attempts, worker, exit code, duration, tokens and tok/s;
``lost`` counts attempts whose worker died under them, which were not spent),
wall time, the batch's tokens and tok/s (over its wall time, as defined in
``proto.rates``), the goal (the snapshot's ``GoalInfo``) and the critical path:
walking back from the task that finished last, each step goes to the
dependency (or, for a foreach template, the item) that finished last, which
is the chain that decided the wall time.

Next to llmo's keys the summary has the original system's (``plan_name``,
``history_dir``, ``refreshed_at``, ``event_counts``, ``live_counts``,
``important_artifacts``, ``failure``; ``artifact_counts`` is added by the
shell, which can look at the disk) and its ``status`` values: ``partial`` is
an interrupted batch, ``failed`` one that failed or was cancelled.
``batch_failure`` is ``results/batch_failure.json``. ``docs/history.md`` is
the contract.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from llmo.brain import records
from llmo.brain.state import Batch, TaskRun
from llmo.brain.view import counts, generated_tokens, goal_view
from llmo.plans.variables import substitute_known
from llmo.proto.rates import batch_tok_s, batch_wall_s, tok_s_text

MD_ROWS = 200  # task rows in RUN_SUMMARY.md; the JSON has all of them
LOG_LINES = 20  # lines of a failed task's log in ESCALATION.md
LIVE = frozenset({"pending", "ready", "assigned", "running", "delayed", "expanding", "expanded"})


def status_of(batch: Batch) -> str:
    """The original system's status: ``running``, ``partial`` (interrupted: the brain
    stopped with it unfinished), ``complete``, or ``failed`` (failed or cancelled)."""
    if batch.state == "running":
        return "partial" if batch.interrupted_at else "running"
    if batch.state == "complete":
        return "complete"
    return "failed"


def live_counts(batch: Batch) -> dict[str, int]:
    """Counts of the states a task is still live in (none left out: an empty object)."""
    return {k: v for k, v in sorted(batch.counts.items()) if v and k in LIVE}


def failure_of(batch: Batch, now: float) -> dict[str, Any] | None:
    """What ended a batch that did not complete: its first failed task, or the cancel."""
    if batch.state not in ("failed", "cancelled") and not batch.interrupted_at:
        return None
    failed = [t for t in batch.tasks.values() if t.state == "failed"]
    first = min(failed, key=lambda t: t.finished_at) if failed else None
    if first is not None and batch.state != "cancelled":
        return {
            "kind": "task_failed",
            "task_id": first.id,
            "task_name": first.id,
            "error": first.error,
            "error_type": records.error_type(first, {}),
            "exit_code": first.exit_code,
            "attempts": first.attempts,
            "log": f"logs/{first.id}.log",
            "failed_tasks": len(failed),
            "at": records.iso(first.finished_at),
        }
    kind = {"cancelled": "cancelled", "running": "interrupted"}.get(batch.state, "failed")
    return {
        "kind": kind,
        "task_id": None,
        "task_name": None,
        "error": batch.end_reason or kind,
        "error_type": kind,
        "exit_code": None,
        "attempts": 0,
        "log": None,
        "failed_tasks": len(failed),
        "at": records.iso(batch.finished_at or batch.interrupted_at or now),
    }


def important_artifacts(batch: Batch) -> list[str]:
    """The files a reader looks at first, relative to the batch folder."""
    found = [
        "RUN_SUMMARY.json",
        "RUN_SUMMARY.md",
        "batch_events.jsonl",
        "logs/batch_events.jsonl",
        "env_manifest.json",
    ]
    if batch.state in ("failed", "cancelled"):
        found += ["results/batch_failure.json"]
    if batch.state == "failed":
        found += ["ESCALATION.md"]
    prefix = batch.history_path.rstrip("/") + "/"
    for plan_task in batch.plan_tasks.values():
        for produced in plan_task.produces:
            path = substitute_known(produced, batch.variables)
            if "{" not in path:  # an item's path, unknown before its items exist
                found.append(path[len(prefix) :] if path.startswith(prefix) else path)
    return list(dict.fromkeys(found))


def batch_failure(batch: Batch, now: float) -> dict[str, Any]:
    """``results/batch_failure.json``: why a batch failed or was cancelled, for scripts."""
    failed = [t for t in batch.tasks.values() if t.state == "failed"]
    return {
        "batch_id": batch.id,
        "plan_name": batch.plan,
        "plan_path": batch.plan_path,
        "history_dir": batch.history_path,
        "status": status_of(batch),
        "state": batch.state,
        "failed_at": records.iso(batch.finished_at or now),
        "reason": batch.end_reason
        or (f"{len(failed)} task(s) failed: " + ", ".join(t.id for t in failed[:20])),
        "failure": failure_of(batch, now),
        "failed_tasks": [
            {
                "task_id": t.id,
                "task_name": t.id,
                "task_class": t.spec.task_class,
                "attempts": t.attempts,
                "exit_code": t.exit_code,
                "error": t.error,
                "error_type": records.error_type(t, {}),
                "log": f"logs/{t.id}.log",
            }
            for t in failed[:MD_ROWS]
        ],
        "skipped_tasks": [t.id for t in batch.tasks.values() if t.state == "skipped"][:MD_ROWS],
        "counts": counts(batch),
    }


def task_row(task: TaskRun) -> dict[str, Any]:
    spec = task.spec
    duration = task.duration_s
    if not duration and task.first_started_at and task.finished_at:
        duration = task.finished_at - task.first_started_at
    row: dict[str, Any] = {
        "id": task.id,
        "state": task.state,
        "task_class": spec.task_class,
        "executor": spec.executor,
        "attempts": task.attempts,
        "worker": task.worker,
        "exit_code": task.exit_code,
        "duration_s": round(duration, 3),
    }
    if spec.task_class in ("llm", "brain"):
        row["tokens"] = task.tokens
        row["tok_s"] = round(task.tok_s, 2)
    if task.lost_workers:
        row["lost"] = task.lost_workers
    if task.parent:
        row["template"] = task.parent
    if task.error:
        row["error"] = task.error
    if task.state == "failed" and spec.task_class != "meta":
        row["command"] = task.command  # its values as variables, given in "values"
        if task.env:
            row["values"] = dict(task.env)
    return row


def predecessors(batch: Batch, task: TaskRun) -> list[TaskRun]:
    tasks = batch.tasks
    found = [tasks[d] for d in task.deps if d in tasks]
    if task.parent:
        found.extend(tasks[d] for d in tasks[task.parent].deps if d in tasks)
    if task.spec.foreach is not None and not task.parent:
        found.extend(t for t in tasks.values() if t.parent == task.id)
    return found


def critical_path(batch: Batch) -> tuple[list[str], float]:
    order = {task_id: n for n, task_id in enumerate(batch.tasks)}

    def last(t: TaskRun) -> tuple[float, int]:  # ties: the later task in the batch
        return (t.finished_at, order[t.id])

    done = [t for t in batch.tasks.values() if t.state == "done" and t.finished_at]
    if not done:
        return [], 0.0
    cur: TaskRun | None = max(done, key=last)
    chain = []
    seen = set()
    while cur is not None and cur.id not in seen:
        seen.add(cur.id)
        chain.append(cur.id)
        preds = [p for p in predecessors(batch, cur) if p.state == "done" and p.finished_at]
        cur = max(preds, key=last) if preds else None
    chain.reverse()
    start = batch.tasks[chain[0]]
    begun = start.first_started_at or batch.created_at
    return chain, round(batch.tasks[chain[-1]].finished_at - begun, 3)


def run_summary(batch: Batch, now: float) -> dict[str, Any]:
    """The summary without its per-task rows (``to_json`` streams those in)."""
    tokens = generated_tokens(batch)
    wall_s = batch_wall_s(batch.created_at, batch.finished_at or None, now)
    failures = [task_row(t) for t in batch.tasks.values() if t.state == "failed"]
    path, path_s = critical_path(batch)
    data: dict[str, Any] = {
        "batch_id": batch.id,
        "plan": batch.plan,
        "plan_name": batch.plan,
        "plan_path": batch.plan_path,
        "history_dir": batch.history_path,
        "status": status_of(batch),
        "state": batch.state,
        "interrupted": bool(batch.interrupted_at),
        "refreshed_at": records.iso(now),
        "priority": batch.priority_name,
        "created_at": batch.created_at,
        "finished_at": batch.finished_at or None,
        "wall_s": round(wall_s, 3),
        "counts": counts(batch),
        "live_counts": live_counts(batch),
        "event_counts": dict(sorted(batch.event_counts.items())),
        "important_artifacts": important_artifacts(batch),
        "failure": failure_of(batch, now),
        "tokens": tokens,
        "tok_s": round(batch_tok_s(tokens, wall_s), 2),
        "critical_path": path,
        "critical_path_s": path_s,
        "failures": failures,
        "warnings": list(batch.warnings),
    }
    if batch.goal is not None:
        data["goal"] = goal_view(batch.goal).to_wire()
    return data


_encode = json.JSONEncoder(default=str).encode


def to_json(batch: Batch, data: dict[str, Any]) -> str:
    """RUN_SUMMARY.json: ``data`` plus ``tasks``, one row per task, encoded row by row
    so a 100,000-task batch never holds all its rows as dicts at once."""
    head = _encode(data)
    rows = ",".join(_encode(task_row(t)) for t in batch.tasks.values())
    return f'{head[:-1]}, "tasks": [{rows}]}}\n'


def to_markdown(batch: Batch, data: dict[str, Any]) -> str:
    out = [
        f"# Run summary: {data['plan']} ({data['batch_id']})",
        "",
        f"- **status**: {data['status']}" + (" (interrupted)" if data["interrupted"] else ""),
        f"- **priority**: {data['priority']}",
        f"- **wall time**: {data['wall_s']:.1f} s",
        "- **counts**: " + (", ".join(f"{k} {v}" for k, v in data["counts"].items()) or "none"),
        f"- **tokens**: {tok_s_text(data['tokens'], data['wall_s'])}",
        f"- **critical path** ({data['critical_path_s']:.1f} s): "
        + (" -> ".join(data["critical_path"]) or "none"),
    ]
    if "goal" in data:
        g = data["goal"]
        out.append(
            f"- **goal**: {g['state']}, {g['succeeded']} of {g['target']} "
            f"(tolerance {g['tolerance']}), {g['tried']} of {g['cap']} candidates tried"
        )
    if data["failures"]:
        out += ["", "## Failures", ""]
        for row in data["failures"][:MD_ROWS]:
            out.append(f"- `{row['id']}` after {row['attempts']} attempts: {row.get('error', '')}")
    rows = [task_row(t) for t in itertools.islice(batch.tasks.values(), MD_ROWS)]
    out += [
        "",
        "## Tasks",
        "",
        "| task | state | attempts | worker | exit | seconds | tok/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows[:MD_ROWS]:
        exit_code = "" if row["exit_code"] is None else row["exit_code"]
        attempts = f"{row['attempts']} (+{row['lost']} lost)" if "lost" in row else row["attempts"]
        out.append(
            f"| {row['id']} | {row['state']} | {attempts} | {row['worker']} "
            f"| {exit_code} | {row['duration_s']:.1f} | {row.get('tok_s', '')} |"
        )
    if len(batch.tasks) > MD_ROWS:
        out.append(f"\n{len(batch.tasks) - MD_ROWS} more tasks in RUN_SUMMARY.json.")
    return "\n".join(out) + "\n"


def escalation(batch: Batch, now: float) -> str:
    """What a person needs to act on a failed batch: each failed task and why."""
    failed = [t for t in batch.tasks.values() if t.state == "failed"]
    out = [
        f"# Escalation: {batch.plan} ({batch.id})",
        "",
        f"The batch ended `{batch.state}`: {len(failed)} task(s) failed; "
        f"{batch.counts['skipped']} dependent task(s) were skipped.",
    ]
    if batch.goal is not None and batch.goal.state == "exhausted":
        g = batch.goal
        out.append(
            f"\nThe goal was not reached: {g.succeeded} of {g.target} "
            f"after {g.tried} candidates (cap {g.cap})."
        )
    for task in failed[:MD_ROWS]:
        codes = [f["exit_code"] for f in task.failures or ()]
        out += [
            "",
            f"## {task.id}",
            "",
            f"- **command**: `{task.command}`",
            *(
                f"- **{var}**: {json.dumps(value, ensure_ascii=False)[:500]}"
                for var, value in (task.env or {}).items()
            ),
            f"- **attempts**: {task.attempts}",
            f"- **exit codes**: {', '.join(str(c) for c in codes) or 'none'}",
            f"- **error**: {task.error}",
        ]
        log_tail = task.failures[-1]["log_tail"] if task.failures else ""
        if log_tail:
            tail = "\n".join(log_tail.splitlines()[-LOG_LINES:])
            out += ["", "Last lines of its log:", "", "```", tail, "```"]
    return "\n".join(out) + "\n"
