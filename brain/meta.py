"""Meta tasks: runtime control steps of a plan, turned into control messages.

Theory of operation
-------------------
A ``meta`` task never runs on a worker. When dispatch reaches it, its
command's first word picks what to do (``proto.vocab.META_LOADS`` and
``META_UNLOADS``; the value says whether it is about split, multi-GPU
workers). A load that some worker already has hot succeeds at once;
otherwise it waits in the queue until a worker can load the model (see
``models.can_load``), then runs until that worker reports the model hot
(``models.loaded``) or failed. An unload tells every matching worker to
unload and succeeds at once. An unknown command, or a load with no model
named or configured, fails the task.
"""

from __future__ import annotations

from llmo.brain import models, tasks
from llmo.brain.ctx import Ctx
from llmo.brain.state import Batch, TaskRun
from llmo.proto.vocab import META_LOADS, META_UNLOADS


def run_meta(cx: Ctx, batch: Batch, task: TaskRun) -> bool:
    """Turn a ready meta task into control messages. False: not now, keep it queued."""
    spec = task.spec
    command = spec.command.split(maxsplit=1)[0] if spec.command.strip() else ""
    workers = list(cx.state.workers.values())
    if command in META_LOADS:
        split = META_LOADS[command] or spec.executor == "brain"
        model = spec.llm_model or (cx.cfg.brain_model if split else cx.cfg.default_model)
        if not model:
            tasks.fail(cx, batch, task, f"{command}: no model named and no default configured")
            return True
        for worker in workers:
            if (
                worker.alive
                and worker.model_state == "hot"
                and worker.model == model
                and split == (len(worker.gpus) >= 2 or worker.role == "brain")
            ):
                tasks.succeed(cx, batch, task, model=model, worker=worker.name)
                return True
        target = next((w for w in workers if models.can_load(cx, w, model, split=split)), None)
        if target is None:
            return False
        tasks.move(cx, batch, task, "control")
        task.attempts += 1
        task.worker = ""  # no slot is held: the load is the worker's own
        task.started_at = cx.now
        target.load_task = (batch.id, task.id)
        models.load(cx, target, model, f"meta task {task.id}")
        cx.publish(batch, "task_started", task, worker=target.name)
        return True
    if command in META_UNLOADS:
        split = META_UNLOADS[command] or spec.executor == "brain"
        names = []
        for worker in workers:
            if not worker.alive or split != (len(worker.gpus) >= 2 or worker.role == "brain"):
                continue
            if worker.model_state in ("hot", "loading") or worker.loading:
                models.unload(cx, worker, f"meta task {task.id}: {command}")
                names.append(worker.name)
        tasks.succeed(cx, batch, task, workers=names)
        return True
    tasks.fail(cx, batch, task, f"unknown meta command {command!r}")
    return True
