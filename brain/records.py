"""Lines of ``batch_events.jsonl``: llmo's fields and the original system's, side by side.

Theory of operation
-------------------
Each line carries llmo's fields (``ts`` as epoch seconds, ``name``,
``attempt``, ``attempt_id``, ``state``) and, for readers written for the
original file-based system, its names for the same facts (``recorded_at``
as ISO 8601 UTC, ``task_name``, ``attempts``) and the fields it had that
llmo did not (``success``, ``started_at``, ``completed_at``,
``error_type``). Where the original named an event differently, the line is
written under llmo's name and a second line under the original's
(``ORIGINAL_NAMES``), with ``same_as`` naming llmo's. ``docs/history.md``
is the contract; this module and ``brain.summary`` keep it.
"""

from __future__ import annotations

import datetime
import functools
from typing import Any

from llmo.brain.state import Batch, TaskRun

# llmo event -> the original's name for it, written as a line of its own as well
ORIGINAL_NAMES = {"batch_failed": "batch_aborted", "batch_cancelled": "batch_aborted"}

SUCCESS = {
    "task_succeeded": True,
    "task_failed": False,
    "task_abandoned": False,
    "task_skipped": False,
    "task_cancelled": False,
    "batch_completed": True,
    "batch_failed": False,
    "batch_cancelled": False,
    "batch_aborted": False,
}
FAILING = frozenset({"task_failed", "task_abandoned"})  # events that carry an error_type


@functools.lru_cache(maxsize=4096)
def iso(when: float) -> str | None:
    """``when`` (epoch seconds) as ISO 8601 in UTC; None for 0 (not yet). Kept for
    the times seen last: a loop turn's records share its clock reading, and a
    batch's start is in every one of its records."""
    if not when:
        return None
    return datetime.datetime.fromtimestamp(when, tz=datetime.UTC).isoformat()


def error_type(task: TaskRun, detail: dict[str, object]) -> str:
    """Why an attempt or a task failed, as one word.

    ``exit`` (a non-zero exit code), ``timeout`` / ``stalled`` (stopped by the
    brain), ``killed``, ``lost``, ``refused``, ``policy``, ``retry_later``,
    ``interrupted``, ``model`` (its model could not be loaded), or
    ``definition`` for a task that failed without an attempt of its own (a
    broken foreach source, an unknown dependency, a template whose items
    failed: its items' events say more).
    """
    reason = detail.get("reason")
    if not isinstance(reason, str) or not reason:
        reason = task.fail_reason
    if not reason:
        reason = task.failures[-1]["reason"] if task.failures else "definition"
    why = task.cancel_why
    if why.startswith("timed out"):
        return "timeout"
    if why.startswith("stalled"):
        return "stalled"
    return reason


def event_record(
    batch: Batch,
    event: str,
    task: TaskRun | None,
    *,
    now: float,
    worker: str,
    state: str,
    detail: dict[str, object],
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "ts": now,
        "recorded_at": iso(now),
        "event": event,
        "batch_id": batch.id,
    }
    if task is not None:
        spec = task.spec
        ended = task.finished_at or (now if event == "task_failed" else 0.0)
        record.update(
            task_id=task.id,
            name=task.id,
            task_name=task.id,
            task_class=spec.task_class,
            executor=spec.executor,
            worker=worker,
            attempt=task.attempts,
            attempts=task.attempts,
            attempt_id=task.attempt_id,
            state=state,
            started_at=iso(task.started_at or task.first_started_at),
            completed_at=iso(ended),
        )
        if task.parent:
            record["template"] = task.parent
    else:
        record.update(
            state=state,
            started_at=iso(batch.created_at),
            completed_at=iso(batch.finished_at),
        )
    success = SUCCESS.get(event)
    if success is not None:
        record["success"] = success
        if task is not None:
            record["error_type"] = error_type(task, detail) if event in FAILING else None
    if detail:
        record.update(detail)
    return record
