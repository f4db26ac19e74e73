"""Results and failures: attempts, retries with backoff, timeouts, lost workers, cancel.

Theory of operation
-------------------
Every attempt has its own id (``<batch>:<task>:<n>``). A result counts only
when it names the task's current attempt and the task has an attempt out;
anything else is stale (a worker that came back after being declared dead,
a late answer to an aborted attempt) and is ignored, apart from freeing the
slot it held. So a task is recorded done at most once.

An attempt is spent when it starts (or, if its start was never heard, when
its result arrives). A failed attempt is retried after
``backoff_base_s * 2**(n-1)`` seconds until ``max_attempts`` are spent; then
the task fails for good and its dependents are skipped. Exit code 75
(``retry_later``) requeues without spending an attempt. A refusal by a
worker gives the attempt back too, up to ``max_refusals``.

Timers run on ``Tick``: an attempt past its timeout, or an ``llm`` attempt
with no new token for ``stall_s``, is aborted (``TaskCancel`` abort: SIGTERM
to its process group), killed ``grace_s`` later, and written off as failed
``kill_grace_s`` after that if the worker never answers. Stopping is staged
once per attempt: a second reason to abort never restarts the stages.

A worker that the broker reports down, or that is silent past its expiry
(interval x ``HEARTBEAT_LIVENESS``), loses its attempts to the queue at
once, without spending them; a task that has taken down
``max_lost_workers`` workers fails as a poison task.
"""

from __future__ import annotations

from llmo.brain import models, tasks
from llmo.brain.ctx import Ctx, cut
from llmo.brain.state import TASK_ACTIVE, Batch, TaskRun, Worker, advance
from llmo.proto.messages import TaskCancel, TaskDone, TaskFailed, TaskProgress, TaskStarted
from llmo.proto.vocab import EXIT_RETRY_LATER, HEARTBEAT_LIVENESS

SPENDING_REASONS = frozenset({"exit", "aborted", "killed", "spawn_error"})


def current(
    cx: Ctx, msg: TaskStarted | TaskProgress | TaskDone | TaskFailed
) -> tuple[Batch, TaskRun] | None:
    """The batch and task a result is for, or None (after freeing its slot) if stale."""
    batch = cx.state.batches.get(msg.batch_id)
    task = batch.tasks.get(msg.task_id) if batch is not None else None
    if (
        task is None
        or task.attempt_id != msg.attempt_id
        or task.state not in TASK_ACTIVE
        or (task.worker and msg.src and task.worker != msg.src)
    ):
        if not isinstance(msg, TaskStarted | TaskProgress):
            # Free the slot only when the worker holds that attempt for that very
            # task: a result naming another task must not release a live attempt.
            worker = cx.state.workers.get(msg.src)
            held = worker.attempts.get(msg.attempt_id) if worker is not None else None
            if held is not None and held[:2] == (msg.batch_id, msg.task_id):
                tasks.free_attempt(cx, msg.src, msg.attempt_id)
            cx.log("info", f"ignored a stale {msg.TYPE.value} for attempt {msg.attempt_id}")
        return None
    return batch, task


def start(cx: Ctx, batch: Batch, task: TaskRun) -> None:
    if task.state != "assigned":
        return
    tasks.move(cx, batch, task, "start")
    task.started_at = task.last_progress_at = cx.now
    if not task.first_started_at:
        task.first_started_at = cx.now
    task.attempts += 1
    cx.publish(batch, "task_started", task)


def on_started(cx: Ctx, msg: TaskStarted) -> None:
    found = current(cx, msg)
    if found is not None:
        start(cx, *found)


def on_progress(cx: Ctx, msg: TaskProgress) -> None:
    found = current(cx, msg)
    if found is None:
        return
    batch, task = found
    start(cx, batch, task)
    if msg.tokens > task.tokens:
        task.last_progress_at = cx.now
    task.tokens = msg.tokens
    task.tok_s = msg.tok_s


