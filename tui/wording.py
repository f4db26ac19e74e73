"""The events pane's wording: one short line per lifecycle event."""

from __future__ import annotations

from typing import Any

from llmo.proto.messages import BatchEvent


def describe(ev: BatchEvent, plan: str) -> str:
    """One line for the events pane."""
    d = ev.detail
    where = f"{plan or ev.batch_id}" if ev.batch_id else ""
    reason = d.get("reason") or d.get("error") or ""
    why = f": {reason}" if reason else ""
    name = ev.event
    if ev.task_id:
        subject = f"{where} {ev.task_id}".strip()
        if name == "task_retried":
            spent = "" if d.get("spent", True) else " (not counted)"
            return f"{subject} retried{spent}{why}"
        if name == "task_failed":
            code = d.get("exit_code")
            how = f"exit {code}" if code is not None else str(d.get("reason", "?"))
            error = _tail(d.get("error"))
            if error == f": exit code {code}":
                error = ""
            return f"{subject} attempt failed ({how}){error}"
        if name == "task_abandoned":
            return f"{subject} FAILED for good{why}"
        if name == "task_expanded":
            return f"{subject} expanded into {d.get('items', '?')} items"
        return f"{subject} {name.removeprefix('task_')}{why}"
    if name.startswith("batch_"):
        counts = d.get("counts")
        tally = ""
        if isinstance(counts, dict) and counts:
            tally = " (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"
        if name == "batch_reopened":
            retried = d.get("retried", "?")
            return f"batch {ev.batch_id} {where and f'({where}) '}re-opened: task {retried} retried"
        if name == "batch_accepted":
            tasks = d.get("tasks", "?")
            return f"batch {ev.batch_id} accepted: {d.get('plan', plan)}, {tasks} tasks"
        return f"batch {ev.batch_id} {where and f'({where}) '}{ev.state or name[6:]}{tally}"
    if name.startswith("goal_"):
        return f"{where} {name.replace('_', ' ')}: {d.get('succeeded', '?')}/{d.get('tried', '?')}"
    if name.startswith("model_"):
        model = str(d.get("model") or "").rsplit("/", 1)[-1]
        return f"{ev.worker} {name.replace('_', ' ')} {model}{why}".replace("  ", " ").strip()
    subject = ev.worker or where
    return f"{subject} {name.replace('_', ' ')}{why}".strip()


def _tail(error: Any) -> str:
    if not isinstance(error, str) or not error.strip():
        return ""
    last = error.strip().splitlines()[-1]
    return f": {last[:120]}"
