"""Spent attempts that failed: retry with backoff, or fail the task for good.

Theory of operation
-------------------
An attempt is spent when it starts (or, if its start was never heard, when
its result arrives). A failed attempt is retried after
``backoff_base_s * 2**(n-1)`` seconds until ``max_attempts`` are spent; then
the task fails for good and its dependents are skipped. A refusal on policy
grounds, one past ``max_refusals``, or a rejection (exit 65: the input is
wrong, so another attempt would give the same answer) is final at once.

An attempt lost with its worker (the worker went down or stopped running
it) is not spent: the task goes back to its queue, unless it has taken down
``max_lost_workers`` workers, when it fails as a poison task.
"""

from __future__ import annotations

from llmo.brain import tasks
from llmo.brain.ctx import Ctx, cut
from llmo.brain.state import Batch, TaskRun


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
    if task.attempts >= cx.cfg.max_attempts or reason in ("refused", "policy", "rejected"):
        tasks.fail(cx, batch, task, error, attempts=task.attempts, exit_code=exit_code)
        return
    worker = task.worker
    tasks.free_attempt(cx, worker, task.attempt_id)
    tasks.clear_attempt(task)
    delay = cx.cfg.backoff(task.attempts)
    tasks.delay_until(cx, batch, task, cx.now + delay, cut(error, 100), worker=worker)


def lose(cx: Ctx, batch: Batch, task: TaskRun, why: str) -> None:
    """The attempt's worker went away: requeue without spending, unless it is poison.

    The attempt and its worker are remembered: if its result comes after all
    (held by the worker), ``results.late_done`` accepts it."""
    if task.attempt_id and task.worker:
        if task.lost_attempts is None:
            task.lost_attempts = {}
        task.lost_attempts[task.attempt_id] = task.worker
    task.lost_workers += 1
    if task.lost_workers >= cx.cfg.max_lost_workers:
        why = f"poison task: took down {task.lost_workers} workers ({why})"
        tasks.fail(cx, batch, task, why, reason="lost")
        return
    tasks.requeue(cx, batch, task, why)
