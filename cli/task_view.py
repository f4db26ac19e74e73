"""Tasks for ``llmo status --tasks`` and ``--task ID``, from a brain snapshot.

``--tasks`` is a table, one row per task of the snapshot (the brain sends
the tasks of the batch asked for, else of its running batches, live ones
first): id, state, attempts, worker, duration (so far, for a running one)
and the last error's first line. ``--json`` prints
``{"batches": [BatchInfo...], "tasks": [TaskInfo...]}`` as wire maps.

``--task ID`` finds the task in the snapshot (``--batch`` when the id is in
more than one batch) and prints its fields, then what this machine can read
of the batch's history folder (on the shared drive): each attempt's events
from ``batch_events.jsonl`` and the last lines of ``logs/ID.log``. A history
folder it cannot read is said so, never an error: the brain's answer stands
on its own. ``--json`` prints ``{"task": TaskInfo, "batch": BatchInfo,
"log_path", "log_tail": [lines], "attempts": [event records]}``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from llmo.proto.messages import BatchInfo, SnapshotReply, TaskInfo

ATTEMPT_EVENTS = frozenset(
    {"task_started", "task_retried", "task_succeeded", "task_failed", "task_abandoned"}
)
ERROR_WIDTH = 60


def duration_s(task: TaskInfo, now: float) -> float | None:
    if task.started_at is None:
        return None
    end = task.finished_at if task.finished_at is not None else now
    return max(0.0, end - task.started_at)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def first_line(text: str, width: int = ERROR_WIDTH) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def render_tasks(reply: SnapshotReply, now: float) -> str:
    lines = []
    by_batch: dict[str, list[TaskInfo]] = {}
    for task in reply.tasks:
        by_batch.setdefault(task.batch_id, []).append(task)
    plans = {b.id: b for b in reply.batches}
    for batch_id, tasks in by_batch.items():
        batch = plans.get(batch_id)
        head = f"batch {batch_id}"
        if batch is not None:
            head += f" ({batch.plan}): {batch.state}, {batch.tasks} tasks"
        lines += [head, f"  {'TASK':30} {'STATE':9} {'ATT':>3} {'WORKER':12} {'TIME':>9}  ERROR"]
        for t in tasks:
            lines.append(
                f"  {t.id[:30]:30} {t.state:9} {t.attempts:>3} {(t.worker or '-')[:12]:12} "
                f"{_seconds(duration_s(t, now)):>9}  {first_line(t.error)}".rstrip()
            )
        if batch is not None and batch.tasks > len(tasks):
            lines.append(
                f"  ... and {batch.tasks - len(tasks)} more (a snapshot carries a bounded "
                "number of tasks, live ones first; RUN_SUMMARY.json has every row)"
            )
        lines.append("")
    if not by_batch:
        lines.append("(no tasks: no batch is running)")
    return "\n".join(lines).rstrip()


def show_tasks(reply: SnapshotReply, batch_id: str, as_json: bool) -> int:
    if batch_id and not any(b.id == batch_id for b in reply.batches):
        print(f"llmo status: the brain knows no batch {batch_id!r}", file=sys.stderr)
        return 1
    if as_json:
        out = {
            "batches": [b.to_wire() for b in reply.batches if b.id in _batch_ids(reply)],
            "tasks": [t.to_wire() for t in reply.tasks],
        }
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(render_tasks(reply, time.time()))
    return 0


def _batch_ids(reply: SnapshotReply) -> set[str]:
    return {t.batch_id for t in reply.tasks}


def find_task(reply: SnapshotReply, task_id: str, batch_id: str) -> TaskInfo | str:
    """The task, or why it cannot be named."""
    hits = [t for t in reply.tasks if t.id == task_id and (not batch_id or t.batch_id == batch_id)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        batches = ", ".join(sorted(t.batch_id for t in hits))
        return f"task {task_id!r} is in batches {batches}: name one with --batch"
    if batch_id and not any(b.id == batch_id for b in reply.batches):
        return f"the brain knows no batch {batch_id!r}"
    where = f"batch {batch_id}" if batch_id else "the running batches"
    return (
        f"no task {task_id!r} in {where} (`llmo status --tasks` lists them; "
        "a finished batch's tasks: add --batch BATCH)"
    )


def attempt_events(history: Path, task_id: str) -> list[dict[str, Any]] | str:
    """The task's attempt events from the batch's event log, or why they cannot be read."""
    paths = [history / "batch_events.jsonl", history / "logs" / "batch_events.jsonl"]
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror or exc}"
        out = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash: the rest still counts
            if (
                isinstance(record, dict)
                and record.get("task_id") == task_id
                and record.get("event") in ATTEMPT_EVENTS
            ):
                out.append(record)
        return out
    return f"no batch_events.jsonl in {history} on this machine"


def log_tail(path: Path, lines: int) -> list[str] | str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return f"{path} does not exist (yet) on this machine"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return list(deque(text.splitlines(), maxlen=max(0, lines)))


def _event_text(record: dict[str, Any]) -> str:
    ts = record.get("ts")
    when = time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, int | float) else "?"
    when = str(record.get("recorded_at") or when)
    text = f"{when} {record.get('event')}"
    attempt = record.get("attempt", record.get("attempts"))
    if attempt:
        text += f" attempt {attempt}"
    if record.get("worker"):
        text += f" on {record['worker']}"
    for key in ("exit_code", "reason", "error"):
        value = record.get(key)
        if value not in (None, ""):
            text += f", {key} {first_line(str(value), 120)}"
    return text


def show_task(reply: SnapshotReply, task_id: str, batch_id: str, lines: int, as_json: bool) -> int:
    found = find_task(reply, task_id, batch_id)
    if isinstance(found, str):
        print(f"llmo status: {found}", file=sys.stderr)
        return 1
    task = found
    batch: BatchInfo | None = next((b for b in reply.batches if b.id == task.batch_id), None)
    history = Path(batch.history_path) if batch is not None and batch.history_path else None
    log_path = history / "logs" / f"{task.id}.log" if history is not None else None
    tail = log_tail(log_path, lines) if log_path is not None else "the batch has no history folder"
    events = attempt_events(history, task.id) if history is not None else []
    if as_json:
        out = {
            "task": task.to_wire(),
            "batch": batch.to_wire() if batch is not None else {},
            "log_path": str(log_path) if log_path is not None else "",
            "log_tail": tail if isinstance(tail, list) else [],
            "attempts": events if isinstance(events, list) else [],
        }
        problems = [p for p in (tail, events) if isinstance(p, str)]
        if problems:
            out["unreadable"] = problems
        print(json.dumps(out, indent=2, sort_keys=True, default=str))
        return 0
    now = time.time()
    plan = f" ({batch.plan})" if batch is not None else ""
    out_lines = [
        f"task {task.id} of batch {task.batch_id}{plan}",
        f"  state:     {task.state}",
        f"  class:     {task.task_class}, executor {task.executor}",
        f"  attempts:  {task.attempts}",
        f"  worker:    {task.worker or '-'}" + (f" ({task.attempt_id})" if task.attempt_id else ""),
        f"  exit code: {task.exit_code if task.exit_code is not None else '-'}",
        f"  time:      {_seconds(duration_s(task, now))}",
    ]
    if task.template:
        out_lines.append(f"  item of:   {task.template}")
    if task.error:
        out_lines.append("  error:     " + task.error.strip().replace("\n", "\n             "))
    out_lines.append(f"  log:       {log_path or '-'}")
    if isinstance(events, str):
        out_lines.append(f"attempt events: ({events})")
    elif events:
        out_lines.append("attempt events:")
        out_lines += [f"  {_event_text(e)}" for e in events]
    if isinstance(tail, str):
        out_lines.append(f"log: ({tail})")
    else:
        out_lines.append(f"last {len(tail)} log lines:")
        out_lines += [f"  | {line}" for line in tail]
    print("\n".join(out_lines))
    return 0
