"""The typed results of reading a plan: problems, tasks, the goal, the plan.

Everything here is a frozen dataclass built once by the validator (or by
``plans.expand`` for the tasks a ``foreach`` template expands into) and never
changed afterwards. Values have already been checked when a ``Plan`` exists;
a caller must still refuse to run a plan whose problem list holds an error,
because the validator builds a best-effort ``Plan`` even then so that tools
such as ``llmo plan check`` can show as much of it as possible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llmo.proto import vocab

Severity = Literal["error", "warning"]
Executor = Literal["worker", "brain"]
TaskClass = Literal["cpu", "script", "llm", "brain", "meta"]

EXECUTORS: tuple[Executor, ...] = ("worker", "brain")
TASK_CLASSES: tuple[TaskClass, ...] = ("cpu", "script", "llm", "brain", "meta")
LLM_PLACEMENTS: tuple[str, ...] = ("single_gpu", "split_gpu")
VRAM_POLICIES: tuple[str, ...] = ("default", "infer", "fixed")
GOAL_TYPES: tuple[str, ...] = ("target_count",)

# Runtime-control commands a ``meta`` task may name (its command's first word).
META_COMMANDS = vocab.META_COMMANDS

# Batch priority by name, as in the original system; the config key PRIORITY
# sets it when the submit tool's flag does not.
PRIORITIES: dict[str, int] = {"low": 3, "normal": 5, "high": 8, "urgent": 10}

# VRAM a ``script`` task is assumed to need when it states no estimate.
DEFAULT_VRAM_MB = 1024

# Built-in variables every run defines.
BUILTIN_VARIABLES: tuple[str, ...] = ("BATCH_ID", "BATCH_PATH", "PLAN_PATH")

# The pseudo task id under which the goal's placeholders are listed.
GOAL_USER = "(goal)"


class PlanError(Exception):
    """A plan cannot be used as asked (an undefined placeholder, a cycle, ...)."""


class ForeachError(PlanError):
    """A ``foreach`` source cannot give items: missing file, bad JSON, no array."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a plan, located by file, line and task."""

    file: str
    line: int
    task: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: "
        if self.task:
            where += f"task {self.task}: "
        return where + self.message

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


class ProblemSink:
    """Collects the problems of one file, each located by line and task."""

    def __init__(self, file: str, problems: list[Problem] | None = None) -> None:
        self.file = file
        self.problems: list[Problem] = problems if problems is not None else []

    def error(self, line: int, task: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, task, message, "error"))

    def warn(self, line: int, task: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, task, message, "warning"))


def has_errors(problems: list[Problem] | tuple[Problem, ...]) -> bool:
    """True when any problem is an error (warnings never block a run)."""
    return any(p.severity == "error" for p in problems)


def split_problems(problems: list[Problem]) -> tuple[list[Problem], list[Problem]]:
    """``(errors, warnings)``, each in the order given."""
    return (
        [p for p in problems if p.severity == "error"],
        [p for p in problems if p.severity == "warning"],
    )


@dataclass(frozen=True, slots=True)
class Task:
    """One task of a plan, or one task a ``foreach`` template expanded into.

    ``command`` is the shell text without its backticks, placeholders not yet
    substituted (expanded tasks have them substituted). ``depends_on`` holds
    the entries as written; an entry of a template may contain ``{ITEM...}``.
    For an expanded task ``template`` names the template and ``items`` holds
    the item(s) it covers; for a plan task they are ``None`` and ``()``.
    A resolved or expanded shell task's ``command`` refers to its values as
    variables (``"${LLMO_ITEM_ID}"``) and ``env`` holds them
    (``plans.shellvalues``); ``None`` before that and for ``meta`` tasks.
    """

    id: str
    executor: Executor
    task_class: TaskClass
    command: str
    depends_on: tuple[str, ...] = ()
    foreach: str | None = None
    batch_size: int = 1
    requires: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    llm_model: str | None = None
    llm_min_tier: str | None = None
    llm_placement: str | None = None
    vram_policy: str | None = None
    vram_estimate_mb: int | None = None
    timeout_s: float | None = None
    line: int = 0
    template: str | None = None
    items: tuple[object, ...] = ()
    env: dict[str, str] | None = None

    @property
    def is_template(self) -> bool:
        """True for a ``foreach`` task that still has to be expanded."""
        return self.foreach is not None

    @property
    def meta_command(self) -> str | None:
        """The control command name of a ``meta`` task, else ``None``."""
        if self.task_class != "meta":
            return None
        return self.command.split(maxsplit=1)[0] if self.command.strip() else ""

    @property
    def vram_mb(self) -> int:
        """VRAM the task asks for when it is a ``script`` task (estimate or default)."""
        return self.vram_estimate_mb if self.vram_estimate_mb is not None else DEFAULT_VRAM_MB


@dataclass(frozen=True, slots=True)
class Goal:
    """The ``## Goal`` of a goal-driven plan.

    ``target`` is an int, or the placeholder text (``"{TARGET_COUNT}"``) as
    written when it comes from the configuration: ``plans.goal.resolve_goal``
    turns it into an int once the configuration is known.
    """

    type: str
    target: int | str
    tolerance: int = 0
    tracked_task: str = ""
    discovery_tasks: tuple[str, ...] = ()
    max_attempts_multiplier: int = 5
    line: int = 0
    discovery_inferred: bool = False  # no discovery_tasks written: taken from the plan's graph
    round_multiplier: int = 2  # at most ``target * round_multiplier`` rounds
    max_rounds: int = 0  # a lower round limit from the configuration (0: none)

    @property
    def round_cap(self) -> int | None:
        """The most rounds a run may start, once the target is known."""
        if not isinstance(self.target, int):
            return None
        cap = max(1, self.target * self.round_multiplier)
        return min(cap, self.max_rounds) if self.max_rounds > 0 else cap

    @property
    def max_candidates(self) -> int | None:
        """``target * max_attempts_multiplier`` once the target is known."""
        if isinstance(self.target, int):
            return self.target * self.max_attempts_multiplier
        return None


@dataclass(frozen=True)
class Plan:
    """A parsed, validated plan: its tasks in file order, its goal, its sections.

    ``sections`` maps each level-2 heading (``"Objective"``, ``"Tasks"``, ...)
    to its text as written, for documentation and display.
    """

    name: str
    file: str
    tasks: tuple[Task, ...]
    goal: Goal | None = None
    sections: dict[str, str] = field(default_factory=dict)
    # task id -> field name -> line, so later checks can point at the field.
    field_lines: dict[str, dict[str, int]] = field(default_factory=dict, repr=False, compare=False)
    _by_id: dict[str, Task] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {t.id: t for t in self.tasks})

    def task(self, task_id: str) -> Task:
        """The task with this id; ``KeyError`` when there is none."""
        return self._by_id[task_id]

    def get(self, task_id: str) -> Task | None:
        return self._by_id.get(task_id)

    def line_of(self, task_id: str, field_name: str) -> int:
        """The line of a task's field, else of its heading (0 for an unknown task)."""
        lines = self.field_lines.get(task_id, {})
        if field_name in lines:
            return lines[field_name]
        task = self._by_id.get(task_id)
        return task.line if task is not None else 0

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_id

    @property
    def task_ids(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.tasks)

    @property
    def templates(self) -> tuple[Task, ...]:
        """The ``foreach`` tasks, in file order."""
        return tuple(t for t in self.tasks if t.foreach is not None)
