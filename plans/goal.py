"""The ``## Goal`` of a goal-driven plan: read, check, resolve.

A goal says: keep producing candidates (run ``discovery_tasks``, then the
``foreach`` pipeline over their output) until ``tracked_task`` has succeeded
``target`` times, within ``tolerance``, or until ``target x
max_attempts_multiplier`` candidates have been tried. The brain runs that
loop; this module only gives it a checked ``Goal``. The target may be a
placeholder filled from the configuration (``{TARGET_COUNT}``), so it stays
text until ``resolve_goal`` is given the run's variables.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from llmo.plans import fields as F
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
)
DEFAULT_MULTIPLIER = 5
_WHOLE = re.compile(r"\+?\d+")

T = TypeVar("T")


def build_goal(block: RawBlock, tasks: Sequence[Task], sink: ProblemSink) -> Goal | None:
    """A ``Goal`` from the fields under ``## Goal``; problems go to ``sink``."""
    raw = {}
    for f in block.fields:
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
    )


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
    """The goal with its target as an int; ``PlanError`` if it is undefined or not a number."""
    if isinstance(goal.target, int):
        return goal
    text = substitute(goal.target, variables).strip()
    if not _WHOLE.fullmatch(text):
        raise PlanError(f"the goal's target {goal.target} is '{text}', not a whole number")
    return dataclasses.replace(goal, target=int(text))
