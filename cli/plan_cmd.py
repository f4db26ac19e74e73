"""``llmo plan check PLAN_DIR... [--config JSON] [--json]``: check plans before a run.

Prints every error and warning of each plan, with file, line and task. A
plan without errors is summarised: its tasks by dependency level, its
foreach templates, its task classes, its goal and the placeholders it needs.
Without ``--config`` the configuration keys a plan uses are listed, not
required; with it, an undefined one is an error, as at submission. Exit
status: 0 when every plan is free of errors, 2 otherwise. ``--json`` prints
one object, ``{"ok": bool, "plans": [report, ...]}``, a report per folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


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
    check.add_argument("--json", action="store_true", help="print one JSON object per plan")
    parser.set_defaults(_plan_parser=parser)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "plan_command", None) != "check":
        args._plan_parser.print_help()
        return 2
    config = None
    if args.config is not None:
        try:
            config = read_config(args.config)
        except ValueError as exc:
            print(f"llmo plan check: --config: {exc}", file=sys.stderr)
            return 2
    reports = [check_plan(plan_dir, config) for plan_dir in args.plan_dirs]
    ok = all(report["ok"] for report in reports)
    if args.json:
        print(json.dumps({"ok": ok, "plans": reports}, indent=2))
    else:
        print("\n\n".join(format_report(report) for report in reports))
    return 0 if ok else 2


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


def check_plan(plan_dir: str, config: dict[str, Any] | None) -> dict[str, Any]:
    """Everything ``plan check`` says about one plan, as JSON-ready data."""
    from llmo.plans import (
        BUILTIN_VARIABLES,
        PlanError,
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
    report["ok"] = plan is not None and not errors
    report["errors"] = [str(p) for p in errors]
    report["warnings"] = [str(p) for p in warnings]
    if plan is None:
        return report
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
            **_command_preview(t, plan_dir, config),
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
    lines.append(f"plan {title} ({report['file']}): ok, {count} task{'s' * (count != 1)}")
    for level, ids in enumerate(report["levels"]):
        lines.append(f"  level {level}: " + ", ".join(_describe(tasks[i]) for i in ids))
    templates = [t for t in tasks.values() if t["foreach"]]
    for t in templates:
        lines.append(f"  foreach {t['id']}: over {t['foreach']}, batch_size {t['batch_size']}")
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
