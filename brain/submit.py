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

The configuration keys ``RUN_MODE``, ``RESUME_BATCH_ID`` and ``BATCH_ID``
(``plans.config_run_mode``) name the batch instead: ``BATCH_ID`` a new batch's
folder (refused when the brain holds a batch of that id or the folder
exists), ``RUN_MODE: resume`` an earlier batch to re-enter (``batch_folder``).
The shell looks at that folder when it reads the plan (``brain.prior``). A
resumed batch keeps its id, folder and ``{BATCH_ID}``, and every task that
succeeded before enters as done (``Batch.kept``): for a batch the brain still
holds its journaled state says which, otherwise the folder's records. Only
one authority runs a batch: a batch the brain still runs, or whose attempts
are still being stopped on workers, is not resumed. A named batch's attempt
ids carry the time and batch sequence (``Batch.attempt_prefix``), since
workers answer an attempt id they remember with its earlier result.
"""

from __future__ import annotations

import datetime
import heapq
from typing import Any

from llmo import plans
from llmo.brain import goal, graph, tasks
from llmo.brain.commands import LinkFile, MakeDirs, ReadPlan, WriteEnvManifest
from llmo.brain.ctx import Ctx
from llmo.brain.events import PlanLoaded
from llmo.brain.state import Batch
from llmo.proto.messages import PlanAccepted, PlanRejected, PlanSubmit


def on_submit(cx: Ctx, msg: PlanSubmit) -> None:
    cx.state.pending_plans[msg.id] = msg
    cx.out.append(read_plan(cx, msg.id, msg))


def read_plan(cx: Ctx, request_id: str, msg: PlanSubmit) -> ReadPlan:
    """Ask for the plan's text, and for a look at the batch folder it names, if any."""
    try:
        _, named = plans.config_run_mode(msg.config)
    except plans.PlanError:  # refused with the plan's other problems once it is read
        named = ""
    history = history_path(cx, msg.plan_path, named) if named else ""
    return ReadPlan(request_id, msg.plan_path, history)


def history_path(cx: Ctx, plan_path: str, batch_id: str) -> str:
    return f"{plan_path.rstrip('/') or '/'}/{cx.cfg.history_dir}/{batch_id}"


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
    try:
        plans.config_llm_cache(config)
    except plans.PlanError as exc:
        error_text.append(f"{plan_file}:0: {exc}")
    mode, named = "fresh", ""
    try:
        mode, named = plans.config_run_mode(config)
    except plans.PlanError as exc:
        error_text.append(f"{plan_file}:0: {exc}")
    if plan is None or error_text:
        reject(cx, req, error_text or [f"{plan_file}:0: the plan has no tasks"], warning_text)
        return
    if mode == "resume" and plan.goal is not None:
        reject(
            cx,
            req,
            [
                f"{plan_file}:0: a goal-driven plan cannot be resumed here: its rounds and "
                "accepted count are not kept in a form a resume can continue; submit it "
                "afresh (BATCH_ID names a new folder)"
            ],
            warning_text,
        )
        return
    kept: frozenset[str] = frozenset()
    source = ""
    if named:
        found = batch_folder(cx, req, named, mode, ev.prior or {})
        if isinstance(found, str):
            reject(cx, req, [f"{plan_file}:0: {found}"], warning_text)
            return
        kept, source = found
    batch_id = named or batch_id_for(cx)
    plan_path = req.plan_path.rstrip("/") or "/"
    history = history_path(cx, plan_path, batch_id)
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
        kept=kept,
        resumed_from=source,
        attempt_prefix=f"{batch_id}@{int(cx.now)}.{st.batch_seq}" if named else "",
    )
    if batch_id in st.batches:  # a resumed batch the brain held: the new run replaces it
        st.delayed = [d for d in st.delayed if d[2] != batch_id]
        heapq.heapify(st.delayed)
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
    if mode == "resume":
        cx.publish(batch, "batch_resumed", kept=len(kept), source=source)
        cx.log("info", f"resumed batch {batch_id}: {len(kept)} task(s) kept as done ({source})")
    if plan_goal is not None:
        goal.setup(cx, batch, plan, plan_goal, runs)
    graph.add_tasks(cx, batch, runs)
    if batch.state == "running" and not any(batch.counts[s] for s in tasks.LIVE_STATES):
        tasks.end_batch(cx, batch)  # a resumed batch with nothing left to run


def batch_folder(
    cx: Ctx, req: PlanSubmit, batch_id: str, mode: str, prior: dict[str, Any]
) -> tuple[frozenset[str], str] | str:
    """For a batch the submission names: the tasks to keep as done and where that
    was learnt, or why the submission is refused.

    A fresh batch may not take a name in use (in the brain or on disk). A resumed
    one must exist; for a batch the brain still holds, its journaled state is the
    authority (and one it still runs, or whose attempts are still out on workers,
    cannot be resumed); otherwise the folder's records say what succeeded
    (``brain.prior``).
    """
    folder = history_path(cx, req.plan_path, batch_id)
    known = cx.state.batches.get(batch_id)
    if known is not None and known.plan_path.rstrip("/") != req.plan_path.rstrip("/"):
        return (
            f"batch id {batch_id} is already used by the brain for the plan at "
            f"{known.plan_path}; batch ids are unique on this rig"
        )
    if mode == "fresh":
        if known is not None or prior.get("exists"):
            return (
                f"BATCH_ID {batch_id}: the batch folder {folder} already exists; choose "
                f"another BATCH_ID, or re-enter it with RUN_MODE 'resume' and RESUME_BATCH_ID "
                f"(llmo submit --resume {batch_id})"
            )
        return frozenset(), ""
    if known is not None:
        if known.state == "running":
            return (
                f"batch {batch_id} is still running in the brain; it can be resumed once it "
                f"has ended (wait for it, or `llmo cancel {batch_id}`)"
            )
        out = [
            w.name
            for w in cx.state.workers.values()
            if any(b == batch_id for b, _, _ in w.attempts.values())
        ]
        if out:
            return (
                f"batch {batch_id} still has attempts being stopped on {', '.join(sorted(out))}; "
                "resume it once they have ended"
            )
        done = frozenset(t.id for t in known.tasks.values() if t.state == "done")
        return done, "brain"
    if not prior.get("exists"):
        return (
            f"RESUME_BATCH_ID {batch_id}: there is no batch folder {folder} to resume; "
            f"`ls {req.plan_path.rstrip('/')}/{cx.cfg.history_dir}` lists this plan's batches"
        )
    for problem in prior.get("problems", ()):
        cx.log("warning", f"resume {batch_id}: {problem}")
    done = frozenset(str(t) for t in prior.get("done", ()))
    return done, "+".join(str(s) for s in prior.get("sources", ())) or "no records"
