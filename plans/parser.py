"""From plan.md text to a typed ``Plan`` and every problem at once.

Theory of operation
-------------------
``plans.markdown`` reads the text into located raw fields; this module gives
them meaning and checks the whole plan. Validation never stops at the first
problem: each task is read field by field, every bad value becomes a located
``Problem`` and the task is still built with a stand-in value, so that later
checks (duplicate ids, unknown dependencies, cycles, the goal) run on the
whole plan and the author sees everything in one pass. Problems that make a
plan unsafe to run are errors; fields that do not apply to a task's class,
unknown fields and similar leftovers of hand editing are warnings and never
block a run.

The result is deterministic: problems come out in the order of the lines
they point at.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePath
from typing import TypeVar

from llmo.plans import fields as F
from llmo.plans.goal import build_goal
from llmo.plans.graph import ITEM_MARK, find_cycles, item_entry_template, task_edges
from llmo.plans.markdown import RawBlock, RawField, parse_markdown
from llmo.plans.model import (
    EXECUTORS,
    LLM_PLACEMENTS,
    META_COMMANDS,
    TASK_CLASSES,
    VRAM_POLICIES,
    Plan,
    Problem,
    ProblemSink,
    Task,
)

KNOWN_FIELDS: tuple[str, ...] = (
    "executor",
    "task_class",
    "command",
    "depends_on",
    "requires",
    "produces",
    "foreach",
    "batch_size",
    "llm_model",
    "llm_min_tier",
    "llm_placement",
    "vram_policy",
    "vram_estimate_mb",
    "timeout",
)
REQUIRED_FIELDS: dict[str, str] = {
    "executor": "add '- **executor**: worker' (or brain)",
    "task_class": "add '- **task_class**: cpu' (or script, llm, brain, meta)",
    "command": "add '- **command**: `...`' with the shell command in backticks",
    "depends_on": "add '- **depends_on**: none' if it depends on nothing",
}
LLM_FIELDS = ("llm_model", "llm_min_tier", "llm_placement")
SCRIPT_FIELDS = ("vram_policy", "vram_estimate_mb")
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")

T = TypeVar("T")


def parse_plan(text: str, file: str = "plan.md") -> tuple[Plan | None, list[Problem]]:
    """Parse and validate plan.md text.

    Returns the plan (``None`` only when it has no ``## Tasks`` section to
    build from) and every problem found, errors and warnings, in line order.
    A plan with any error must not run.
    """
    doc, problems = parse_markdown(text, file)
    sink = ProblemSink(file, problems)
    if not doc.has_tasks:
        sink.error(
            1, "", "the plan has no '## Tasks' section; add one with a '### <id>' heading per task"
        )
        return None, _ordered(sink.problems)
    if not doc.tasks:
        tasks_line = next((n for t, n in doc.section_lines.items() if t.lower() == "tasks"), 1)
        sink.error(
            tasks_line,
            "",
            "the '## Tasks' section has no tasks; give each task a '### <id>' heading "
            "followed by its fields",
        )
    name = doc.title
    if not name:
        name = PurePath(file).parent.name or PurePath(file).stem
        sink.warn(1, "", f"the plan has no '# Plan: <name>' title; it is called '{name}'")

    tasks: list[Task] = []
    first_line: dict[str, int] = {}
    field_lines: dict[str, dict[str, int]] = {}
    for block in doc.tasks:
        task = _build_task(block, sink)
        if task is None:
            continue
        if task.id in first_line:
            sink.error(
                block.line,
                task.id,
                f"the task id is already used by the task at line {first_line[task.id]}; "
                "task ids must be unique",
            )
            continue
        first_line[task.id] = block.line
        field_lines[task.id] = {f.name: f.line for f in block.fields}
        tasks.append(task)

    _check_dependencies(tasks, field_lines, sink)
    goal = None
    if doc.goal is not None:
        goal = build_goal(doc.goal, tasks, sink)
    plan = Plan(
        name=name,
        file=file,
        tasks=tuple(tasks),
        goal=goal,
        sections=dict(doc.sections),
        field_lines=field_lines,
    )
    return plan, _ordered(sink.problems)


def _ordered(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: p.line)


def _build_task(block: RawBlock, sink: ProblemSink) -> Task | None:
    task_id = block.title
    if not task_id:
        sink.error(block.line, "", "a task heading has no id; write '### <id>'")
        return None
    if not TASK_ID.fullmatch(task_id):
        sink.error(
            block.line,
            task_id,
            "a task id may use only letters, digits, '_', '-' and '.', and starts with a "
            "letter or digit",
        )
    raw: dict[str, RawField] = {}
    for f in block.fields:
        if f.name in raw:
            sink.warn(f.line, task_id, f"{f.name} is given twice; the value at line {f.line} wins")
        if f.name not in KNOWN_FIELDS:
            hint = F.suggest(f.name, KNOWN_FIELDS)
            sink.warn(f.line, task_id, f"unknown field '{f.name}' is ignored{hint}")
            continue
        raw[f.name] = f
    for name, how in REQUIRED_FIELDS.items():
        if name not in raw:
            sink.error(block.line, task_id, f"no {name} field; {how}")

    def read(name: str, reader: Callable[..., T], *args: object) -> T | None:
        f = raw.get(name)
        if f is None:
            return None
        try:
            return reader(f.value, *args)
        except ValueError as exc:
            sink.error(f.line, task_id, str(exc))
            return None

    executor = read("executor", F.choice, "executor", EXECUTORS)
    task_class = read("task_class", F.choice, "task_class", TASK_CLASSES)
    if task_class == "brain" and executor == "worker":
        sink.warn(
            raw["executor"].line,
            task_id,
            "task_class brain runs on the brain model's worker, so the executor is brain",
        )
        executor = "brain"
    command = _read_command(raw.get("command"), task_class, task_id, sink)
    depends_on = _read_depends_on(raw.get("depends_on"), task_id, sink)

    foreach = None
    if "foreach" in raw:
        foreach = F.plain(raw["foreach"].value)
        if not foreach:
            sink.error(raw["foreach"].line, task_id, "foreach is empty; write '<json file>:<path>'")
            foreach = None
        elif ":" not in foreach:
            sink.warn(
                raw["foreach"].line,
                task_id,
                "foreach names no ':<dotted path>', so the whole file must be a JSON array",
            )
    batch_size = read("batch_size", F.whole_number, "batch_size", 1) or 1
    if "batch_size" in raw and foreach is None:
        sink.warn(raw["batch_size"].line, task_id, "batch_size applies only to foreach tasks")

    tier = read("llm_min_tier", F.whole_number, "llm_min_tier", 0)
    placement = read("llm_placement", F.choice, "llm_placement", LLM_PLACEMENTS)
    policy = read("vram_policy", F.choice, "vram_policy", VRAM_POLICIES)
    estimate = read("vram_estimate_mb", F.whole_number, "vram_estimate_mb", 0)
    timeout = read("timeout", F.duration_seconds, "timeout")
    _check_class_fields(raw, executor, task_class, policy, estimate, task_id, sink)

    return Task(
        id=task_id,
        executor=executor or "worker",
        task_class=task_class or "cpu",
        command=command,
        depends_on=depends_on,
        foreach=foreach,
        batch_size=batch_size,
        requires=tuple(F.values_of(raw["requires"])) if "requires" in raw else (),
        produces=tuple(F.values_of(raw["produces"])) if "produces" in raw else (),
        llm_model=(F.plain(raw["llm_model"].value) or None) if "llm_model" in raw else None,
        llm_min_tier=str(tier) if tier is not None else None,
        llm_placement=placement,
        vram_policy=policy,
        vram_estimate_mb=estimate,
        timeout_s=timeout,
        line=block.line,
    )


def _read_command(
    raw: RawField | None, task_class: str | None, task_id: str, sink: ProblemSink
) -> str:
    if raw is None:
        return ""
    try:
        command, trailing, quoted = F.code_span(raw.value)
    except ValueError as exc:
        sink.error(raw.line, task_id, str(exc))
        return ""
    if raw.extra:
        sink.warn(raw.line, task_id, "a command is one line; the bullets under it are ignored")
    if trailing:
        sink.warn(raw.line, task_id, f"the text after the command is ignored: '{trailing}'")
    if not quoted and command:
        sink.warn(raw.line, task_id, "the command is not in backticks; it is used as written")
    if not command.strip():
        sink.error(raw.line, task_id, "the command is empty")
        return ""
    if task_class == "meta":
        name = command.split(maxsplit=1)[0]
        if name not in META_COMMANDS:
            known = ", ".join(sorted(META_COMMANDS))
            hint = F.suggest(name, sorted(META_COMMANDS))
            sink.error(
                raw.line, task_id, f"meta command '{name}' is not known{hint}; use one of {known}"
            )
    return command


def _read_depends_on(raw: RawField | None, task_id: str, sink: ProblemSink) -> tuple[str, ...]:
    if raw is None:
        return ()
    entries = F.values_of(raw)
    if not entries:
        sink.error(raw.line, task_id, "depends_on is empty; write 'none' or task ids")
        return ()
    real = [e for e in entries if e.lower() != "none"]
    if real and len(real) != len(entries):
        sink.warn(raw.line, task_id, "depends_on mixes 'none' with task ids; 'none' is ignored")
    return tuple(dict.fromkeys(real))


def _check_class_fields(
    raw: dict[str, RawField],
    executor: str | None,
    task_class: str | None,
    policy: str | None,
    estimate: int | None,
    task_id: str,
    sink: ProblemSink,
) -> None:
    if task_class is None:
        return
    for name in LLM_FIELDS:
        if name in raw and task_class != "llm":
            sink.warn(
                raw[name].line, task_id, f"{name} applies only to llm tasks; it is ignored here"
            )
    if "llm_model" in raw and task_class == "llm" and executor == "brain":
        sink.warn(
            raw["llm_model"].line,
            task_id,
            "llm_model is ignored for executor brain; the rig chooses the brain model",
        )
    for name in SCRIPT_FIELDS:
        if name in raw and task_class != "script":
            sink.warn(
                raw[name].line, task_id, f"{name} applies only to script tasks; it is ignored here"
            )
    if task_class == "script" and policy == "fixed" and estimate is None:
        sink.warn(
            raw["vram_policy"].line,
            task_id,
            "vram_policy fixed without vram_estimate_mb; 1024 MB is assumed",
        )


def _check_dependencies(
    tasks: list[Task], field_lines: dict[str, dict[str, int]], sink: ProblemSink
) -> None:
    ids = [t.id for t in tasks]
    known = set(ids)
    by_id = {t.id: t for t in tasks}
    templates = {t.id for t in tasks if t.foreach is not None}
    for task in tasks:
        line = field_lines[task.id].get("depends_on", task.line)
        for entry in task.depends_on:
            if "{" not in entry:
                if entry not in known:
                    hint = F.suggest(entry, ids)
                    sink.error(
                        line,
                        task.id,
                        f"depends on '{entry}', which is not a task of this plan{hint}",
                    )
                continue
            if ITEM_MARK not in entry or task.foreach is None:
                continue  # a configuration placeholder, or ITEM misuse (see variables)
            template = item_entry_template(entry, templates)
            if template is None:
                sink.error(
                    line,
                    task.id,
                    f"depends_on entry '{entry}' names no foreach task; a per-item dependency "
                    "is written '<foreach task id>_{ITEM.id}'",
                )
            elif by_id[template].batch_size > 1:
                sink.error(
                    line,
                    task.id,
                    f"'{entry}' names no task because {template} groups its items "
                    f"(batch_size {by_id[template].batch_size}); use batch_size 1 there or "
                    f"depend on {template} as a whole",
                )
    for cycle in find_cycles(task_edges(tasks)):
        start = by_id[cycle[0]]
        if len(cycle) == 2:
            message = "the task depends on itself, so it can never start"
        else:
            message = (
                f"dependency cycle: {' -> '.join(cycle)} (each depends on the next), so none "
                "of these tasks can ever start"
            )
        sink.error(field_lines[start.id].get("depends_on", start.line), start.id, message)
