"""The state as snapshot records, for ``SnapshotReply`` (monitors, ``llmo status``).

Each record of ``proto.messages`` (``WorkerInfo``, ``BatchInfo``, ``TaskInfo``,
``GoalInfo``, ``GpuGauges``) is built here and nowhere else; RUN_SUMMARY's
goal is the same ``GoalInfo``.

Tasks are listed for one batch when the request names it, else for running
batches only, at most ``MAX_TASKS`` (live tasks first) so a reply stays far
below the message size limit.
"""

from __future__ import annotations

from typing import Any

from llmo.brain.state import Batch, BrainState, GoalRun, TaskRun, Worker
from llmo.proto.messages import BatchInfo, GoalInfo, GpuGauges, TaskInfo, WorkerInfo
from llmo.proto.states import TASK_TERMINAL

MAX_TASKS = 20_000


def worker_view(worker: Worker) -> WorkerInfo:
    return WorkerInfo(
        name=worker.name,
        role=worker.role,
        state="down" if worker.state == "down" else worker.model_state,
        presence=worker.state,
        model=worker.model,
        loading=worker.loading,
        gpus=tuple(worker.gpus),
        slots=worker.slots,
        slots_free=max(0, worker.free_slots()),
        vram_budget_mb=worker.vram_budget_mb,
        vram_used_mb=worker.vram_used_mb,
        attempts=tuple(sorted(worker.attempts)),
        last_seen=worker.last_seen,
        tok_s=worker.tok_s,
        constraint=worker.constraint,
        gpu=GpuGauges(**worker.gauges) if worker.gauges else None,
        endpoint=worker.endpoint,
        host=worker.host,
        pid=worker.pid,
        load_failed=worker.failed_load[0],
        load_error=worker.failed_load[1],
    )


def gauges(telemetry: Any) -> dict[str, Any]:
    """A worker's telemetry in a few figures (the fields of ``GpuGauges``):
    hottest GPU, VRAM and power summed."""
    gpus = telemetry.gpus

    def figures(name: str) -> list[Any]:
        return [getattr(g, name) for g in gpus if getattr(g, name) is not None]

    temps, utils = figures("temperature_c"), figures("util_percent")
    used, total, power = figures("vram_used_mb"), figures("vram_total_mb"), figures("power_w")
    return {
        "available": telemetry.gpu_available,
        "note": telemetry.note,
        "temperature_c": max(temps) if temps else None,
        "util_percent": max(utils) if utils else None,
        "vram_used_mb": sum(used) if used else None,
        "vram_total_mb": sum(total) if total else None,
        "power_w": round(sum(power), 1) if power else None,
        "cpu_percent": telemetry.cpu_percent,
        "cpu_temperature_c": telemetry.cpu_temperature_c,
        "mem_used_mb": telemetry.mem_used_mb,
        "mem_total_mb": telemetry.mem_total_mb,
    }


def goal_view(goal: GoalRun) -> GoalInfo:
    return GoalInfo(
        state=goal.state,
        target=goal.target,
        tolerance=goal.tolerance,
        succeeded=goal.succeeded,
        tried=goal.tried,
        cap=goal.cap,
        rounds=goal.round,
        round_cap=goal.round_cap,
        reason=goal.reason,
    )


def batch_view(batch: Batch) -> BatchInfo:
    return BatchInfo(
        id=batch.id,
        plan=batch.plan,
        plan_path=batch.plan_path,
        history_path=batch.history_path,
        state=batch.state,
        priority=batch.priority,
        priority_name=batch.priority_name,
        created_at=batch.created_at,
        finished_at=batch.finished_at or None,
        tasks=len(batch.tasks),
        counts=counts(batch),
        tokens=generated_tokens(batch),
        goal=goal_view(batch.goal) if batch.goal is not None else None,
        config=dict(batch.config),
    )


def generated_tokens(batch: Batch) -> int:
    """The tokens a batch's succeeded llm and brain tasks generated: the numerator of
    its tok/s (``proto.rates``), in snapshots and RUN_SUMMARY alike."""
    return sum(
        task.tokens
        for task in batch.tasks.values()
        if task.state == "done" and task.spec.task_class in ("llm", "brain")
    )


def counts(batch: Batch) -> dict[str, int]:
    """Task state -> count, states with none left out."""
    return {k: v for k, v in sorted(batch.counts.items()) if v}


def task_view(batch: Batch, task: TaskRun) -> TaskInfo:
    return TaskInfo(
        batch_id=batch.id,
        id=task.id,
        state=task.state,
        task_class=task.spec.task_class,
        executor=task.spec.executor,
        attempts=task.attempts,
        worker=task.worker,
        attempt_id=task.attempt_id,
        exit_code=task.exit_code,
        started_at=task.started_at or None,
        finished_at=task.finished_at or None,
        error=task.error,
        template=task.parent,
        deps=() if task.parent else task.deps,
    )


def snapshot(
    state: BrainState, batch_id: str = ""
) -> tuple[list[WorkerInfo], list[BatchInfo], list[TaskInfo]]:
    workers = [worker_view(w) for w in state.workers.values()]
    batches = [batch_view(b) for b in state.batches.values()]
    if batch_id:
        chosen = [state.batches[batch_id]] if batch_id in state.batches else []
    else:
        chosen = [b for b in state.batches.values() if b.state == "running"]
    live: list[TaskInfo] = []
    ended: list[TaskInfo] = []
    for batch in chosen:
        for task in batch.tasks.values():
            if task.state in TASK_TERMINAL:
                if len(ended) < MAX_TASKS:
                    ended.append(task_view(batch, task))
            elif len(live) < MAX_TASKS:
                live.append(task_view(batch, task))
    return workers, batches, (live + ended)[:MAX_TASKS]
