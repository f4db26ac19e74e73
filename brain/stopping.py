"""Stopping attempts: timeouts, stalls, the abort and kill stages, cancelling.

Theory of operation
-------------------
Timers run on ``Tick``: an attempt past its timeout, or an ``llm`` attempt
with no new token for ``stall_s``, is aborted (``TaskCancel`` abort: SIGTERM
to its process group), killed ``grace_s`` later, and written off as failed
``kill_grace_s`` after that if the worker never answers. Stopping is staged
once per attempt: a second reason to abort never restarts the stages. An
attempt assigned but never started within ``assign_timeout_s`` goes back to
its queue.

Cancelling a task ends it at once (``cancelled``) and stops its running
attempt by the same stages; cancelling a batch cancels every live task.
"""

from __future__ import annotations

from typing import Literal

from llmo.brain import retry, tasks
from llmo.brain.ctx import Ctx
from llmo.brain.state import Batch, TaskRun, Worker
from llmo.proto.messages import TaskCancel
from llmo.proto.states import TASK_ACTIVE


def check_attempts(cx: Ctx) -> None:
    """Timeouts, stalls and stop stages of the attempts out on workers."""
    st = cx.state
    cfg = cx.cfg
    now = cx.now
    for worker in list(st.workers.values()):
        for attempt_id, (batch_id, task_id, _) in list(worker.attempts.items()):
            batch = st.batches.get(batch_id)
            task = batch.tasks.get(task_id) if batch is not None else None
            if batch is None or task is None or task.attempt_id != attempt_id:
                worker.attempts.pop(attempt_id, None)
                continue
            if task.cancel_stage:
                if now >= task.cancel_at:
                    next_stop_stage(cx, batch, task, worker)
                continue
            if task.state == "assigned":
                if now - task.assigned_at > cfg.assign_timeout_s:
                    tasks.requeue(cx, batch, task, "never started on " + worker.name)
                continue
            if task.state != "running":
                continue
            limit = cfg.timeout_for(task.spec.task_class, task.spec.timeout_s)
            if now - task.started_at > limit:
                stop(cx, batch, task, f"timed out after {limit:.0f}s")
            elif (
                task.spec.task_class in ("llm", "brain")
                and now - task.last_progress_at > cfg.stall_s
            ):
                stop(cx, batch, task, f"stalled: no new token for {cfg.stall_s:.0f}s")


def stop(cx: Ctx, batch: Batch, task: TaskRun, why: str) -> None:
    """Abort an attempt (SIGTERM to its group); the kill follows after the grace."""
    if task.cancel_stage or not task.attempt_id:
        return
    task.cancel_stage = "abort"
    task.cancel_at = cx.now + cx.cfg.grace_s
    task.cancel_why = why
    cx.send(cancel_msg(batch, task, "abort", why))
    cx.publish(batch, "task_aborting", task, reason=why)


def next_stop_stage(cx: Ctx, batch: Batch, task: TaskRun, worker: Worker) -> None:
    if task.cancel_stage == "abort":
        task.cancel_stage = "kill"
        task.cancel_at = cx.now + cx.cfg.kill_grace_s
        cx.send(cancel_msg(batch, task, "kill", task.cancel_why))
        cx.publish(batch, "task_killing", task, reason=task.cancel_why)
        return
    # killed and still no answer: write the attempt off
    worker.attempts.pop(task.attempt_id, None)
    task.cancel_stage = ""
    if task.state in TASK_ACTIVE:
        tasks.start(cx, batch, task)
        retry.attempt_failed(
            cx, batch, task, reason="killed", error=f"{task.cancel_why}; no answer after kill"
        )


def cancel_msg(batch: Batch, task: TaskRun, mode: Literal["abort", "kill"], why: str) -> TaskCancel:
    return TaskCancel(
        dst=task.worker,
        batch_id=batch.id,
        task_id=task.id,
        attempt_id=task.attempt_id,
        mode=mode,
        reason=why,
    )


def cancel_task(cx: Ctx, batch: Batch, task: TaskRun, why: str) -> None:
    """Cancel one live task; a running attempt is aborted (then killed after the grace)."""
    if task.state in TASK_ACTIVE and task.attempt_id and not task.cancel_stage:
        task.cancel_stage = "abort"
        task.cancel_at = cx.now + cx.cfg.grace_s
        task.cancel_why = why
        cx.send(cancel_msg(batch, task, "abort", why))
    tasks.move(cx, batch, task, "cancel")
    task.finished_at = cx.now
    cx.publish(batch, "task_cancelled", task, reason=why)


def cancel_batch(cx: Ctx, batch: Batch, why: str) -> None:
    """Running attempts aborted (then killed), everything else skipped; state cancelled."""
    batch.end_reason = f"cancelled: {why}"
    for task in batch.tasks.values():
        if task.state in tasks.LIVE_STATES:
            cancel_task(cx, batch, task, f"batch cancelled: {why}")
    tasks.end_batch(cx, batch, event="cancel")
