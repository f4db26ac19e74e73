"""The names of every lifecycle state, and the sets the actors test them against.

The brain moves tasks, batches and goals through these states (its
transition tables in ``brain.state`` use exactly these names); snapshots and
published events carry them; monitors and tools read them. Each ``Literal``
is the wire contract for a state field of ``proto.messages`` and its tuple
lists the same names in lifecycle order.
"""

from __future__ import annotations

import typing
from typing import Literal

TaskState = Literal[
    "pending",
    "ready",
    "assigned",
    "running",
    "delayed",
    "expanding",
    "expanded",
    "done",
    "failed",
    "skipped",
    "cancelled",
]
TASK_STATES: tuple[str, ...] = typing.get_args(TaskState)
TASK_TERMINAL = frozenset({"done", "failed", "skipped", "cancelled"})
TASK_UNSUCCESSFUL = TASK_TERMINAL - {"done"}  # ended without succeeding
TASK_ACTIVE = frozenset({"assigned", "running"})  # an attempt is out on a worker

BatchState = Literal["running", "complete", "failed", "cancelled"]
BATCH_STATES: tuple[str, ...] = typing.get_args(BatchState)
BATCH_TERMINAL = frozenset({"complete", "failed", "cancelled"})

# A worker's own report of itself (heartbeats); ``down`` is the brain's word
# for a worker it lost, and empty means no report.
WorkerState = Literal["", "cold", "loading", "hot", "constrained", "draining", "down"]
WORKER_STATES: tuple[str, ...] = typing.get_args(WorkerState)

# The brain's view of a worker's presence.
Presence = Literal["up", "draining", "down"]
PRESENCES: tuple[str, ...] = typing.get_args(Presence)

GoalState = Literal["running", "reached", "exhausted"]
GOAL_STATES: tuple[str, ...] = typing.get_args(GoalState)
