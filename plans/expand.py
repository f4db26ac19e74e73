"""foreach expansion: a template and its items in, the tasks to run out.

Theory of operation
-------------------
When a ``foreach`` task's dependencies are done, the caller reads the items
(``plans.files.read_foreach_items``) and calls ``expand_foreach``, a pure
function of the template, the items and the run's variables.

Names. When every item is an object with a scalar ``id``, the task for an
item is ``<template>_<id>``; otherwise it is ``<template>_<n>`` with ``n``
the item's index in the array, counted from 0 as the original system did
(batch names count from 1). Characters other than letters, digits,
``_``, ``-`` and ``.`` in an id become ``_`` (a name is also a log file
name). Two items that give the same name are an error, not a silent
overwrite.

Values. A shell task's command refers to its item and configuration values
as quoted variable expansions and the values travel in the task's ``env``
(``plans.shellvalues``), so nothing in a manifest is ever read as shell code.
``meta`` tasks, which are control command names read by the brain, and
``depends_on`` entries (task names) take the values as text.

Batches. With ``batch_size`` N > 1, consecutive items are grouped N at a
time into ``<template>_batch_<first:04d>_<last:04d>`` (1-based, inclusive).
Its command runs each item's command in its own subshell, in order, joined
with ``&&``: the first failure stops the batch and is its exit status, and an
``exit`` inside one item's command cannot end the batch early with success.
Each subshell closes on a new line so a trailing ``# comment`` in a command
cannot swallow the rest. The values of item k travel as ``LLMO_B<k>_...``
(``LLMO_B2_ITEM_ID``) and its subshell first exports them under the usual
names, so every item's command reads the same as in an unbatched task.

Dependencies. Entries without ``{ITEM...}`` are substituted once; entries
with it are substituted per item, giving per-item pipelines across two
``foreach`` tasks over the same manifest (``extract_{ITEM.id}`` becomes
``extract_a`` for item ``a``). A batch depends on the union of its items'
entries. Dependents of a template wait for every expansion: see
``expanded_dependencies``. An empty item list gives no tasks; the caller
completes the template as a no-op success.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable, Mapping, Sequence

from llmo.plans.model import ForeachError, PlanError, Task
from llmo.plans.shellvalues import ShellCommand, batch_env_name, batch_item
from llmo.plans.variables import Template, substitute, substitute_known

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def safe_name(text: str) -> str:
    """``text`` with every character unfit for a task id replaced by ``_``."""
    return _UNSAFE.sub("_", text) if _UNSAFE.search(text) else text


def _scalar_id(item: object) -> str | None:
    if not isinstance(item, dict):
        return None
    value = item.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value)
    return text if text else None


def item_names(template_id: str, items: Sequence[object]) -> list[str]:
    """The task name for each item (``batch_size`` 1); ``ForeachError`` on a clash."""
    ids = [i for i in (_scalar_id(item) for item in items) if i is not None]
    if ids and len(ids) == len(items):
        names = [f"{template_id}_{safe_name(i)}" for i in ids]
    else:
        names = [f"{template_id}_{n}" for n in range(len(items))]
    if len(set(names)) != len(names):
        first: dict[str, int] = {}
        for n, name in enumerate(names, start=1):
            if name in first:
                raise ForeachError(
                    f"foreach items {first[name]} and {n} of {template_id} both give the task "
                    f"name {name}; item ids must be unique"
                )
            first[name] = n
    return names


def batch_name(template_id: str, first: int, last: int) -> str:
    """The name of the batch of items ``first``..``last`` (1-based, inclusive)."""
    return f"{template_id}_batch_{first:04d}_{last:04d}"


def chain_commands(commands: Iterable[str]) -> str:
    """One shell command running ``commands`` in order, stopping at the first failure."""
    return " && ".join(f"( {command}\n)" for command in commands)


def expand_foreach(
    task: Task,
    items: Sequence[object],
    variables: Mapping[str, object],
    *,
    reserved: Collection[str] = (),
) -> list[Task]:
    """The tasks ``task`` expands into over ``items`` (``[]`` for no items).

    Raises ``PlanError`` for a placeholder that is undefined for some item,
    naming the task and item, and ``ForeachError`` when two items give the same
    task name or a name is one of ``reserved`` (the ids of the plan's tasks).
    """
    if not items:
        return []
    items = list(items)
    fixed_deps: list[str] = []
    item_deps: list[Template] = []
    for entry in task.depends_on:
        if "{ITEM" in entry:
            item_deps.append(Template(entry, variables))
        else:
            fixed_deps.append(_sub(entry, variables, None, task.id, 0))
    fixed = tuple(dict.fromkeys(fixed_deps))
    shell = None if task.task_class == "meta" else ShellCommand(task.command, variables)
    text_of = Template(task.command, variables)
    requires = tuple(substitute_known(p, variables) for p in task.requires)
    produces = tuple(substitute_known(p, variables) for p in task.produces)
    (executor, task_class, batch_size, model, tier, placement, policy, vram, timeout, line) = (
        task.executor,
        task.task_class,
        task.batch_size,
        task.llm_model,
        task.llm_min_tier,
        task.llm_placement,
        task.vram_policy,
        task.vram_estimate_mb,
        task.timeout_s,
        task.line,
    )

    def make(
        name: str,
        text: str,
        deps: tuple[str, ...],
        group: tuple[object, ...],
        env: dict[str, str] | None,
    ) -> Task:
        return Task(
            name,
            executor,
            task_class,
            text,
            deps,
            None,
            batch_size,
            requires,
            produces,
            model,
            tier,
            placement,
            policy,
            vram,
            timeout,
            line,
            task.id,
            group,
            env,
        )

    def deps_of(item: object) -> tuple[str, ...]:
        if not item_deps:
            return fixed
        return tuple(dict.fromkeys([*fixed, *(safe_name(entry(item)) for entry in item_deps)]))

    out: list[Task] = []
    n = 0  # the item being expanded, for error messages
    try:
        if batch_size <= 1:
            for name, item in zip(item_names(task.id, items), items, strict=True):
                n += 1
                if shell is None:
                    out.append(make(name, text_of(item), deps_of(item), (item,), None))
                else:
                    env = shell.env(item)
                    out.append(make(name, shell.command, deps_of(item), (item,), env))
        else:
            item_vars = shell.item_vars if shell is not None else ()
            for start in range(0, len(items), batch_size):
                group = tuple(items[start : start + batch_size])
                commands = []
                batch_env: dict[str, str] | None = None if shell is None else {}
                deps = list(fixed)
                for k, item in enumerate(group, start=1):
                    n += 1
                    if shell is None or batch_env is None:
                        commands.append(text_of(item))
                    else:
                        values = shell.env(item)
                        for var, value in values.items():
                            batch_env[batch_env_name(k, var) if var in item_vars else var] = value
                        commands.append(batch_item(k, shell.command, item_vars))
                    deps.extend(safe_name(entry(item)) for entry in item_deps)
                name = batch_name(task.id, start + 1, start + len(group))
                batch_deps = tuple(dict.fromkeys(deps)) if item_deps else fixed
                out.append(make(name, chain_commands(commands), batch_deps, group, batch_env))
    except ForeachError:
        raise
    except PlanError as exc:
        raise PlanError(f"item {n} of foreach task {task.id}: {exc}") from None
    if reserved:
        for t in out:
            if t.id in reserved:
                raise ForeachError(
                    f"foreach task {task.id} would create {t.id}, which is already a task "
                    "of the plan; rename one of them"
                )
    return out


def _sub(text: str, variables: Mapping[str, object], item: object, task_id: str, n: int) -> str:
    try:
        return substitute(text, variables, item)
    except PlanError as exc:
        where = f"item {n} of foreach task" if n else "task"
        raise PlanError(f"{where} {task_id}: {exc}") from None


def resolve_task(task: Task, variables: Mapping[str, object]) -> Task:
    """A plan task that is not a foreach template, with its placeholders filled.

    Command and ``depends_on`` must resolve (``PlanError`` otherwise); a shell
    command gets its values as variables, in ``env``. ``requires`` and
    ``produces`` keep any placeholder they cannot fill.
    """
    if task.foreach is not None:
        raise PlanError(f"task {task.id} is a foreach template; expand it with expand_foreach")
    if task.task_class == "meta":
        command, env = _sub(task.command, variables, None, task.id, 0), None
    else:
        try:
            shell = ShellCommand(task.command, variables)
            command, env = shell.command, shell.env()
        except PlanError as exc:
            raise PlanError(f"task {task.id}: {exc}") from None
    return dataclasses.replace(
        task,
        command=command,
        env=env,
        depends_on=tuple(_sub(d, variables, None, task.id, 0) for d in task.depends_on),
        requires=tuple(substitute_known(p, variables) for p in task.requires),
        produces=tuple(substitute_known(p, variables) for p in task.produces),
    )


def items_from_json(data: object, path: str) -> list[object]:
    """The array at dotted ``path`` in parsed JSON ``data`` (``""`` = the document).

    A number steps into an array (``runs.0.items``). ``ForeachError`` says
    where the path stops or what it found instead of an array.
    """
    value = data
    walked: list[str] = []
    for key in path.split(".") if path else ():
        here = ".".join(walked) or "the top level"
        if isinstance(value, dict):
            if key not in value:
                keys = ", ".join(list(map(str, value))[:10]) or "none"
                raise ForeachError(f"there is no key '{key}' at {here} (keys there: {keys})")
            value = value[key]
        elif isinstance(value, list) and key.isdigit():
            if int(key) >= len(value):
                raise ForeachError(f"{here} has {len(value)} entries, so there is no entry {key}")
            value = value[int(key)]
        else:
            raise ForeachError(f"cannot look up '{key}' in {here}: it is {_kind(value)}")
        walked.append(key)
    if not isinstance(value, list):
        where = f"'{path}'" if path else "the document"
        raise ForeachError(f"{where} is {_kind(value)}, not an array of items")
    return value


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def expanded_dependencies(
    depends_on: Iterable[str], expansions: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """``depends_on`` with each expanded template replaced by all its expansions.

    A template that expanded into nothing (an empty item list) drops out: it
    completed as a no-op.
    """
    out: dict[str, None] = {}
    for dep in depends_on:
        if dep in expansions:
            out.update(dict.fromkeys(expansions[dep]))
        else:
            out[dep] = None
    return tuple(out)
