"""Placeholders: find them, check them against a configuration, substitute them.

Theory of operation
-------------------
A placeholder is ``{NAME}`` or ``{NAME.field.field}`` where NAME is an
identifier. Shell syntax that merely looks similar is left alone: ``${HOME}``
(a ``$`` before the brace), ``{a,b}`` (brace expansion) and JSON such as
``{"k": 1}`` do not match.

Names are defined by three sources: the built-ins ``BATCH_ID``,
``BATCH_PATH`` and ``PLAN_PATH``; the keys of the configuration given at
submission; and, only inside the command and ``depends_on`` of a ``foreach``
task, ``ITEM`` (the whole item) and ``ITEM.<field>`` (a field of an object
item, following dots into nested objects and, with a number, into arrays).

Substitution splits a text once into literal parts and placeholder names
(cached, so a template expanded into 100,000 tasks is split once) and then
joins literal parts with values. Strings are inserted as they are; other
JSON values as compact JSON (``true``, ``3``, ``{"a":1}``). An undefined name
is never left in place silently (shell commands do not take values as
text at all: ``plans.shellvalues`` makes them variables): ``substitute`` raises ``PlanError`` naming
every missing placeholder, and ``undefined_placeholders`` lists them per task
before a run starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache

from llmo.plans.model import (
    BUILTIN_VARIABLES,
    GOAL_USER,
    PRIORITIES,
    Plan,
    PlanError,
    Problem,
    Task,
)
from llmo.proto.vocab import LLM_CACHE_KEY, LLM_CACHE_POLICIES

PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\}")

_MISSING = object()


def is_item_name(name: str) -> bool:
    """True for ``ITEM`` and ``ITEM.<field>``."""
    return name == "ITEM" or name.startswith("ITEM.")


@lru_cache(maxsize=4096)
def split_template(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(literals, names)`` with ``len(literals) == len(names) + 1``."""
    parts = PLACEHOLDER.split(text)
    return tuple(parts[0::2]), tuple(parts[1::2])


def names_in(text: str) -> tuple[str, ...]:
    """The placeholder names in ``text``, in order, with repeats."""
    return split_template(text)[1] if "{" in text else ()


