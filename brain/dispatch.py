"""Dispatch by credit: match ready tasks to workers within what they announced.

Theory of operation
-------------------
Workers announce capacity (slots, VRAM budget and use, role, model state)
in registration and heartbeats; the brain adds the attempts it has handed out
since, so it never assigns past a worker's credit between two heartbeats.

Ready tasks wait in per-batch queues keyed by the kind of worker they need
(``brain.tasks.queue_key``), so a task that cannot be placed (an ``llm`` task
with no hot worker) never blocks a ``cpu`` task behind it. Batches are served
by priority, then age; ``meta`` (runtime control) queues of every batch go
before any other work. Placement:

* ``executor: brain`` (any class but ``meta``) -> a worker with role
  ``brain``, hot (or cold when no brain model is configured to load);
* ``llm`` -> a role-``worker`` worker reporting ``hot`` with the wanted model
  (``split_gpu`` needs two or more GPUs); never one that is still loading;
* ``script`` -> a cold worker whose free VRAM budget covers the estimate;
* ``cpu`` -> any worker with a free slot, constrained ones included;
* constrained and draining workers get nothing but ``cpu`` (draining: nothing).

Among eligible workers the one with the most free credit wins (ties by the
order workers first appeared), which spreads work without randomness. An
``llm`` task's credit is the worker's announced LLM sequences (``llm_slots``,
its hot model batches that many) not yet used by ``llm`` attempts, plus its
free shell slots: a hot worker runs more LLM tasks than it has shell slots
(``vocab.slot_free``, the rule the worker admits by).
"""

from __future__ import annotations

from llmo.brain import meta, tasks
from llmo.brain.ctx import Ctx
from llmo.brain.state import Batch, TaskRun, Worker
from llmo.proto.messages import TaskAssign
from llmo.proto.vocab import LLM_CACHE_ENV, LLM_CACHE_KEY, slot_free

WORKER_BUSY_STATES = frozenset({"draining", "down"})


def wanted_model(cx: Ctx, task: TaskRun) -> str:
    spec = task.spec
    if spec.task_class == "llm":
        return spec.llm_model or cx.cfg.default_model
    if spec.task_class == "brain" or spec.executor == "brain":
        return spec.llm_model or cx.cfg.brain_model
    return ""


def eligible(cx: Ctx, worker: Worker, task: TaskRun) -> bool:
    spec = task.spec
    cls = spec.task_class
    reported = worker.model_state
    if reported in WORKER_BUSY_STATES:
        return False
    if cls == "brain" or spec.executor == "brain":
        # Whatever its class, an executor-brain task runs where the brain model
        # is, with its BRAIN_* endpoint once that model is hot.
        if worker.role != "brain":
            return False
        if cls == "cpu" and reported == "constrained":
            return True
        if reported == "hot":
            model = wanted_model(cx, task)
            return not model or not worker.model or worker.model == model
        return reported in ("cold", "") and not cx.cfg.brain_model and not worker.loading
    if cls == "cpu":
        return True
    if reported == "constrained":
        return False
    if worker.role != "worker":
        return False
    if cls == "llm":
        if reported != "hot" or worker.loading:
            return False
        model = wanted_model(cx, task)
        if model and worker.model != model:
            return False
        return spec.llm_placement != "split_gpu" or len(worker.gpus) >= 2
    if cls == "script":
        return (
            reported in ("cold", "")
            and not worker.loading
            and worker.free_vram() >= vram_of(cx, task)
        )
    return False


def vram_of(cx: Ctx, task: TaskRun) -> int:
    spec = task.spec
    if spec.task_class != "script":
        return 0
    if spec.vram_estimate_mb is not None:
        return int(spec.vram_estimate_mb)
    return cx.cfg.script_vram_mb


def dispatch(cx: Ctx) -> None:
    st = cx.state
    st.dispatch_due = False
    batches = st.active_batches()
    if not batches:
        return
    for batch in batches:  # runtime control first
        queue = batch.ready.get("meta")
        while queue:
            task = batch.tasks[queue[0]]
            if task.state != "ready":
                queue.popleft()
                continue
            if not meta.run_meta(cx, batch, task):
                break
            queue.popleft()
    up: list[Worker] | None = None
    for batch in batches:
        for key, queue in batch.ready.items():
            if key == "meta" or not queue:
                continue
            if up is None:
                up = [w for w in st.workers.values() if w.state == "up"]
            while queue:
                task = batch.tasks[queue[0]]
                if task.state != "ready":
                    queue.popleft()
                    continue
                worker = pick(cx, up, task)
                if worker is None:
                    break
                queue.popleft()
                assign(cx, batch, task, worker)


def credit(cx: Ctx, worker: Worker, task: TaskRun) -> int:
    """Free credit on ``worker`` for ``task`` (> 0: it fits)."""
    llm_used = 0
    batches = cx.state.batches
    for batch_id, task_id, _ in worker.attempts.values():
        batch = batches.get(batch_id)
        other = batch.tasks.get(task_id) if batch is not None else None
        if other is not None and other.spec.task_class == "llm":
            llm_used += 1
    return slot_free(
        llm=task.spec.task_class == "llm",
        slots=worker.slots,
        llm_slots=worker.llm_slots,
        llm_used=llm_used,
        other_used=len(worker.attempts) + len(worker.foreign) - llm_used,
    )


def pick(cx: Ctx, workers: list[Worker], task: TaskRun) -> Worker | None:
    """The eligible worker with the most free credit (the first of equals)."""
    best = None
    best_slots = 0
    for worker in workers:
        slots = credit(cx, worker, task)
        if slots > best_slots and eligible(cx, worker, task):
            best = worker
            best_slots = slots
    return best


def attempt_env(batch: Batch, task: TaskRun) -> dict[str, str]:
    """The task's values, and the batch's result cache policy when it sets one."""
    env = dict(task.env) if task.env else {}
    policy = batch.config.get(LLM_CACHE_KEY)
    if isinstance(policy, str) and policy:
        env.setdefault(LLM_CACHE_ENV, policy.strip().lower())
    return env


def assign(cx: Ctx, batch: Batch, task: TaskRun, worker: Worker) -> None:
    if not tasks.move(cx, batch, task, "assign"):
        return
    task.seq += 1
    attempt_id = f"{batch.attempt_prefix or batch.id}:{task.id}:{task.seq}"
    task.attempt_id = attempt_id
    task.worker = worker.name
    task.assigned_at = cx.now
    vram_mb = vram_of(cx, task)
    worker.attempts[attempt_id] = (batch.id, task.id, vram_mb)
    spec = task.spec
    model = wanted_model(cx, task)
    if spec.task_class == "llm" and model:
        cx.state.llm_demand_at[model] = cx.now
    cfg = cx.cfg
    cx.send(
        TaskAssign(
            dst=worker.name,
            batch_id=batch.id,
            task_id=task.id,
            attempt_id=attempt_id,
            task_class=spec.task_class,
            executor=spec.executor,
            command=task.command,
            plan_path=batch.plan_path,
            batch_path=batch.history_path,
            log_path=f"{batch.history_path}/logs/{task.id}.log",
            env=attempt_env(batch, task),
            timeout_s=cfg.timeout_for(spec.task_class, spec.timeout_s),
            grace_s=cfg.grace_s,
            vram_mb=vram_mb,
            model=model,
        )
    )
    cx.publish(batch, "task_assigned", task, jsonl=False)
