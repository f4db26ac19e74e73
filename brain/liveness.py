"""Workers going away: silence past expiry, the broker's word, heartbeats that disagree.

Theory of operation
-------------------
A worker that the broker reports down, or that is silent past its expiry
(interval x ``HEARTBEAT_LIVENESS``), loses its attempts to the queue at
once, without spending them (``retry.lose``), and any model load it had
pending. A heartbeat lists the attempts the worker runs: one the brain gave
it and that is missing past ``lost_grace_s`` is lost the same way; one the
brain does not expect (a leftover of an attempt it gave up on) is aborted.
"""

from __future__ import annotations

from llmo.brain import models, retry
from llmo.brain.ctx import Ctx
from llmo.brain.state import Worker, advance
from llmo.proto.messages import TaskCancel
from llmo.proto.states import TASK_ACTIVE
from llmo.proto.vocab import HEARTBEAT_LIVENESS


def check_silent(cx: Ctx) -> None:
    """Workers silent past their expiry are down."""
    now = cx.now
    for worker in list(cx.state.workers.values()):
        if worker.alive and now - worker.last_seen > worker.interval_s * HEARTBEAT_LIVENESS:
            worker_down(cx, worker, f"silent for {now - worker.last_seen:.1f}s")


def worker_down(cx: Ctx, worker: Worker, why: str) -> None:
    if advance(worker, "down") is None:
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
        if (
            batch is not None
            and task is not None
            and task.attempt_id == attempt_id
            and task.state in TASK_ACTIVE
        ):
            retry.lose(cx, batch, task, why)
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
        if (
            batch is None
            or task is None
            or task.attempt_id != attempt_id
            or task.state not in TASK_ACTIVE
        ):
            if cx.now - (task.cancel_at if task else 0.0) > grace:
                worker.attempts.pop(attempt_id, None)  # a stopped attempt has ended
            continue
        if cx.now - task.assigned_at > grace:
            retry.lose(cx, batch, task, f"worker {worker.name} no longer runs the attempt")
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
