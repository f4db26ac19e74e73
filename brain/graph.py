"""A batch's task graph: task records from plan tasks, what each waits for, releases.

Theory of operation
-------------------
``build_tasks`` makes one ``TaskRun`` per plan task, with its command and
dependencies resolved against the batch's variables: the command refers to
configuration values as variables and the task's ``env`` carries them
(``plans.shellvalues``), so a value is never read as shell code. A per-item entry
(``extract_{ITEM.id}``) becomes a wait on the other template's *expansion*
(``tasks.expansion_key``), not its completion; the items then wait for their
own counterparts, so two templates over one manifest run as per-item
pipelines. Tasks downstream of a goal's pipeline wait on ``tasks.GOAL_KEY``.

``add_tasks`` puts the records into the batch: it counts what each still
waits for (``waiting``), fills the dependents map, skips a task whose
dependency has already failed, fails one that names an unknown task, and
releases those that wait for nothing. The same function serves a new batch,
a foreach's items and a goal's next round. In a resumed batch, a task an
earlier run completed (``Batch.kept``) enters as done and is never run again;
its dependents count it as satisfied.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmo import plans
from llmo.brain import tasks
from llmo.brain.ctx import Ctx
from llmo.brain.state import Batch, TaskRun
from llmo.plans.graph import item_entry_template


def build_tasks(specs: Sequence[plans.Task], variables: dict[str, str]) -> list[TaskRun]:
    """Task records for plan tasks; per-item entries become waits on an expansion."""
    templates = [t.id for t in specs if t.foreach is not None]
    runs = []
    for spec in specs:
        if spec.foreach is not None:
            runs.append(TaskRun(id=spec.id, spec=spec, command=spec.command, deps=spec.depends_on))
            continue
        resolved = plans.resolve_task(spec, variables)
        runs.append(
            TaskRun(
                id=spec.id,
                spec=spec,
                command=resolved.command,
                deps=resolved.depends_on,
                env=resolved.env or None,
            )
        )
    for run in runs:
        deps = []
        for entry in run.deps:
            if "{ITEM" in entry:
                template = item_entry_template(entry, templates)
                if template is not None:
                    deps.append(tasks.expansion_key(template))
            elif "{" in entry:
                deps.append(plans.substitute(entry, variables))
            else:
                deps.append(entry)
        run.deps = tuple(dict.fromkeys(deps))
    return runs


def add_tasks(cx: Ctx, batch: Batch, runs: list[TaskRun], *, quiet: bool = False) -> int:
    """Put tasks into the batch, count what they wait for, release the free ones.

    Returns how many were released; ``quiet`` releases them without one event each
    on the wire (their ``task_released`` lines are written all the same).
    """
    existing = batch.tasks
    dependents = batch.dependents
    kept = batch.kept
    for run in runs:
        if kept and run.id in kept and run.state == "pending":
            run.state = "done"  # an earlier run of this batch completed it
            if run.parent:
                existing[run.parent].children_left -= 1
        existing[run.id] = run
        batch.counts[run.state] += 1
    free = []
    for run in runs:
        waiting = 0
        for dep in run.deps:
            if dep == tasks.GOAL_KEY:
                if batch.goal is not None and batch.goal.state == "reached":
                    continue
            elif dep.endswith("#expanded"):
                base = existing.get(dep[: -len("#expanded")])
                if base is not None and base.state in ("expanded", "done"):
                    continue
                if base is not None and base.state in ("failed", "skipped", "cancelled"):
                    run.state = "pending"
                    waiting = -1
                    break
            else:
                target = existing.get(dep)
                if target is None:
                    waiting = -2
                    break
                if target.state == "done":
                    continue
                if target.state in ("failed", "skipped", "cancelled"):
                    waiting = -1
                    break
            dependents.setdefault(dep, []).append(run.id)
            waiting += 1
        run.waiting = waiting
        if waiting == 0:
            free.append(run)
        elif waiting == -1:
            tasks.move(cx, batch, run, "skip")
            run.finished_at = cx.now
            cx.publish(batch, "task_skipped", run)
            tasks.on_terminal(cx, batch, run)
        elif waiting == -2:
            missing = [d for d in run.deps if d not in existing and "#" not in d]
            tasks.fail(cx, batch, run, f"depends on unknown task {', '.join(missing)}")
    released = 0
    for run in free:
        if run.state == "pending":
            tasks.release(cx, batch, run, quiet=quiet)
            released += 1
    return released