def on_done(cx: Ctx, msg: TaskDone) -> None:
    found = current(cx, msg)
    if found is None:
        return
    batch, task = found
    start(cx, batch, task)
    task.exit_code = msg.exit_code
    task.duration_s = msg.duration_s or (cx.now - task.started_at)
    task.tokens = msg.tokens or task.tokens
    task.tok_s = msg.tok_s or task.tok_s
    tasks.succeed(cx, batch, task, exit_code=msg.exit_code, duration_s=task.duration_s)


def on_failed(cx: Ctx, msg: TaskFailed) -> None:
    found = current(cx, msg)
    if found is None:
        return
    batch, task = found
    reason = msg.reason
    if reason == "exit" and msg.exit_code == EXIT_RETRY_LATER:
        reason = "retry_later"
    cx.publish(
        batch,
        "task_failed",
        task,
        reason=reason,
        exit_code=msg.exit_code,
        error=cut(msg.error or msg.log_tail),
    )
    if reason == "retry_later":
        tasks.requeue(cx, batch, task, "exit 75: retry later", delay=cx.cfg.retry_later_s)
        return
    if reason == "lost":
        lose(cx, batch, task, f"worker {msg.src} lost the attempt")
        return
    if reason == "refused":
        task.refusals += 1
        if task.refusals <= cx.cfg.max_refusals:
            why = f"refused by {msg.src}: {cut(msg.error, 100)}"
            tasks.requeue(cx, batch, task, why, delay=cx.cfg.backoff(task.refusals))
            return
    elif reason != "policy":  # a policy refusal is final: no attempt ran, none is retried
        start(cx, batch, task)  # counts the attempt if its start was never heard
    error = msg.error or (f"exit code {msg.exit_code}" if msg.exit_code is not None else reason)
    if task.cancel_why:
        error = f"{task.cancel_why}; {error}"
    attempt_failed(
        cx,
        batch,
        task,
        reason=reason,
        error=error,
        exit_code=msg.exit_code,
        log_tail=msg.log_tail,
        duration_s=msg.duration_s,
    )


def attempt_failed(
    cx: Ctx,
    batch: Batch,
    task: TaskRun,
    *,
    reason: str,
    error: str,
    exit_code: int | None = None,
    log_tail: str = "",
    duration_s: float = 0.0,
) -> None:
    """A spent attempt failed: retry with backoff, or fail the task for good."""
    if task.failures is None:
        task.failures = []
    task.failures.append(
        {
            "attempt_id": task.attempt_id,
            "worker": task.worker,
            "reason": reason,
            "exit_code": exit_code,
            "error": cut(error),
            "log_tail": log_tail[-2000:],
        }
    )
    task.exit_code = exit_code
    task.error = cut(error)
    task.duration_s = duration_s or (cx.now - task.started_at if task.started_at else 0.0)
    if task.attempts >= cx.cfg.max_attempts or reason in ("refused", "policy"):
        tasks.fail(cx, batch, task, error, attempts=task.attempts, exit_code=exit_code)
        return
    worker = task.worker
    tasks.free_attempt(cx, worker, task.attempt_id)
    tasks.clear_attempt(task)
    delay = cx.cfg.backoff(task.attempts)
    tasks.delay_until(cx, batch, task, cx.now + delay, cut(error, 100), worker=worker)


def lose(cx: Ctx, batch: Batch, task: TaskRun, why: str) -> None:
    """The attempt's worker went away: requeue without spending, unless it is poison."""
    task.lost_workers += 1
    if task.lost_workers >= cx.cfg.max_lost_workers:
        tasks.fail(cx, batch, task, f"poison task: took down {task.lost_workers} workers ({why})")
        return
    tasks.requeue(cx, batch, task, why)


# --- workers going away -------------------------------------------------------


