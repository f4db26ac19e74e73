"""Foreach expansion: a template's manifest items become tasks of the batch.

Theory of operation
-------------------
A ``foreach`` template, once released, asks for its items (``ReadManifest``);
the shell reads the manifest and feeds the items back as ``ManifestRead``,
which ``on_manifest`` expands with ``plans.expand_foreach`` into one task per
item, added with ``graph.add_tasks``; each item's values travel in its
task's ``env``, never in its command text (``plans.shellvalues``). The
template is done when all its items are terminal (``tasks.on_terminal``). A
missing source, a bad path or a source outside the plan roots fails the
template at once, with the reason: a broken source is never retried silently.
In a goal-driven batch ``brain.goal`` picks the items a pipeline template
has not tried yet and names a later round's item tasks.
"""

from __future__ import annotations

from llmo import plans
from llmo.brain import goal, graph, tasks
from llmo.brain.ctx import Ctx
from llmo.brain.events import ManifestRead
from llmo.brain.state import TaskRun


def on_manifest(cx: Ctx, ev: ManifestRead) -> None:
    batch = cx.state.batches.get(ev.batch_id)
    task = batch.tasks.get(ev.task_id) if batch is not None else None
    if batch is None or task is None or task.state != "expanding":
        cx.log("info", f"ignored items for {ev.batch_id}/{ev.task_id}: no longer expanding")
        return
    if ev.items is None:
        tasks.fail(cx, batch, task, ev.error or "the foreach source gave no items")
        return
    spec = task.spec
    items = list(ev.items)
    indexes: list[int] = []
    if batch.goal is not None:  # a goal's later rounds leave out the candidates already tried
        picked = goal.new_items(batch, task, items)
        indexes = [index for index, _ in picked]
        items = [item for _, item in picked]
    try:
        children = plans.expand_foreach(
            spec, items, batch.variables, reserved=batch.plan_tasks.keys()
        )
    except plans.PlanError as exc:
        tasks.fail(cx, batch, task, str(exc))
        return
    if batch.goal is not None:
        children = goal.round_children(batch, task, children, indexes)
        goal.on_expanded(cx, batch, task, len(items))
    if not children:
        tasks.succeed(cx, batch, task, items=0)
        return
    clash = next((c.id for c in children if c.id in batch.tasks), None)
    if clash is not None:
        tasks.fail(cx, batch, task, f"item task {clash} already exists in the batch")
        return
    tasks.move(cx, batch, task, "expanded")
    task.children_left = len(children)
    shared = task.spec
    runs = []
    children.reverse()
    while children:  # pop as we go: the item Task objects are freed one by one
        child = children.pop()
        runs.append(
            TaskRun(
                id=child.id,
                spec=shared,
                command=child.command,
                deps=child.depends_on,
                parent=task.id,
                env=child.env or None,
            )
        )
    released = graph.add_tasks(cx, batch, runs, quiet=True)
    first, last = runs[0].id, runs[-1].id
    cx.publish(
        batch,
        "task_expanded",
        task,
        items=len(ev.items),
        tasks=len(runs),
        released=released,
        first=first,
        last=last,
    )
    tasks.notify_expanded(cx, batch, task)
    if all(run.state == "done" for run in runs):  # every item kept from an earlier run
        tasks.succeed(cx, batch, task)
