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
tasks are released at once and the candidates still out are cancelled.
When a round ends short of it, the goal is reached if the successes are
within ``tolerance``; it is exhausted when ``target x
max_attempts_multiplier`` candidates have been tried, when ``round_cap``
rounds have run, or when the plan has no discovery task (its candidates can
never change); otherwise a new round starts. Either way the waiting tasks
are released (a report still runs on what was found), ``goal_reached`` or
``goal_exhausted`` (with its ``reason``) is published, and RUN_SUMMARY holds
the goal's record; an exhausted goal fails the batch, with the counts in its
escalation report.

Names are the original system's: round 1 runs the plan's tasks as written;
round N re-runs the discovery tasks and the pipeline's templates as
``<id>_round_NNNN``, and their items keep the plan's item names
(``validate_item_<item id>``), or ``<id>_r<N>c<index>`` (index from 0) for
items without an id. A candidate is tried once: each pipeline template
remembers the items it has expanded (by id, else by content) and leaves out
of a later round the ones it has seen, so a discovery that finds some of
the same candidates again neither re-validates nor re-counts them. Failures
inside the pipeline are rejected candidates, not batch failures; a validator
says "rejected" with exit code 65, which is not retried.

The task lifecycle reports each ended task of a goal-driven batch through
``Ctx.goal_policy``, which ``core`` sets to ``on_terminal``.
"""

from __future__ import annotations

import dataclasses
import json

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
        round_cap=goal.round_cap or 0,
        discovery=goal.discovery_tasks,
    )
    members = set(pipeline)
    expanded = {tasks.expansion_key(p) for p in pipeline}
    for run in runs:
        if run.id in members:
            continue
        if any(d in members or d in expanded for d in run.deps):
            kept = [d for d in run.deps if d not in members and d not in expanded]
            run.deps = (*dict.fromkeys(kept), tasks.GOAL_KEY)


def round_task_name(plan_id: str, round_no: int) -> str:
    """The original's name of a pipeline task in round ``round_no``."""
    return plan_id if round_no <= 1 else f"{plan_id}_round_{round_no:04d}"


def plan_id_of(g: GoalRun, run_id: str) -> str | None:
    """The plan id of a pipeline task of the current round, or None."""
    for plan_id, rid in g.round_ids.items():
        if rid == run_id:
            return plan_id
    return None


def is_tracked(g: GoalRun, task: TaskRun) -> bool:
    tracked = g.round_ids.get(g.tracked, g.tracked)
    if task.parent:
        return task.parent == tracked
    return task.id == tracked and task.spec.foreach is None


def in_round(g: GoalRun, task: TaskRun) -> bool:
    ids = g.round_ids
    return task.id in ids.values() or task.parent in ids.values()


def candidate_key(item: object) -> str:
    """What makes two manifest items the same candidate: the id, else the content."""
    if isinstance(item, dict):
        value = item.get("id")
        if not isinstance(value, bool) and isinstance(value, str | int | float) and str(value):
            return f"id:{value}"
    return "item:" + json.dumps(item, sort_keys=True, default=str)


def new_items(batch: Batch, task: TaskRun, items: list[object]) -> list[tuple[int, object]]:
    """The items of a pipeline template this run has not expanded before, with their index.

    Items of templates outside the goal's pipeline all pass; those of a
    pipeline template are remembered, so a later round leaves them out.
    """
    g = batch.goal
    plan_id = plan_id_of(g, task.id) if g is not None else None
    if g is None or plan_id is None:
        return list(enumerate(items))
    seen = g.seen.setdefault(plan_id, set())
    out = []
    for index, item in enumerate(items):
        key = candidate_key(item)
        if key not in seen:
            seen.add(key)
            out.append((index, item))
    return out


def round_children(
    batch: Batch, task: TaskRun, children: list[plans.Task], indexes: list[int]
) -> list[plans.Task]:
    """A later round's item tasks under the original's names, waiting on this round's tasks."""
    g = batch.goal
    plan_id = plan_id_of(g, task.id) if g is not None else None
    if g is None or plan_id is None or g.round <= 1:
        return children
    by_id = task.spec.batch_size <= 1 and all(
        candidate_key(item).startswith("id:") for child in children for item in child.items
    )
    out = []
    for n, child in enumerate(children):
        if task.spec.batch_size > 1:  # <id>_batch_0001_0004 -> <id>_r2_batch_0001_0004
            name = f"{plan_id}_r{g.round}_" + child.id[len(plan_id) + 1 :]
        elif by_id:
            name = child.id
        else:
            name = f"{plan_id}_r{g.round}c{indexes[n]}"
        deps = tuple(g.round_ids.get(d, d) for d in child.depends_on)
        out.append(dataclasses.replace(child, id=name, depends_on=deps))
    return out


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
        exhausted(cx, batch, g, f"tried {g.tried} candidates, the cap of {g.cap}")
    elif not g.discovery:
        exhausted(cx, batch, g, "no discovery task, so no new candidates can come")
    elif g.round_cap and g.round >= g.round_cap:
        exhausted(cx, batch, g, f"ran {g.round} rounds, the round limit of {g.round_cap}")
    else:
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
    release_waiting(cx, batch)
    for task in list(batch.tasks.values()):  # candidates still out are not needed any more
        if in_round(g, task) and task.state in tasks.LIVE_STATES:
            stopping.cancel_task(cx, batch, task, "goal reached")
            tasks.on_terminal(cx, batch, task)


def exhausted(cx: Ctx, batch: Batch, g: GoalRun, reason: str) -> None:
    """The goal cannot be reached: say why, and let the tasks after it run on what was found."""
    g.state = "exhausted"
    g.reason = reason
    cx.publish(
        batch,
        "goal_exhausted",
        succeeded=g.succeeded,
        target=g.target,
        tried=g.tried,
        cap=g.cap,
        rounds=g.round,
        reason=reason,
    )
    release_waiting(cx, batch)


def release_waiting(cx: Ctx, batch: Batch) -> None:
    for dep_id in batch.dependents.pop(tasks.GOAL_KEY, ()):
        tasks.satisfied(cx, batch, batch.tasks[dep_id])


def next_round(cx: Ctx, batch: Batch, g: GoalRun) -> None:
    g.round += 1
    new_ids = {p: round_task_name(p, g.round) for p in g.pipeline}
    g.round_ids = new_ids
    g.members.update(new_ids.values())
    cx.publish(batch, "goal_round", round=g.round, succeeded=g.succeeded, tried=g.tried)
    runs = graph.build_tasks([batch.plan_tasks[p] for p in g.pipeline], batch.variables)
    for run in runs:
        run.id = new_ids[run.id]
        run.deps = tuple(_round_dep(new_ids, dep) for dep in run.deps)
    graph.add_tasks(cx, batch, runs)


def _round_dep(new_ids: dict[str, str], dep: str) -> str:
    """``dep`` (a task id, or ``<id>#expanded``) as the task of this round, if it is one."""
    base, mark, rest = dep.partition("#")
    if base in new_ids:
        return new_ids[base] + mark + rest
    return dep
