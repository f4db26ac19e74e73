"""Results from workers: started, progress, done and failed, matched to their attempt.

Theory of operation
-------------------
Every attempt has its own id (``<batch>:<task>:<n>``). A result counts only
when it names the task's current attempt and the task has an attempt out;
anything else is stale (a worker that came back after being declared dead,
a late answer to an aborted attempt) and is ignored, apart from freeing the
slot it held. So a task is recorded done at most once.

One exception keeps finished work from running twice: a ``TaskDone`` for an
earlier attempt of a task that is not done yet (the attempt was judged lost,
with its worker or missing from a heartbeat, and its result was held and
came late) is accepted (``late_done``): the work did finish. The task is
recorded done with that attempt, and a newer attempt that is out is aborted
and not counted. A late result never overrides a task that has ended.

A result whose start was never heard counts the attempt first. A failure
is sorted by its reason: exit code 75 (``retry_later``) and ``interrupted``
(its worker was stopping) requeue without spending an attempt (an
interrupted one does not count toward a poison task either), exit code 65
(``rejected``: the input is wrong, as a validator says of a candidate) fails
the task at once without retries, a lost attempt
is ``retry.lose``, a refusal by a worker gives the attempt back up to
``max_refusals``; anything else is a spent attempt for
``retry.attempt_failed``.
"""

from __future__ import annotations

from llmo.brain import retry, tasks
from llmo.brain.ctx import Ctx, cut
from llmo.brain.state import Batch, TaskRun
from llmo.proto.messages import Ack, TaskCancel, TaskDone, TaskFailed, TaskProgress, TaskStarted
from llmo.proto.states import TASK_ACTIVE
from llmo.proto.vocab import EXIT_REJECTED, EXIT_RETRY_LATER


def current(
    cx: Ctx, msg: TaskStarted | TaskProgress | TaskDone | TaskFailed
) -> tuple[Batch, TaskRun] | None:
    """The batch and task a result is for, or None (after freeing its slot) if stale."""
    batch = cx.state.batches.get(msg.batch_id)
    task = batch.tasks.get(msg.task_id) if batch is not None else None
    if (
        batch is None
        or task is None
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


def on_started(cx: Ctx, msg: TaskStarted) -> None:
    found = current(cx, msg)
    if found is not None:
        tasks.start(cx, *found)


def on_progress(cx: Ctx, msg: TaskProgress) -> None:
    found = current(cx, msg)
    if found is None:
        return
    batch, task = found
    tasks.start(cx, batch, task)
    if msg.tokens > task.tokens:
        task.last_progress_at = cx.now
    task.tokens = msg.tokens
    task.tok_s = msg.tok_s


def acknowledge(cx: Ctx, msg: TaskDone | TaskFailed) -> None:
    """Tell the worker its final result is in hand, whatever the brain made of it.

    Like every command the ``Ack`` goes out only after the journal holds the
    event, so a worker that has it may forget the result; a worker without
    it sends the result again, and a copy is acknowledged and ignored.
    """
    if msg.src:
        cx.send(Ack(dst=msg.src, reply_to=msg.id))


def on_done(cx: Ctx, msg: TaskDone) -> None:
    acknowledge(cx, msg)
    found = late_done(cx, msg) or current(cx, msg)
    if found is None:
        return
    batch, task = found
    tasks.start(cx, batch, task)
    task.exit_code = msg.exit_code
    task.duration_s = msg.duration_s or (cx.now - task.started_at)
    task.tokens = msg.tokens or task.tokens
    task.tok_s = msg.tok_s or task.tok_s
    tasks.succeed(cx, batch, task, exit_code=msg.exit_code, duration_s=task.duration_s)


LATE_STATES = frozenset({"ready", "delayed", *TASK_ACTIVE})


def late_done(cx: Ctx, msg: TaskDone) -> tuple[Batch, TaskRun] | None:
    """A finished earlier attempt of a task not yet done: take it over as the task's attempt.

    The attempt must be one the brain judged lost (``retry.lose``), and the
    result must come from the worker it was given to. A newer attempt that is
    out is aborted and given back (it is not spent).
    """
    st = cx.state
    batch = st.batches.get(msg.batch_id)
    task = batch.tasks.get(msg.task_id) if batch is not None else None
    if batch is None or task is None or batch.state != "running" or msg.src not in st.workers:
        return None
    lost = task.lost_attempts
    if not lost or lost.get(msg.attempt_id) != msg.src or task.state not in LATE_STATES:
        return None
    del lost[msg.attempt_id]
    newer = task.attempt_id
    if task.state == "delayed":
        tasks.move(cx, batch, task, "due")  # its entry in the backoff heap is skipped
    elif task.state in TASK_ACTIVE:
        worker, started = task.worker, bool(task.started_at)
        cx.send(
            TaskCancel(
                dst=worker,
                batch_id=batch.id,
                task_id=task.id,
                attempt_id=newer,
                mode="abort",
                reason=f"attempt {msg.attempt_id} already finished the task",
            )
        )
        tasks.free_attempt(cx, worker, newer)
        if started:
            task.attempts -= 1  # the newer attempt is not spent: the task is done
        tasks.clear_attempt(task)
        tasks.move(cx, batch, task, "requeue")  # to ready, from where it succeeds
    cx.log(
        "info",
        f"accepted the late result of attempt {msg.attempt_id} from {msg.src}"
        + (f"; attempt {newer} is aborted" if newer else ""),
    )
    task.attempt_id = msg.attempt_id
    task.worker = msg.src
    task.attempts += 1  # the finished attempt was given back when it was judged lost
    return batch, task


def on_failed(cx: Ctx, msg: TaskFailed) -> None:
    acknowledge(cx, msg)
    found = current(cx, msg)
    if found is None:
        return
    batch, task = found
    reason = msg.reason
    if reason == "exit" and msg.exit_code == EXIT_RETRY_LATER:
        reason = "retry_later"
    rejected = reason == "exit" and msg.exit_code == EXIT_REJECTED
    cx.publish(
        batch,
        "task_failed",
        task,
        reason="rejected" if rejected else reason,
        exit_code=msg.exit_code,
        error=cut(msg.error or msg.log_tail),
    )
    if reason == "retry_later":
        tasks.requeue(cx, batch, task, "exit 75: retry later", delay=cx.cfg.retry_later_s)
        return
    if reason == "interrupted":  # its worker stopped: neither spent nor held against the task
        tasks.requeue(cx, batch, task, f"interrupted: {msg.src} stopped")
        return
    if reason == "lost":
        retry.lose(cx, batch, task, f"worker {msg.src} lost the attempt")
        return
    if reason == "refused":
        task.refusals += 1
        if task.refusals <= cx.cfg.max_refusals:
            why = f"refused by {msg.src}: {cut(msg.error, 100)}"
            tasks.requeue(cx, batch, task, why, delay=cx.cfg.backoff(task.refusals))
            return
    elif reason != "policy":  # a policy refusal is final: no attempt ran, none is retried
        tasks.start(cx, batch, task)  # counts the attempt if its start was never heard
    error = msg.error or (f"exit code {msg.exit_code}" if msg.exit_code is not None else reason)
    if rejected:
        error = f"rejected (exit {EXIT_REJECTED}, not retried): {error}"
    if task.cancel_why:
        error = f"{task.cancel_why}; {error}"
    retry.attempt_failed(
        cx,
        batch,
        task,
        reason="rejected" if rejected else reason,
        error=error,
        exit_code=msg.exit_code,
        log_tail=msg.log_tail,
        duration_s=msg.duration_s,
    )