def format_value(value: object) -> str:
    """A value as inserted into a command: strings as they are, others as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _item_value(path: tuple[str, ...], item: object) -> object:
    value = item
    for key in path:
        if isinstance(value, dict):
            value = value.get(key, _MISSING)
            if value is _MISSING:
                return _MISSING
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
    return value


def _value(name: str, variables: Mapping[str, object], item: object) -> object:
    if is_item_name(name):
        return _MISSING if item is None else _item_value(tuple(name.split(".")[1:]), item)
    return variables.get(name, _MISSING)


class Template:
    """A text with its variables filled in once and its ``{ITEM...}`` slots left open.

    Calling it with an item fills the slots: ``Template(cmd, variables)(item)``
    equals ``substitute(cmd, variables, item)``, but the work that does not
    depend on the item is done once, which is what makes expanding a
    100,000-item manifest cheap.
    """

    __slots__ = ("_keys", "_literals", "_missing", "_names", "_paths")

    def __init__(self, text: str, variables: Mapping[str, object]) -> None:
        literals, names = split_template(text) if "{" in text else ((text,), ())
        parts = [literals[0]]
        self._names: list[str] = []
        self._paths: list[tuple[str, ...]] = []
        self._missing: list[str] = []
        for name, literal in zip(names, literals[1:], strict=True):
            if is_item_name(name):
                self._names.append(name)
                self._paths.append(tuple(name.split(".")[1:]))
                parts.append(literal)
                continue
            value = variables.get(name, _MISSING)
            if value is _MISSING:
                self._missing.append(name)
            else:
                parts[-1] += value if isinstance(value, str) else format_value(value)
            parts[-1] += literal
        self._literals = tuple(parts)
        # A one-field slot ({ITEM.id}) of a dict item is a plain lookup: the fast path.
        self._keys = tuple(path[0] if len(path) == 1 else None for path in self._paths)

    def __call__(self, item: object | None = None) -> str:
        literals = self._literals
        if not self._paths and not self._missing:
            return literals[0]
        if not self._missing and item is not None:
            out = [literals[0]]
            get = item.get if type(item) is dict else None
            for key, path, literal in zip(self._keys, self._paths, literals[1:], strict=True):
                if key is not None and get is not None:
                    value = get(key, _MISSING)
                else:
                    value = _item_value(path, item)
                if value is _MISSING:
                    break
                out.append(value if isinstance(value, str) else format_value(value))
                out.append(literal)
            else:
                return "".join(out)
        raise PlanError(_missing_message(self.missing(item), item))

    def missing(self, item: object | None) -> list[str]:
        """The placeholders left undefined for ``item``, in order."""
        return self._missing + [
            name
            for name, path in zip(self._names, self._paths, strict=True)
            if item is None or _item_value(path, item) is _MISSING
        ]


def substitute(text: str, variables: Mapping[str, object], item: object | None = None) -> str:
    """Replace every placeholder in ``text``; ``PlanError`` names any undefined one.

    ``item`` is the foreach item when ``text`` belongs to an expanded task;
    without it ``{ITEM...}`` is undefined.
    """
    if "{" not in text:
        return text
    return Template(text, variables)(item)


def substitute_known(text: str, variables: Mapping[str, object], item: object | None = None) -> str:
    """Like ``substitute`` but leaves undefined placeholders as written.

    For documentation fields (``requires``, ``produces``) that must never
    stop a run.
    """
    if "{" not in text:
        return text
    literals, names = split_template(text)
    out = [literals[0]]
    for name, literal in zip(names, literals[1:], strict=True):
        value = _value(name, variables, item)
        out.append("{" + name + "}" if value is _MISSING else format_value(value))
        out.append(literal)
    return "".join(out)


def _missing_message(missing: list[str], item: object) -> str:
    unique = list(dict.fromkeys(missing))
    listed = ", ".join("{" + n + "}" for n in unique)
    noun = "placeholder" if len(unique) == 1 else "placeholders"
    message = f"undefined {noun} {listed}"
    if item is not None and any(is_item_name(n) for n in unique):
        message += f" (the item is {format_value(item)[:200]})"
    return message


def builtin_variables(plan_path: str, batch_path: str, batch_id: str) -> dict[str, str]:
    """The variables every run defines."""
    return {"PLAN_PATH": str(plan_path), "BATCH_PATH": str(batch_path), "BATCH_ID": batch_id}


def config_variables(config: Mapping[str, object]) -> dict[str, str]:
    """Configuration values as substitution strings (``{"N": 3}`` gives ``"3"``)."""
    return {str(k): format_value(v) for k, v in config.items()}


def run_variables(
    plan_path: str, batch_path: str, batch_id: str, config: Mapping[str, object]
) -> dict[str, str]:
    """All variables of a run: configuration keys, then built-ins (which win)."""
    return {**config_variables(config), **builtin_variables(plan_path, batch_path, batch_id)}


def config_priority(config: Mapping[str, object]) -> str | None:
    """The batch priority named by the config key ``PRIORITY``, if any."""
    value = config.get("PRIORITY")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value.lower() not in PRIORITIES:
        raise PlanError(
            f"PRIORITY is {value!r}; use one of {', '.join(PRIORITIES)} (or leave it out)"
        )
    return value.lower()


def config_llm_cache(config: Mapping[str, object]) -> str | None:
    """The result cache policy named by the config key ``LLM_CACHE``, if any."""
    value = config.get(LLM_CACHE_KEY)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value.strip().lower() not in LLM_CACHE_POLICIES:
        raise PlanError(
            f"{LLM_CACHE_KEY} is {value!r}; use one of {', '.join(LLM_CACHE_POLICIES)} "
            "(or leave it out: auto)"
        )
    return value.strip().lower()


RUN_MODES = ("fresh", "resume")
# A batch folder's name: a letter or digit, then letters, digits, ``.``, ``_``, ``-``;
# no path separators, no leading dot, at most 100 characters.
BATCH_ID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _batch_id_key(config: Mapping[str, object], key: str) -> str:
    value = config.get(key)
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not BATCH_ID_NAME.fullmatch(value):
        raise PlanError(
            f"{key} is {value!r}: a batch id is 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (it names a folder under the plan's history)"
        )
    return value


def config_run_mode(config: Mapping[str, object]) -> tuple[str, str]:
    """``(mode, batch_id)`` from the config keys ``RUN_MODE``, ``RESUME_BATCH_ID``, ``BATCH_ID``.

    ``mode`` is ``fresh`` (a new batch; ``batch_id`` names its folder, or is
    empty for one named by the time) or ``resume`` (re-enter the existing
    batch ``batch_id``). ``RESUME_BATCH_ID`` alone implies ``resume``;
    ``RUN_MODE: resume`` takes the batch from ``RESUME_BATCH_ID`` or else
    ``BATCH_ID``. Raises ``PlanError`` naming the key for anything else.
    """
    raw = config.get("RUN_MODE")
    mode = ""
    if raw is not None and raw != "":
        if not isinstance(raw, str) or raw.lower() not in RUN_MODES:
            raise PlanError(
                f"RUN_MODE is {raw!r}; use one of {', '.join(RUN_MODES)} (or leave it out)"
            )
        mode = raw.lower()
    resume_id = _batch_id_key(config, "RESUME_BATCH_ID")
    batch_id = _batch_id_key(config, "BATCH_ID")
    if resume_id and batch_id and resume_id != batch_id:
        raise PlanError(
            f"RESUME_BATCH_ID {resume_id!r} and BATCH_ID {batch_id!r} name different batches; "
            "give one of them"
        )
    if mode == "fresh" and resume_id:
        raise PlanError(
            f"RUN_MODE is 'fresh' but RESUME_BATCH_ID is {resume_id!r}; "
            "use RUN_MODE 'resume' to re-enter that batch, or leave RESUME_BATCH_ID out"
        )
    if mode == "resume" or resume_id:
        target = resume_id or batch_id
        if not target:
            raise PlanError("RUN_MODE is 'resume' but no RESUME_BATCH_ID names the batch to resume")
        return "resume", target
    return "fresh", batch_id


# -- what a plan uses ------------------------------------------------------------------


def _task_uses(task: Task) -> list[tuple[str, str]]:
    """``(name, field)`` for every placeholder a task's executable fields use."""
    uses: list[tuple[str, str]] = [(n, "command") for n in names_in(task.command)]
    if task.foreach:
        uses += [(n, "foreach") for n in names_in(task.foreach)]
    for entry in task.depends_on:
        uses += [(n, "depends_on") for n in names_in(entry)]
    return uses


