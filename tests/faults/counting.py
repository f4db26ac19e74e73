"""Plans whose tasks count their own runs, for the fault tests.

Each task runs ``count.sh ID SECONDS PLAN_PATH``: it appends its id to
``starts.txt`` when it begins and to ``runs.txt`` when it ends, in the plan
folder, so a task run twice shows in the files whatever the brain recorded.
A file named ``fast`` in the plan folder cuts every later sleep to 0.2 s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

SCRIPT = """#!/bin/sh
echo "$1" >> "$3/starts.txt"
if [ -e "$3/fast" ]; then sleep 0.2; else sleep "$2"; fi
echo "$1" >> "$3/runs.txt"
"""

# (task id, seconds it sleeps) of one group, and what the group depends on.
Group = tuple[Sequence[tuple[str, float]], str]


def counting_plan(plans_dir: Path, name: str, groups: Sequence[Group]) -> Path:
    """Write the plan folder ``plans_dir/name`` with ``groups`` of counting cpu tasks."""
    plan = plans_dir / name
    plan.mkdir(parents=True)
    (plan / "count.sh").write_text(SCRIPT)
    out = [f"# Plan: {name}", "", "## Objective", "count runs", "", "## Tasks", ""]
    for tasks, deps in groups:
        for task, sleep_s in tasks:
            out += [
                f"### {task}",
                "- **executor**: worker",
                "- **task_class**: cpu",
                f"- **command**: `sh {{PLAN_PATH}}/count.sh {task} {sleep_s} {{PLAN_PATH}}`",
                f"- **depends_on**: {deps}",
                "",
            ]
    (plan / "plan.md").write_text("\n".join(out))
    return plan


def rounds(tasks: Sequence[Sequence[str]], sleep_s: float) -> list[Group]:
    """Groups in which each round waits for the whole round before it."""
    groups: list[Group] = []
    before: Sequence[str] = ()
    for round_ in tasks:
        groups.append(([(task, sleep_s) for task in round_], ", ".join(before) or "none"))
        before = round_
    return groups


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []
