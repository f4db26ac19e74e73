"""The brain's pure core: ``step(state, event, now) -> (state, commands)``.

Theory of operation
-------------------
``step`` is the only entry point. It takes one event (a received message, a
timer tick, the result of a file read it asked for, the settings) and the
current time, changes the state and returns the commands to carry out. It
imports no sockets, clock or file access and draws no random numbers:
attempt and batch ids are derived from the state and ``now``. The same
events with the same times always give the same state and commands, so the
journal replays exactly and captured streams can be compared decision by
decision.

Messages are handled by a table, ``MESSAGE_HANDLERS`` (one small function
per type, in the module for its family); events by ``EVENT_HANDLERS``.
Before the handler, the gap since the previous event is measured: a gap
past a worker's expiry means the brain itself stood still, and liveness
verdicts wait for fresh heartbeats (``liveness.check_gap``). After the
handler, dispatch runs if anything may have freed a worker or
readied a task, and a tick also runs the timers, backoff, model policy and
summary refreshes. Any exception inside a handler is caught and becomes an
error ``Log`` command: bad input never crashes the core. (A handler that
raised may have changed part of the state; the log says which event did it.)
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from llmo.brain import (
    dispatch,
    foreach,
    goal,
    liveness,
    models,
    reopen,
    results,
    stopping,
    submit,
    tasks,
    view,
)
from llmo.brain.commands import Command, Log, ReadManifest
from llmo.brain.config import BrainConfig
from llmo.brain.ctx import Ctx
from llmo.brain.events import (
    Configure,
    Event,
    ManifestRead,
    PlanLoaded,
    Received,
    Resumed,
    Stopped,
    Tick,
)
from llmo.brain.state import BrainState, Worker, advance
from llmo.proto.errors import ErrorCode
from llmo.proto.messages import (
    Ack,
    BatchCancel,
    Error,
    Heartbeat,
    Message,
    ModelLoad,
    ModelUnload,
    MsgType,
    PeerDown,
    Register,
    SnapshotReply,
    SnapshotRequest,
    TaskRetry,
    WorkerDrain,
)
from llmo.proto.states import TASK_ACTIVE
from llmo.proto.vocab import MAX_LLM_REQUESTS, MAX_PARALLEL

# Beyond these a heartbeat figure is a broken or hostile peer, not a worker.
MAX_SLOTS = 4096
MAX_VRAM_MB = 16 * 1024 * 1024  # 16 TiB
MAX_INTERVAL_S = 60.0  # a longer heartbeat interval would hide a dead worker for minutes


def new_state(config: BrainConfig | None = None) -> BrainState:
    return BrainState(config=config or BrainConfig())


# --- workers -----------------------------------------------------------------------


def worker_for(cx: Ctx, name: str) -> Worker:
    worker = cx.state.workers.get(name)
    if worker is None:
        worker = cx.state.workers[name] = Worker(name=name, last_seen=cx.now, idle_since=cx.now)
        cx.publish(None, "worker_up", worker=name)
    elif worker.state == "down":
        advance(worker, "up")
        worker.idle_since = cx.now
        cx.publish(None, "worker_up", worker=name)
    worker.last_seen = cx.now
    return worker


def on_register(cx: Ctx, msg: Register) -> None:
    known = cx.state.workers.get(msg.src)
    if known is not None and known.pid and msg.pid and known.pid != msg.pid:
        liveness.lose_attempts(cx, known, f"worker {msg.src} restarted")
        models.worker_gone(cx, known)
        advance(known, "restart")
    worker = worker_for(cx, msg.src)
    worker.role = msg.role
    worker.gpus = msg.gpus
    worker.models = msg.models
    worker.slots = max(1, msg.slots)
    worker.vram_budget_mb = msg.vram_budget_mb
    worker.pid = msg.pid
    worker.endpoint = msg.endpoint
    worker.host = msg.host
    cx.publish(None, "worker_registered", worker=msg.src, role=msg.role, slots=worker.slots)
    cx.state.dispatch_due = True


def on_heartbeat(cx: Ctx, msg: Heartbeat) -> None:
    worker = worker_for(cx, msg.src)
    if msg.role in ("worker", "brain"):
        worker.role = msg.role
    absurd = [
        name
        for name, value, low, high in (
            ("slots_total", msg.slots_total, 0, MAX_SLOTS),
            ("llm_slots", msg.llm_slots, 0, MAX_PARALLEL),
            ("llm_requests", msg.llm_requests, 0, MAX_LLM_REQUESTS),
            ("vram_budget_mb", msg.vram_budget_mb, 0, MAX_VRAM_MB),
            ("vram_used_mb", msg.vram_used_mb, 0, MAX_VRAM_MB),
            ("tok_s", msg.tok_s, 0.0, 1e7),
            ("interval_s", msg.interval_s, 0.0, MAX_INTERVAL_S),
        )
        if not low <= value <= high  # NaN fails every comparison
    ]
    if absurd:  # a broken or hostile peer: keep what is known, say what was refused
        cx.log("warning", f"heartbeat from {msg.src}: ignored absurd {', '.join(absurd)}")
    if msg.slots_total and "slots_total" not in absurd:
        worker.slots = msg.slots_total
    if msg.vram_budget_mb and "vram_budget_mb" not in absurd:
        worker.vram_budget_mb = msg.vram_budget_mb
    if "vram_used_mb" not in absurd:
        worker.vram_used_mb = msg.vram_used_mb
    if "tok_s" not in absurd:
        worker.tok_s = msg.tok_s
    if "llm_slots" not in absurd:
        worker.llm_slots = msg.llm_slots
    if "llm_requests" not in absurd:
        worker.llm_requests = msg.llm_requests
        if msg.llm_requests:
            worker.llm_request_at = cx.now
    worker.constraint = msg.constraint
    if msg.telemetry is not None:
        worker.gauges = view.gauges(msg.telemetry)
    if msg.interval_s > 0 and "interval_s" not in absurd:
        worker.interval_s = msg.interval_s
    models.on_report(cx, worker, msg.state, msg.model)
    active = frozenset(msg.active)
    if active:
        worker.reports_active = True
    if worker.reports_active:
        liveness.check_heartbeat_active(cx, worker, active, frozenset(msg.held))
    worker.last_active = active
    cx.state.dispatch_due = True


def on_peer_down(cx: Ctx, msg: PeerDown) -> None:
    worker = cx.state.workers.get(msg.peer)
    if worker is not None and worker.alive:
        liveness.worker_down(cx, worker, f"broker: silent {msg.silent_s:.1f}s")


def on_error(cx: Ctx, msg: Error) -> None:
    if msg.code == ErrorCode.UNKNOWN_DESTINATION and msg.peer in cx.state.workers:
        worker = cx.state.workers[msg.peer]
        if worker.alive:
            liveness.worker_down(cx, worker, "the broker does not know it")
        return
    if msg.code == ErrorCode.NAME_IN_USE and not msg.reply_to:
        # The broker refused a newcomer that claimed this brain's name; this brain
        # holds it and carries on (the refused one stops: brain.service).
        cx.log(
            "warning",
            f"another connection claimed the name 'brain' and was refused: "
            f"{msg.detail}; this brain keeps running",
        )
        return
    cx.log("warning", f"error from {msg.src}: {msg.code}: {msg.detail}")


# --- operator requests ----------------------------------------------------------------


def ack(cx: Ctx, msg: Message, ok: bool, detail: str) -> None:
    cx.send(Ack(dst=msg.src, reply_to=msg.id, ok=ok, detail=detail))


def on_batch_cancel(cx: Ctx, msg: BatchCancel) -> None:
    batch = cx.state.batches.get(msg.batch_id)
    if batch is None:
        ack(cx, msg, False, f"no batch {msg.batch_id}")
        return
    if batch.state != "running":
        ack(cx, msg, False, f"batch {msg.batch_id} has already ended ({batch.state})")
        return
    stopping.cancel_batch(cx, batch, msg.reason or f"cancelled by {msg.src}")
    ack(cx, msg, True, f"batch {msg.batch_id} cancelled")


def on_task_retry(cx: Ctx, msg: TaskRetry) -> None:
    why = reopen.refusal(cx.state, msg.batch_id, msg.task_id)
    if why:
        cx.send(Error(dst=msg.src, code=ErrorCode.REFUSED, reply_to=msg.id, detail=why))
        return
    batch = cx.state.batches[msg.batch_id]
    was = batch.state
    back = reopen.reopen(cx, batch, batch.tasks[msg.task_id], msg.reason or f"retried by {msg.src}")
    detail = f"task {msg.task_id} of batch {batch.id} re-opened with a fresh attempt budget"
    if back:
        detail += f"; {len(back)} skipped dependent(s) wait for it again"
    if was != batch.state:
        detail += f"; batch {batch.id} is running again"
    ack(cx, msg, True, detail)


def on_drain(cx: Ctx, msg: WorkerDrain) -> None:
    worker = cx.state.workers.get(msg.worker)
    if worker is None or not worker.alive:
        ack(cx, msg, False, f"no live worker {msg.worker}")
        return
    advance(worker, "drain" if msg.drain else "undrain")
    cx.send(
        WorkerDrain(dst=worker.name, worker=worker.name, drain=msg.drain, deadline_s=msg.deadline_s)
    )
    cx.publish(None, "worker_drain" if msg.drain else "worker_undrain", worker=worker.name)
    cx.state.dispatch_due = True
    ack(cx, msg, True, f"{worker.name} {'draining' if msg.drain else 'back in service'}")


def on_model_load(cx: Ctx, msg: ModelLoad) -> None:
    workers = cx.state.workers
    if msg.worker:
        worker = workers.get(msg.worker)
        if worker is None or not worker.alive:
            ack(cx, msg, False, f"no live worker {msg.worker}")
            return
        if worker.loading:
            ack(cx, msg, False, f"{worker.name} is already loading {worker.loading}")
            return
    else:
        worker = next((w for w in workers.values() if models.can_load(cx, w, msg.model)), None)
        if worker is None:
            ack(cx, msg, False, f"no cold, idle worker can load {msg.model}")
            return
    models.load(cx, worker, msg.model, f"requested by {msg.src}")
    ack(cx, msg, True, f"{worker.name} loading {msg.model}")


def on_model_unload(cx: Ctx, msg: ModelUnload) -> None:
    worker = cx.state.workers.get(msg.worker)
    if worker is None or not worker.alive:
        ack(cx, msg, False, f"no live worker {msg.worker!r}")
        return
    if not worker.loading and worker.model_state in ("cold", ""):
        ack(cx, msg, False, f"{worker.name} has no model loaded")
        return
    models.unload(cx, worker, msg.reason or f"requested by {msg.src}")
    ack(cx, msg, True, f"{worker.name} unloading")


def on_snapshot(cx: Ctx, msg: SnapshotRequest) -> None:
    workers, batches, task_list = view.snapshot(cx.state, msg.batch_id)
    cx.send(
        SnapshotReply(
            dst=msg.src,
            reply_to=msg.id,
            rev=cx.state.rev,
            workers=tuple(workers),
            batches=tuple(batches),
            tasks=tuple(task_list),
        )
    )


# Each handler takes the message class of its key, a pairing no dict type can state.
MESSAGE_HANDLERS: dict[MsgType, Callable[[Ctx, Any], None]] = {
    MsgType.REGISTER: on_register,
    MsgType.HEARTBEAT: on_heartbeat,
    MsgType.TASK_STARTED: results.on_started,
    MsgType.TASK_PROGRESS: results.on_progress,
    MsgType.TASK_DONE: results.on_done,
    MsgType.TASK_FAILED: results.on_failed,
    MsgType.MODEL_STATUS: models.on_status,
    MsgType.MODEL_LOAD: on_model_load,
    MsgType.MODEL_UNLOAD: on_model_unload,
    MsgType.WORKER_DRAIN: on_drain,
    MsgType.PLAN_SUBMIT: submit.on_submit,
    MsgType.BATCH_CANCEL: on_batch_cancel,
    MsgType.TASK_RETRY: on_task_retry,
    MsgType.SNAPSHOT_REQUEST: on_snapshot,
    MsgType.PEER_DOWN: on_peer_down,
    MsgType.PEER_UP: lambda cx, msg: None,  # a heartbeat or registration follows
    MsgType.ERROR: on_error,
}


# --- events -----------------------------------------------------------------------------


def on_received(cx: Ctx, ev: Received) -> None:
    handler = MESSAGE_HANDLERS.get(ev.msg.TYPE)
    if handler is None:
        cx.log("warning", f"unexpected {ev.msg.TYPE.value} from {ev.msg.src}")
        if hasattr(ev.msg, "id") and ev.msg.src:
            cx.send(
                Error(
                    dst=ev.msg.src,
                    code=ErrorCode.UNEXPECTED,
                    reply_to=ev.msg.id,
                    detail=f"the brain does not take {ev.msg.TYPE.value}",
                )
            )
        return
    handler(cx, ev.msg)


def on_tick(cx: Ctx, ev: Tick) -> None:
    liveness.check_silent(cx)
    stopping.check_attempts(cx)
    tasks.release_delayed(cx)
    models.plan(cx)
    tasks.refresh_summaries(cx)
    tasks.forget_finished(cx)
    cx.state.dispatch_due = True


def on_configure(cx: Ctx, ev: Configure) -> None:
    cx.state.config = BrainConfig.from_dict(ev.settings)
    cx.cfg = cx.state.config
    cx.state.dispatch_due = True


def on_resumed(cx: Ctx, ev: Resumed) -> None:
    st = cx.state
    for worker in st.workers.values():
        if worker.alive:
            worker.last_seen = cx.now
    liveness.hush_after_restart(cx)
    for request_id, req in st.pending_plans.items():
        cx.out.append(submit.read_plan(cx, request_id, req))
    for batch in st.active_batches():
        for task in batch.tasks.values():
            source = task.spec.foreach  # set on every template, the only tasks that expand
            if task.state == "expanding" and source is not None:
                cx.out.append(ReadManifest(batch.id, task.id, source, dict(batch.variables)))
    for batch in st.active_batches():
        if batch.interrupted_at:
            batch.interrupted_at = 0.0
            batch.summary_due = True  # its RUN_SUMMARY reads running again
            cx.publish(batch, "batch_resumed")
    cx.publish(None, "brain_resumed", batches=len(st.active_batches()), workers=len(st.workers))


def on_stopped(cx: Ctx, ev: Stopped) -> None:
    """An orderly stop: each unfinished batch is marked interrupted, in its events
    and its RUN_SUMMARY, and nothing more is dispatched."""
    batches = cx.state.active_batches()
    for batch in batches:
        batch.interrupted_at = cx.now
        out = sum(1 for t in batch.tasks.values() if t.state in TASK_ACTIVE)
        left = sum(1 for t in batch.tasks.values() if not tasks.is_terminal(t))
        cx.publish(batch, "batch_interrupted", reason=ev.why, unfinished=left, out=out)
        tasks.write_summary(cx, batch)
    cx.state.dispatch_due = False
    cx.log(
        "info",
        f"stopping ({ev.why}): {len(batches)} unfinished batch(es) marked interrupted; "
        "they resume when the brain starts again",
    )


# Each handler takes the event class of its key (see MESSAGE_HANDLERS).
EVENT_HANDLERS: dict[type, Callable[[Ctx, Any], None]] = {
    Resumed: on_resumed,
    Stopped: on_stopped,
    Received: on_received,
    Tick: on_tick,
    PlanLoaded: submit.on_plan_loaded,
    ManifestRead: foreach.on_manifest,
    Configure: on_configure,
}


def new_ctx(state: BrainState, now: float) -> Ctx:
    """The context of one step, with the goal policy wired into the task lifecycle."""
    return Ctx(state, now, goal_policy=goal.on_terminal)


def step(state: BrainState, event: Event, now: float) -> tuple[BrainState, list[Command]]:
    """Fold one event into the state; the commands to carry out, in order."""
    state.events += 1
    cx = new_ctx(state, now)
    requester = _requester(state, event)
    gap = now - state.last_now if state.last_now else 0.0
    state.last_now = max(state.last_now, now)
    try:
        liveness.check_gap(cx, gap)
        EVENT_HANDLERS[type(event)](cx, event)
        if state.dispatch_due:
            dispatch.dispatch(cx)
    except Exception as exc:  # a bug or a bad input: log it, never crash the loop
        detail = "".join(traceback.format_exception_only(exc)).strip()
        cx.out.append(Log("error", f"event {type(event).__name__} failed: {detail}"))
        state.dispatch_due = False
        if requester is not None:  # whoever waits for an answer gets one
            cx.send(
                Error(
                    dst=requester.src,
                    code=ErrorCode.INTERNAL,
                    reply_to=requester.id,
                    detail=f"the brain failed on this {requester.TYPE.value}: {detail[:300]}",
                )
            )
    return state, cx.finish()


# Requests a tool waits on: if handling one fails, the tool is told so.
REQUEST_TYPES = frozenset(
    {
        MsgType.PLAN_SUBMIT,
        MsgType.SNAPSHOT_REQUEST,
        MsgType.BATCH_CANCEL,
        MsgType.TASK_RETRY,
        MsgType.WORKER_DRAIN,
        MsgType.MODEL_LOAD,
        MsgType.MODEL_UNLOAD,
    }
)


def _requester(state: BrainState, event: Event) -> Message | None:
    if isinstance(event, Received):
        msg = event.msg
        return msg if msg.TYPE in REQUEST_TYPES and msg.src and msg.id else None
    if isinstance(event, PlanLoaded):
        return state.pending_plans.get(event.request_id)
    return None
