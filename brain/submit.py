"""Submission and expansion: plan text in, a batch of tasks out.

Theory of operation
-------------------
``PlanSubmit`` is remembered and answered with a ``ReadPlan`` command; the
shell reads ``plan.md`` and feeds its text back as ``PlanLoaded``, so the
journal holds the exact text the batch was built from. The core parses and
validates it with ``plans`` and refuses the plan with every problem listed
(undefined placeholders included), or creates the batch: a deterministic id
from ``now`` (``YYYYMMDD_HHMMSS`` in UTC, ``_2``, ``_3``... when taken), its
history folder, one ``TaskRun`` per plan task, dependency counts and the
dependents map, and releases what has no dependencies.

A ``foreach`` template, once released, asks for its items (``ReadManifest``);
``ManifestRead`` expands it with ``plans.expand_foreach``. A per-item entry
(``extract_{ITEM.id}``) makes the template wait for the other template's
*expansion*, not its completion, and each item then waits for its own
counterpart, so two templates over one manifest run as per-item pipelines.
A missing source or a bad path fails the template at once, with the reason:
a broken source is never retried silently.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from llmo import plans
from llmo.brain import goal, tasks
from llmo.brain.commands import MakeDirs, ReadPlan
from llmo.brain.ctx import Ctx
from llmo.brain.events import ManifestRead, PlanLoaded
from llmo.brain.state import Batch, TaskRun
from llmo.plans.graph import item_entry_template
from llmo.proto.messages import PlanAccepted, PlanRejected, PlanSubmit


def on_submit(cx: Ctx, msg: PlanSubmit) -> None:
    cx.state.pending_plans[msg.id] = msg
    cx.out.append(ReadPlan(msg.id, msg.plan_path))


def batch_id_for(cx: Ctx) -> str:
    stamp = datetime.datetime.fromtimestamp(cx.now, tz=datetime.UTC).strftime("%Y%m%d_%H%M%S")
    candidate = stamp
    n = 1
    while candidate in cx.state.batches:
        n += 1
        candidate = f"{stamp}_{n}"
    return candidate


def reject(cx: Ctx, req: PlanSubmit, errors: list[str], warnings: list[str]) -> None:
    cx.send(
        PlanRejected(
            dst=req.src,
            reply_to=req.id,
            plan_path=req.plan_path,
            errors=tuple(errors),
            warnings=tuple(warnings),
        )
    )
    cx.log("info", f"refused plan {req.plan_path}: {len(errors)} error(s)")


def on_plan_loaded(cx: Ctx, ev: PlanLoaded) -> None:
    req = cx.state.pending_plans.pop(ev.request_id, None)
    if req is None:
        cx.log("error", f"plan text for unknown request {ev.request_id}")
        return
    plan_file = f"{req.plan_path.rstrip('/')}/plan.md"
    if ev.text is None:
        reject(cx, req, [f"{plan_file}:0: {ev.error or 'cannot read the plan'}"], [])
        return
    plan, problems = plans.parse_plan(ev.text, plan_file)
    config = dict(req.config)
    if plan is not None:
        problems = [*problems, *plans.undefined_placeholders(plan, config)]
    errors, warnings = plans.split_problems(problems)
    error_text = [str(p) for p in errors]
    warning_text = [str(p) for p in warnings]
    priority_name = req.priority
    if not priority_name:
        try:
            priority_name = plans.config_priority(config) or "normal"
        except plans.PlanError as exc:
            error_text.append(f"{plan_file}:0: {exc}")
    if plan is None or error_text:
        reject(cx, req, error_text or [f"{plan_file}:0: the plan has no tasks"], warning_text)
        return
    batch_id = batch_id_for(cx)
    plan_path = req.plan_path.rstrip("/") or "/"
    history = f"{plan_path}/{cx.cfg.history_dir}/{batch_id}"
    variables = plans.run_variables(plan_path, history, batch_id, config)
    try:
        runs = build_tasks(plan.tasks, variables)
        plan_goal = plans.resolve_goal(plan.goal, variables) if plan.goal is not None else None
    except plans.PlanError as exc:
        reject(cx, req, [f"{plan_file}:0: {exc}"], warning_text)
        return
    st = cx.state
    st.batch_seq += 1
    batch = Batch(
        id=batch_id,
        plan=plan.name,
        plan_path=plan_path,
        history_path=history,
        config=config,
        priority=plans.PRIORITIES[priority_name],
        priority_name=priority_name,
        seq=st.batch_seq,
        created_at=cx.now,
        request_id=req.id,
        requester=req.src,
        variables=variables,
        warnings=tuple(warning_text),
        plan_tasks={t.id: t for t in plan.tasks},
    )
    st.batches[batch_id] = batch
    cx.out.append(MakeDirs(tuple(f"{history}/{d}" for d in ("output", "results", "logs"))))
    cx.send(
        PlanAccepted(
            dst=req.src,
            reply_to=req.id,
            batch_id=batch_id,
            plan=plan.name,
            history_path=history,
            tasks=len(plan.tasks),
            warnings=tuple(warning_text),
        )
    )
    cx.publish(batch, "batch_accepted", plan=plan.name, priority=priority_name, tasks=len(runs))
    if plan_goal is not None:
        goal.setup(cx, batch, plan, plan_goal, runs)
    add_tasks(cx, batch, runs)


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
            TaskRun(id=spec.id, spec=spec, command=resolved.command, deps=resolved.depends_on)
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

    Returns how many were released; ``quiet`` releases them without one event each.
    """
    existing = batch.tasks
    dependents = batch.dependents
    for run in runs:
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


def on_manifest(cx: Ctx, ev: ManifestRead) -> None:
    batch = cx.state.batches.get(ev.batch_id)
    task = batch.tasks.get(ev.task_id) if batch is not None else None
    if task is None or task.state != "expanding":
        cx.log("info", f"ignored items for {ev.batch_id}/{ev.task_id}: no longer expanding")
        return
    if ev.items is None:
        tasks.fail(cx, batch, task, ev.error or "the foreach source gave no items")
        return
    spec = task.spec
    try:
        children = plans.expand_foreach(
            spec, list(ev.items), batch.variables, reserved=batch.plan_tasks.keys()
        )
    except plans.PlanError as exc:
        tasks.fail(cx, batch, task, str(exc))
        return
    if batch.goal is not None:
        goal.on_expanded(cx, batch, task, len(children))
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
            )
        )
    released = add_tasks(cx, batch, runs, quiet=True)
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
