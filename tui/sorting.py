"""Sort keys for the monitor's tables, by column: pure functions of rows and ``now``.

Each table has one key per column, in the order of its columns
(``widgets.BATCH_COLUMNS``, ``render.TASK_COLUMNS``), or by column key for
the workers (``WORKER_BY_COLUMN``: which columns show depends on the width).
A key sorts by what the column means, not by its text: durations as
seconds, a progress bar as the share done, a state by how much it needs the
operator (the live-first rank). Unknown figures sort last, whichever the
direction: ``ordered`` sorts the known ones and appends the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from llmo.tui.rows import BatchRow, TaskRow, WorkerRow

T = TypeVar("T")
Key = Callable[[Any, float], Any]  # (row, now) -> a comparable figure, or None: unknown

# How much a task state needs the operator: running first, then retrying or failed.
TASK_RANK = {
    "running": 0,
    "assigned": 0,
    "delayed": 1,
    "failed": 1,
    "expanding": 2,
    "ready": 3,
    "pending": 4,
    "expanded": 5,
    "done": 6,
    "skipped": 6,
    "cancelled": 6,
}
WORKER_RANK = {"down": 0, "constrained": 1, "loading": 2, "draining": 3, "hot": 4, "cold": 5}
BATCH_RANK = {"running": 0, "failed": 1, "cancelled": 2, "complete": 3}


def _gpu(worker: WorkerRow, name: str) -> float | None:
    tele = worker.telemetry
    if tele is None or not tele.gpu_available or not tele.gpus:
        return None
    values = [getattr(g, name) for g in tele.gpus if getattr(g, name) is not None]
    return max(values) if values else None


def _vram(worker: WorkerRow, now: float) -> float | None:
    tele = worker.telemetry
    if tele is None or not tele.gpu_available or not tele.gpus:
        return None
    return float(sum(g.vram_used_mb or 0 for g in tele.gpus))


def _cpu(worker: WorkerRow, now: float) -> float | None:
    tele = worker.telemetry
    return None if tele is None else float(tele.cpu_percent)


# By the workers table's column key: its columns change with the width.
WORKER_BY_COLUMN: dict[str, Key] = {
    "name": lambda w, now: w.name,
    "gpus": lambda w, now: w.gpus or None,
    "role": lambda w, now: w.role or None,
    "state": lambda w, now: WORKER_RANK.get(w.shown_state, 9),
    "limit": lambda w, now: w.constraint or None,
    "seen": lambda w, now: w.heartbeat_age(now),
    "holding": lambda w, now: len(w.active),
    "model": lambda w, now: (w.loading or w.model or "").rsplit("/", 1)[-1] or None,
    "temp": lambda w, now: _gpu(w, "temperature_c"),
    "vram": _vram,
    "power": lambda w, now: _gpu(w, "power_w"),
    "util": lambda w, now: _gpu(w, "util_percent"),
    "cpu": _cpu,
    "tok_s": lambda w, now: w.tok_s,
    "history": lambda w, now: sum(w.history) / len(w.history) if w.history else None,
    "host": lambda w, now: w.host or None,
    "endpoint": lambda w, now: w.endpoint or None,
}


def _done_share(batch: BatchRow, now: float) -> float | None:
    done, _, _, _ = batch.split()
    return done / batch.total if batch.total else None


BATCH_KEYS: Sequence[Key] = (
    lambda b, now: b.id,
    lambda b, now: b.plan or None,
    lambda b, now: b.priority_name or None,
    lambda b, now: BATCH_RANK.get(b.state, 9),
    _done_share,
    lambda b, now: b.split()[1],
    lambda b, now: b.split()[2],
    lambda b, now: b.elapsed(now),
    lambda b, now: b.eta(now),
)

PLAN_ORDER: Key = lambda t, now: None  # noqa: E731 - the rows come in plan order already

TASK_KEYS: Sequence[Key] = (
    PLAN_ORDER,  # TASK: plan order, which is how the ids were written
    lambda t, now: t.task_class or None,
    lambda t, now: TASK_RANK.get(t.state, 2),
    lambda t, now: t.worker or None,
    lambda t, now: t.attempts,
    lambda t, now: t.duration(now),
    lambda t, now: t.rate(now),
)


def ordered(rows: Sequence[T], key: Key, now: float, reverse: bool = False) -> list[T]:
    """``rows`` sorted by ``key`` (stable: ties keep their order), unknowns last."""
    if key is PLAN_ORDER:
        return list(reversed(rows)) if reverse else list(rows)
    figures = [(key(row, now), row) for row in rows]
    known = [(f, row) for f, row in figures if f is not None]
    known.sort(key=lambda pair: pair[0], reverse=reverse)
    return [row for _, row in known] + [row for f, row in figures if f is None]


def live_first(rows: Sequence[TaskRow]) -> list[TaskRow]:
    """Running tasks first, then those retrying or failed, the rest in plan order."""
    return sorted(rows, key=lambda row: TASK_RANK.get(row.state, 2))
