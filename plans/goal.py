"""The ``## Goal`` of a goal-driven plan: read, check, resolve.

A goal says: keep producing candidates (run ``discovery_tasks``, then the
``foreach`` pipeline over their output) until ``tracked_task`` has succeeded
``target`` times, within ``tolerance``, or until ``target x
max_attempts_multiplier`` candidates have been tried, or ``target x
discovery_round_multiplier`` rounds have run. The brain runs that loop; this
module only gives it a checked ``Goal``. The target may be a placeholder
filled from the configuration (``{TARGET_COUNT}``), so it stays text until
``resolve_goal`` is given the run's variables.

Without ``discovery_tasks`` the discovery is inferred as the original system
did: every task upstream of ``tracked_task`` that is not a ``foreach``
template, in plan order. The original's other goal fields are read: those
that size its candidate pool or its polling cycle have no counterpart here
(each round's candidates are all tried, each result is counted as it
arrives), and draw a warning that says so instead of "unknown field".
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from llmo.plans import fields as F
from llmo.plans.graph import task_edges
from llmo.plans.markdown import RawBlock
from llmo.plans.model import GOAL_TYPES, Goal, PlanError, ProblemSink, Task
from llmo.plans.variables import PLACEHOLDER, substitute

GOAL_FIELDS = (
    "type",
    "target",
    "tolerance",
    "tracked_task",
    "discovery_tasks",
    "max_attempts_multiplier",
    "discovery_round_multiplier",
)
# The original system's goal fields with no counterpart here, and why.
UNSUPPORTED_FIELDS = {
    "max_validations_per_cycle": "each candidate's result is counted as it arrives, "
    "not in polling cycles",
    "discovery_pool_cap": "each round's candidates are all tried; there is no pool to cap",
    "discovery_pool_multiplier": "each round's candidates are all tried; there is no pool to size",
    "discovery_prefill_divisor": "rounds run one after another, never ahead of need",
    "discovery_refill_divisor": "a new round starts when the last one has ended",
}
DEFAULT_MULTIPLIER = 5
DEFAULT_ROUND_MULTIPLIER = 2
ROUNDS_KEY = "DISCOVERY_ROUNDS"  # configuration key that lowers the round limit
_WHOLE = re.compile(r"\+?\d+")

T = TypeVar("T")


def build_goal(block: RawBlock, tasks: Sequence[Task], sink: ProblemSink) -> Goal | None:
    """A ``Goal`` from the fields under ``## Goal``; problems go to ``sink``."""
    raw = {}
    for f in block.fields:
        if f.name in UNSUPPORTED_FIELDS:
            sink.warn(
                f.line,
                "",
                f"goal field '{f.name}' is not supported here and has no effect: "
                f"{UNSUPPORTED_FIELDS[f.name]}",
            )
            continue
        if f.name not in GOAL_FIELDS:
            hint = F.suggest(f.name, GOAL_FIELDS)
            sink.warn(f.line, "", f"unknown goal field '{f.name}' is ignored{hint}")
            continue
        raw[f.name] = f
    ok = True
    for name, example in (
        ("type", "target_count"),
        ("target", "{TARGET_COUNT}"),
        ("tracked_task", "<task id>"),
    ):
        if name not in raw:
            sink.error(block.line, "", f"the goal has no {name}; add '- **{name}**: {example}'")
            ok = False

    def read(name: str, reader: Callable[..., T], *args: object) -> T | None:
        nonlocal ok
        if name not in raw:
            return None
        try:
            return reader(raw[name].value, *args)
        except ValueError as exc:
            sink.error(raw[name].line, "", f"goal: {exc}")
            ok = False
            return None

    goal_type = read("type", F.choice, "type", GOAL_TYPES)
    target = read("target", _target)
    tolerance = read("tolerance", F.whole_number, "tolerance", 0)
    multiplier = read("max_attempts_multiplier", F.whole_number, "max_attempts_multiplier", 1)
    rounds = read("discovery_round_multiplier", F.whole_number, "discovery_round_multiplier", 1)

    by_id = {t.id: t for t in tasks}
    ids = list(by_id)
    tracked = F.plain(raw["tracked_task"].value) if "tracked_task" in raw else ""
    if tracked and tracked not in by_id:
        sink.error(
            raw["tracked_task"].line,
            "",
            f"goal: tracked_task '{tracked}' is not a task of this plan{F.suggest(tracked, ids)}",
        )
        ok = False
    elif tracked and by_id[tracked].foreach is None:
        sink.warn(
            raw["tracked_task"].line,
            "",
            f"goal: tracked_task '{tracked}' has no foreach, so each round of discovery "
            "can count at most one success",
        )
    discovery = tuple(F.values_of(raw["discovery_tasks"])) if "discovery_tasks" in raw else ()
    for name in discovery:
        if name not in by_id:
            sink.error(
                raw["discovery_tasks"].line,
                "",
                f"goal: discovery task '{name}' is not a task of this plan{F.suggest(name, ids)}",
            )
            ok = False
    inferred = "discovery_tasks" not in raw and bool(tracked) and tracked in by_id
    if inferred:
        discovery = infer_discovery(tasks, tracked)
    if not ok or goal_type is None or target is None:
        return None
    return Goal(
        type=goal_type,
        target=target,
        tolerance=tolerance or 0,
        tracked_task=tracked,
        discovery_tasks=discovery,
        max_attempts_multiplier=multiplier or DEFAULT_MULTIPLIER,
        line=block.line,
        discovery_inferred=inferred,
        round_multiplier=rounds or DEFAULT_ROUND_MULTIPLIER,
    )


def infer_discovery(tasks: Sequence[Task], tracked: str) -> tuple[str, ...]:
    """The tasks upstream of ``tracked`` that are not foreach templates, in plan order."""
    edges = task_edges(tasks)
    foreach = {t.id for t in tasks if t.foreach is not None}
    seen: set[str] = set()
    stack = [tracked]
    while stack:
        for dep in edges.get(stack.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return tuple(t.id for t in tasks if t.id in seen and t.id not in foreach)


def _target(value: str) -> int | str:
    text = F.plain(value)
    if _WHOLE.fullmatch(text):
        return int(text)
    if PLACEHOLDER.fullmatch(text):
        return text
    raise ValueError(
        f"target must be a whole number or one placeholder such as {{TARGET_COUNT}}, not '{text}'"
    )


def resolve_goal(goal: Goal, variables: Mapping[str, object]) -> Goal:
    """The goal with its target as an int and the configuration's round limit applied.

    ``PlanError`` if the target is undefined or not a number, or if
    ``DISCOVERY_ROUNDS`` (the original's key that lowers the round limit) is
    given and is not a whole number.
    """
    if ROUNDS_KEY in variables:
        text = str(variables[ROUNDS_KEY]).strip()
        if not _WHOLE.fullmatch(text):
            raise PlanError(f"{ROUNDS_KEY} is '{text}', not a whole number of rounds")
        goal = dataclasses.replace(goal, max_rounds=int(text))
    if isinstance(goal.target, int):
        return goal
    text = substitute(goal.target, variables).strip()
    if not _WHOLE.fullmatch(text):
        raise PlanError(f"the goal's target {goal.target} is '{text}', not a whole number")
    return dataclasses.replace(goal, target=int(text))
