"""Workers going away: silence past expiry, the broker's word, heartbeats that disagree.

Theory of operation
-------------------
A worker that the broker reports down, or that is silent past its expiry
(interval x ``HEARTBEAT_LIVENESS``), loses its attempts to the queue at
once, without spending them (``retry.lose``), and any model load it had
pending. A heartbeat lists the attempts the worker runs: one the brain gave
it and that is missing past ``lost_grace_s`` is lost the same way; one the
brain does not expect (a leftover of an attempt it gave up on) is aborted.

The brain judges only silence it was awake to hear. When its own loop stood
still for longer than a worker's expiry (the process was paused, the host
slept, the clock jumped: seen as the gap between two consecutive events,
whose times are journaled, so replays decide alike), heartbeats that were
queued meanwhile may not have reached it yet. So after such a gap every
worker's silence counts from the end of the gap, less all but two intervals
of its expiry (the heartbeats it sends meanwhile, and the brain's own return
to the broker, have time to arrive), and no attempt is judged lost by a
heartbeat's ``active`` list until ``hush_until``. After a restart
(``Resumed``) that hush lasts a whole expiry: a worker that finished an
attempt while the brain was down holds the result and sends it again, and
its first heartbeat may arrive before it.
"""

from __future__ import annotations

from llmo.brain import models, retry
from llmo.brain.ctx import Ctx
from llmo.brain.state import Worker, advance
from llmo.proto.messages import TaskCancel
from llmo.proto.states import TASK_ACTIVE
from llmo.proto.vocab import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS

JUMP_INTERVALS = 2  # heartbeat intervals a worker has to be heard after the brain stood still


def check_silent(cx: Ctx) -> None:
    """Workers silent past their expiry are down."""
    now = cx.now
    for worker in list(cx.state.workers.values()):
        if worker.alive and now - worker.last_seen > worker.interval_s * HEARTBEAT_LIVENESS:
            worker_down(cx, worker, f"silent for {now - worker.last_seen:.1f}s")


def check_gap(cx: Ctx, gap: float) -> None:
    """After the loop stood still ``gap`` seconds, give heartbeats time to arrive."""
    alive = [w for w in cx.state.workers.values() if w.alive]
    if not alive or gap <= min(w.interval_s for w in alive) * HEARTBEAT_LIVENESS:
        return
    now = cx.now
    for worker in alive:
        worker.last_seen = max(
            worker.last_seen, now - worker.interval_s * (HEARTBEAT_LIVENESS - JUMP_INTERVALS)
        )
    window = max(w.interval_s for w in alive) * JUMP_INTERVALS
    cx.state.hush_until = max(cx.state.hush_until, now + window)
    cx.log(
        "warning",
        f"the brain stood still for {gap:.1f}s (paused, or the clock jumped): "
        f"no worker is judged by its silence before {window:.1f}s of fresh heartbeats",
    )


def hush_after_restart(cx: Ctx) -> None:
    """Held results get a whole expiry to arrive before an assigned attempt is lost."""
    intervals = [w.interval_s for w in cx.state.workers.values() if w.alive]
    window = max(intervals, default=HEARTBEAT_INTERVAL_S) * HEARTBEAT_LIVENESS
    cx.state.hush_until = max(cx.state.hush_until, cx.now + window)


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


def check_heartbeat_active(
    cx: Ctx, worker: Worker, active: frozenset[str], held: frozenset[str]
) -> None:
    """Compare what a worker runs with what the brain gave it. Of ``active``, those
    in ``held`` have ended and their result waits for the brain's ack: such an
    attempt the brain no longer expects takes no slot and needs no cancel."""
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
        if cx.now - task.assigned_at > grace and cx.now >= cx.state.hush_until:
            retry.lose(cx, batch, task, f"worker {worker.name} no longer runs the attempt")
    foreign = tuple(sorted(a for a in active if a not in worker.attempts and a not in held))
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