def placeholders(plan: Plan) -> dict[str, list[str]]:
    """Placeholder name -> ids of the tasks that use it, in first-use order.

    Commands, ``foreach`` sources and ``depends_on`` entries count, and the
    goal's target (listed under the pseudo task id ``"(goal)"``).
    """
    used: dict[str, list[str]] = {}
    for task in plan.tasks:
        for name, _ in _task_uses(task):
            users = used.setdefault(name, [])
            if not users or users[-1] != task.id:
                users.append(task.id)
    if plan.goal is not None and isinstance(plan.goal.target, str):
        for name in names_in(plan.goal.target):
            used.setdefault(name, []).append(GOAL_USER)
    return used


def config_placeholders(plan: Plan) -> list[str]:
    """The names a plan expects from the configuration (not built-in, not ITEM)."""
    return [
        name
        for name in placeholders(plan)
        if name not in BUILTIN_VARIABLES and not is_item_name(name)
    ]


def undefined_placeholders(plan: Plan, config: Mapping[str, object]) -> list[Problem]:
    """Every placeholder nothing defines, one problem per task and name.

    Defined: the built-ins, the keys of ``config``, and ``ITEM``/``ITEM.x`` in
    the command and ``depends_on`` of a ``foreach`` task. The goal's target
    must come from ``config``.
    """
    defined = set(BUILTIN_VARIABLES) | {str(k) for k in config}
    problems: list[Problem] = []
    for task in plan.tasks:
        seen: set[str] = set()
        for name, where in _task_uses(task):
            if name in seen:
                continue
            if is_item_name(name):
                if task.foreach is None:
                    message = (
                        f"{where} uses {{{name}}}, but {{ITEM...}} is defined only in tasks "
                        "with a foreach; add a foreach or remove the placeholder"
                    )
                elif where == "foreach":
                    message = (
                        f"foreach uses {{{name}}}, but the items are not known until the "
                        "foreach source has been read; name the source without {ITEM...}"
                    )
                else:
                    continue
            elif name in defined:
                continue
            else:
                message = (
                    f"{where} uses {{{name}}}, which is not defined: give it in the "
                    f'configuration, e.g. --config \'{{"{name}": "..."}}\''
                )
            seen.add(name)
            line = plan.line_of(task.id, where)
            problems.append(Problem(plan.file, line, task.id, message, "error"))
    goal = plan.goal
    if goal is not None and isinstance(goal.target, str):
        for name in dict.fromkeys(names_in(goal.target)):
            if name not in config:
                problems.append(
                    Problem(
                        plan.file,
                        goal.line,
                        "",
                        f"the goal's target uses {{{name}}}, which is not defined: give it "
                        f"in the configuration, e.g. --config '{{\"{name}\": 10}}'",
                        "error",
                    )
                )
    return problems
