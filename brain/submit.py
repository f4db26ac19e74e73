"""Plan submission: plan text in, a batch of tasks (or a refusal with every problem) out.

Theory of operation
-------------------
``PlanSubmit`` is remembered and answered with a ``ReadPlan`` command; the
shell reads ``plan.md`` and feeds its text back as ``PlanLoaded``, so the
journal holds the exact text the batch was built from. The core parses and
validates it with ``plans`` and refuses the plan with every problem listed
(undefined placeholders included), or creates the batch: a deterministic id
from ``now`` (``YYYYMMDD_HHMMSS`` in UTC, ``_2``, ``_3``... when taken), its
history folder (with ``logs/batch_events.jsonl`` linked to its events file
and ``env_manifest.json`` of the plan's Python imports, see
``docs/history.md``), and its task graph (``graph``), which releases what
has no dependencies. A plan with a goal has its goal set up (``goal.setup``) first.
"""

from __future__ import annotations

import datetime

from llmo import plans
from llmo.brain import goal, graph
from llmo.brain.commands import LinkFile, MakeDirs, ReadPlan, WriteEnvManifest
from llmo.brain.ctx import Ctx
from llmo.brain.events import PlanLoaded
from llmo.brain.state import Batch
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
    priority_name: str = req.priority
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
        runs = graph.build_tasks(plan.tasks, variables)
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
    cx.out.append(LinkFile(f"{history}/logs/batch_events.jsonl", "../batch_events.jsonl"))
    cx.out.append(WriteEnvManifest(plan_path, f"{history}/env_manifest.json"))
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
    graph.add_tasks(cx, batch, runs)