def worker_down(cx: Ctx, worker: Worker, why: str) -> None:
    if advance("worker", worker, "down") is None:
        return
    cx.publish(None, "worker_down", worker=worker.name, reason=why)
    cx.log("warning", f"worker {worker.name} is down: {why}")
    lose_attempts(cx, worker, f"worker {worker.name} down: {why}")
    models.worker_gone(cx, worker)


def lose_attempts(cx: Ctx, worker: Worker, why: str) -> None:
    st = cx.state
    for attempt_id, (batch_id, task_id, _) in list(worker.attempts.items()):
        batch = st.batches.get(batch_id)
        task = batch.tasks.get(task_id) if batch is not None else None
        if task is not None and task.attempt_id == attempt_id and task.state in TASK_ACTIVE:
            lose(cx, batch, task, why)
    worker.attempts.clear()
    worker.foreign = ()
    st.dispatch_due = True


def check_heartbeat_active(cx: Ctx, worker: Worker, active: frozenset[str]) -> None:
    """Compare what a worker runs with what the brain gave it."""
    st = cx.state
    grace = cx.cfg.lost_grace_s
    for attempt_id, (batch_id, task_id, _) in list(worker.attempts.items()):
        if attempt_id in active:
            continue
        batch = st.batches.get(batch_id)
        task = batch.tasks.get(task_id) if batch is not None else None
        if task is None or task.attempt_id != attempt_id or task.state not in TASK_ACTIVE:
            if cx.now - (task.cancel_at if task else 0.0) > grace:
                worker.attempts.pop(attempt_id, None)  # a stopped attempt has ended
            continue
        if cx.now - task.assigned_at > grace:
            lose(cx, batch, task, f"worker {worker.name} no longer runs the attempt")
    foreign = tuple(sorted(a for a in active if a not in worker.attempts))
    for attempt_id in foreign:
        if attempt_id not in worker.foreign:
            batch_id, task_id = split_attempt_id(attempt_id)
            cx.send(
                TaskCancel(
                    dst=worker.name,
                    batch_id=batch_id,
                    task_id=task_id,
                    attempt_id=attempt_id,
                    mode="abort",
                    reason="stale attempt: the brain no longer expects it",
                )
            )
    worker.foreign = foreign


def split_attempt_id(attempt_id: str) -> tuple[str, str]:
    head, _, _ = attempt_id.rpartition(":")
    batch_id, _, task_id = head.partition(":")
    return batch_id, task_id


# --- timers -------------------------------------------------------------------


def check_timers(cx: Ctx) -> None:
    """Liveness of workers, and timeouts, stalls and stop stages of attempts."""
    st = cx.state
    cfg = cx.cfg
    now = cx.now
    for worker in list(st.workers.values()):
        if worker.alive and now - worker.last_seen > worker.interval_s * HEARTBEAT_LIVENESS:
            worker_down(cx, worker, f"silent for {now - worker.last_seen:.1f}s")
    for worker in list(st.workers.values()):
        for attempt_id, (batch_id, task_id, _) in list(worker.attempts.items()):
            batch = st.batches.get(batch_id)
            task = batch.tasks.get(task_id) if batch is not None else None
            if task is None or task.attempt_id != attempt_id:
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
        start(cx, batch, task)
        attempt_failed(
            cx, batch, task, reason="killed", error=f"{task.cancel_why}; no answer after kill"
        )


def cancel_msg(batch: Batch, task: TaskRun, mode: str, why: str) -> TaskCancel:
    return TaskCancel(
        dst=task.worker,
        batch_id=batch.id,
        task_id=task.id,
        attempt_id=task.attempt_id,
        mode=mode,  # type: ignore[arg-type]
        reason=why,
    )


# --- cancelling a batch -------------------------------------------------------------


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
    for task in batch.tasks.values():
        if task.state in tasks.LIVE_STATES:
            cancel_task(cx, batch, task, f"batch cancelled: {why}")
    tasks.end_batch(cx, batch, event="cancel")
