"""Goal-driven plans: rounds of candidates until the tracked task succeeds enough.

Theory of operation
-------------------
The *pipeline* is the discovery tasks plus every plan task on a path from
them to ``tracked_task`` (inclusive). Plan tasks that depend on a pipeline
task wait for the goal instead (the dependency ``#goal``), not for every
candidate.

A round runs the pipeline once. Successes of the tracked task (each of its
items, when it is a foreach template) count towards the target; every item
(or run) of it is a candidate tried. When the target is met the waiting
tasks are released at once and the candidates still out are cancelled;
when a round ends short of it, the goal is reached if the successes are
within ``tolerance``, exhausted if ``target x max_attempts_multiplier``
candidates have been tried, and
otherwise a new round starts: the pipeline's tasks again, with ids suffixed
``.r2``, ``.r3``... (per-item dependencies rewritten to match). Failures
inside the pipeline are rejected candidates, not batch failures; an
exhausted goal skips the waiting tasks and fails the batch with the count in
its escalation report.

The task lifecycle reports each ended task of a goal-driven batch through
``Ctx.goal_policy``, which ``core`` sets to ``on_terminal``.
"""

from __future__ import annotations

import dataclasses

from llmo import plans
from llmo.brain import graph, stopping, tasks
from llmo.brain.ctx import Ctx
from llmo.brain.state import Batch, GoalRun, TaskRun
from llmo.proto.states import TASK_TERMINAL


def pipeline_of(plan: plans.Plan, goal: plans.Goal) -> tuple[str, ...]:
    edges = plans.task_edges(plan.tasks)
    down: dict[str, set[str]] = {}
    for task_id, deps in edges.items():
        for dep in deps:
            down.setdefault(dep, set()).add(task_id)
    reach = set(goal.discovery_tasks)
    stack = list(reach)
    while stack:
        for nxt in down.get(stack.pop(), ()):
            if nxt not in reach:
                reach.add(nxt)
                stack.append(nxt)
    ancestors = {goal.tracked_task}
    stack = [goal.tracked_task]
    while stack:
        for dep in edges.get(stack.pop(), ()):
            if dep not in ancestors:
                ancestors.add(dep)
                stack.append(dep)
    members = (reach & ancestors) | set(goal.discovery_tasks) | {goal.tracked_task}
    return tuple(t.id for t in plan.tasks if t.id in members)


def setup(cx: Ctx, batch: Batch, plan: plans.Plan, goal: plans.Goal, runs: list[TaskRun]) -> None:
    target = int(goal.target)
    pipeline = pipeline_of(plan, goal)
    batch.goal = GoalRun(
        target=target,
        tolerance=goal.tolerance,
        tracked=goal.tracked_task,
        pipeline=pipeline,
        cap=max(1, target * goal.max_attempts_multiplier),
        round_ids={p: p for p in pipeline},
        members=set(pipeline),
    )
    members = set(pipeline)
    expanded = {tasks.expansion_key(p) for p in pipeline}
    for run in runs:
        if run.id in members:
            continue
        if any(d in members or d in expanded for d in run.deps):
            kept = [d for d in run.deps if d not in members and d not in expanded]
            run.deps = (*dict.fromkeys(kept), tasks.GOAL_KEY)


def is_tracked(g: GoalRun, task: TaskRun) -> bool:
    tracked = g.round_ids.get(g.tracked, g.tracked)
    if task.parent:
        return task.parent == tracked
    return task.id == tracked and task.spec.foreach is None


def in_round(g: GoalRun, task: TaskRun) -> bool:
    ids = g.round_ids
    return task.id in ids.values() or task.parent in ids.values()


def on_expanded(cx: Ctx, batch: Batch, task: TaskRun, count: int) -> None:
    g = batch.goal
    if g is not None and task.id == g.round_ids.get(g.tracked):
        g.tried += count


def on_terminal(cx: Ctx, batch: Batch, task: TaskRun) -> None:
    """A task of a goal-driven batch has ended: count it, then reach, exhaust or go on."""
    g = batch.goal
    if g is None or g.state != "running" or not in_round(g, task):
        return
    if is_tracked(g, task) and (task.spec.foreach is None or task.parent):
        if not task.parent:
            g.tried += 1
        if task.state == "done":
            g.succeeded += 1
    if g.succeeded >= g.target:
        reached(cx, batch, g)
        return
    if not round_over(batch, g):
        return
    if g.succeeded >= g.target - g.tolerance:
        reached(cx, batch, g)
    elif g.tried >= g.cap:
        g.state = "exhausted"
        cx.publish(batch, "goal_exhausted", succeeded=g.succeeded, tried=g.tried, cap=g.cap)
        tasks.skip_dependents(cx, batch, tasks.GOAL_KEY)
    else:
        if g.tried == 0:
            g.tried += 1  # a round that found no candidates still counts towards the cap
        next_round(cx, batch, g)


def round_over(batch: Batch, g: GoalRun) -> bool:
    for rid in g.round_ids.values():
        task = batch.tasks.get(rid)
        if task is not None and task.state not in TASK_TERMINAL:
            return False
    return True


def reached(cx: Ctx, batch: Batch, g: GoalRun) -> None:
    g.state = "reached"
    cx.publish(batch, "goal_reached", succeeded=g.succeeded, tried=g.tried, rounds=g.round)
    for dep_id in batch.dependents.pop(tasks.GOAL_KEY, ()):
        tasks.satisfied(cx, batch, batch.tasks[dep_id])
    for task in list(batch.tasks.values()):  # candidates still out are not needed any more
        if in_round(g, task) and task.state in tasks.LIVE_STATES:
            stopping.cancel_task(cx, batch, task, "goal reached")
            tasks.on_terminal(cx, batch, task)


def next_round(cx: Ctx, batch: Batch, g: GoalRun) -> None:
    g.round += 1
    suffix = f".r{g.round}"
    new_ids = {p: p + suffix for p in g.pipeline}
    g.round_ids = new_ids
    g.members.update(new_ids.values())
    specs = []
    for plan_id in g.pipeline:
        spec = batch.plan_tasks[plan_id]
        deps = []
        for entry in spec.depends_on:
            if entry in new_ids:
                entry = new_ids[entry]
            elif "{ITEM" in entry:
                prefix = entry.split("{", 1)[0]
                base = prefix[:-1]
                if prefix.endswith("_") and base in new_ids:
                    entry = new_ids[base] + "_" + entry[len(prefix) :]
            deps.append(entry)
        specs.append(dataclasses.replace(spec, id=new_ids[plan_id], depends_on=tuple(deps)))
    cx.publish(batch, "goal_round", round=g.round, succeeded=g.succeeded, tried=g.tried)
    runs = graph.build_tasks(specs, batch.variables)
    graph.add_tasks(cx, batch, runs)
