"""Model load and unload decisions, and the model reports of workers.

Theory of operation
-------------------
Workers own their runtimes and report facts (``ModelStatus``, the heartbeat's
``state`` and ``model``); the brain only decides. A worker counts as hot when
it says so, and it says so only after a real test completion.

On every tick ``plan`` looks at demand: ready ``llm`` tasks of *running*
batches, per model (tasks of finished or cancelled batches never count).

* Load: a model with waiting tasks and no worker hot with it gets one load,
  on a healthy, idle, cold role-``worker`` worker that has not recently
  failed to load it, within ``max_hot``. One load at a time per model; a
  second worker is loaded only when the first is hot and the demand exceeds
  the hot workers' slots. A worker already asked to load is never asked
  again until it reports.
* Swap: when such a model has no cold worker to go to, an idle worker hot
  with a model nobody waits for is unloaded so it becomes one.
* Unload: a hot, idle worker whose model has had no demand for
  ``unload_idle_s`` (``split_unload_idle_s`` for multi-GPU workers) is told to
  unload, except for the ``default_hot`` models while the rig is idle. A
  worker whose endpoint serves requests (``Heartbeat.llm_requests``), say for
  a model an operator loaded, is not idle: neither this rule nor a swap
  unloads it, and its idle time counts from the last heartbeat that reported
  a request.
* Return to default: after ``default_idle_s`` with no running batch, the
  models in ``default_hot`` are loaded on cold workers.
* A load that fails, or reports nothing within ``load_timeout_s``, leaves
  the worker usable cold and never fails a batch; after ``max_load_failures``
  failed loads of one model, the tasks waiting for it fail with the reason.
* Unknown model: a model wanted by ready tasks that no worker offers or runs
  and no configured model (``models``, ``default_model``, ``brain_model``,
  ``default_hot``) names fails those tasks at once with a definition error
  listing the rig's models, rather than leaving them ready for ever. Nothing
  is judged before the rig has said what it has (a ``models`` setting, or
  registered workers that all announce their models), and a path (a name
  with ``/``) is never judged: a worker loads a model file by its path even
  when it was not configured.
"""

from __future__ import annotations

import collections

from llmo.brain import retry, tasks
from llmo.brain.ctx import Ctx
from llmo.brain.state import Batch, TaskRun, Worker
from llmo.proto.messages import ModelLoad, ModelStatus, ModelUnload
from llmo.proto.states import WorkerState
from llmo.proto.vocab import model_alias, model_names

UNLOAD_RESEND_S = 30.0
SWAP_MIN_HOT_S = 30.0


def load(cx: Ctx, worker: Worker, model: str, why: str) -> None:
    worker.loading = model
    worker.failed_load = ("", "")
    worker.load_since = cx.now
    cx.send(ModelLoad(dst=worker.name, model=model))
    cx.publish(None, "model_load", worker=worker.name, model=model, reason=why)


def unload(cx: Ctx, worker: Worker, why: str) -> None:
    worker.unload_sent_at = cx.now
    cx.send(ModelUnload(dst=worker.name, reason=why))
    cx.publish(None, "model_unload", worker=worker.name, model=worker.model, reason=why)


def offers(names: tuple[str, ...], model: str) -> bool:
    """Whether a worker listing ``names`` can load ``model``.

    A worker lists each configured model by every name it answers to
    (``proto.vocab.model_names``: alias and path), so a name is offered
    exactly when the worker would load it; another path to a file of the
    same name is not.
    """
    return model in names


def usable(worker: Worker) -> bool:
    return worker.state == "up" and worker.model_state not in ("constrained", "draining", "down")


def can_load(cx: Ctx, worker: Worker, model: str, *, split: bool = False) -> bool:
    if not usable(worker) or worker.loading or worker.attempts:
        return False
    if worker.model_state not in ("cold", ""):
        return False
    if split != (len(worker.gpus) >= 2 or worker.role == "brain"):
        return False
    if not split and worker.role != "worker":
        return False
    if worker.models and not offers(worker.models, model):
        return False
    failed_at = worker.load_failed.get(model)
    return failed_at is None or cx.now - failed_at >= cx.cfg.load_retry_s


def hot_count(cx: Ctx) -> int:
    return sum(
        1
        for w in cx.state.workers.values()
        if w.alive and w.role == "worker" and (w.model_state == "hot" or w.loading)
    )


def queue_model(key: str) -> str:
    """The model of an ``llm:<model>:<placement>`` ready queue (a model name may hold
    ``:`` itself, as in ``qwen2.5:7b``)."""
    return key[len("llm:") :].rpartition(":")[0]


def demand(cx: Ctx) -> collections.Counter[str]:
    """Ready llm tasks of running batches, per wanted model ('' = any)."""
    wanted: collections.Counter[str] = collections.Counter()
    for batch in cx.state.active_batches():
        for key, queue in batch.ready.items():
            if key.startswith("llm:") and queue:
                wanted[queue_model(key)] += len(queue)
    return wanted


def plan(cx: Ctx) -> None:
    st = cx.state
    cfg = cx.cfg
    now = cx.now
    workers = list(st.workers.values())
    for worker in workers:
        if worker.loading and now - worker.load_since > cfg.load_timeout_s:
            load_failed(cx, worker, worker.loading, f"no report in {cfg.load_timeout_s:.0f}s")
            unload(cx, worker, "load timed out")
    wanted = demand(cx)
    for model in wanted:
        st.llm_demand_at[model] = now
    for worker in workers:  # models in use count as demanded
        if worker.model_state == "hot" and worker.attempts:
            st.llm_demand_at[worker.model] = now
    known = rig_models(cx) if wanted else None
    for model, count in sorted(wanted.items()):
        if model and known is not None and model not in known and "/" not in model:
            fail_waiting(cx, model, unknown_model(model, known))
            continue
        if not model:
            if not any(w.model_state == "hot" and w.role == "worker" for w in workers):
                cx.log("warning", "llm tasks name no model and no default_model is set")
            continue
        ensure_hot(cx, workers, model, count)
    brain_demand = any(b.ready.get("brain") for b in st.active_batches())
    if brain_demand and cfg.brain_model:
        for worker in workers:
            if worker.role == "brain" and can_load(cx, worker, cfg.brain_model, split=True):
                load(cx, worker, cfg.brain_model, "brain tasks waiting")
                break
    idle_rig = not st.active_batches()
    protected = default_protected(cx, workers) if idle_rig else set()
    for worker in workers:
        if (
            worker.role != "worker"
            or not usable(worker)
            or worker.model_state != "hot"
            or worker.attempts
            or worker.llm_requests
            or worker.loading
            or worker.name in protected
            or wanted.get(worker.model)
            or now - worker.unload_sent_at < UNLOAD_RESEND_S
        ):
            continue
        limit = cfg.split_unload_idle_s if len(worker.gpus) >= 2 else cfg.unload_idle_s
        last = max(
            st.llm_demand_at.get(worker.model, 0.0),
            worker.hot_since,
            worker.idle_since,
            worker.llm_request_at,
        )
        if now - last >= limit:
            unload(cx, worker, f"no LLM demand for {limit:.0f}s")
    if idle_rig and st.idle_since and now - st.idle_since >= cfg.default_idle_s:
        return_to_default(cx, workers)


def rig_models(cx: Ctx) -> set[str] | None:
    """Every name the rig's models answer to: the configured ones (``models``,
    ``default_model``, ``brain_model``, ``default_hot``) and those workers offer or
    run. None while the rig has not told all its models (no ``models`` setting,
    and no worker registered yet or one that announced none): no model can be
    judged unknown then."""
    cfg = cx.cfg
    names: set[str] = set()
    for path in (*cfg.models, cfg.default_model, cfg.brain_model, *cfg.default_hot):
        if path:
            names.update(model_names(path))
    workers = cx.state.workers.values()
    for worker in workers:
        names.update(worker.models)
        if worker.model:
            names.update(model_names(worker.model))
    if not cfg.models and (not workers or not all(w.models for w in workers)):
        return None
    return names


def unknown_model(model: str, known: set[str]) -> str:
    has = ", ".join(sorted({model_alias(n) for n in known})) or "no models at all"
    return (
        f"definition error: unknown model {model!r}: no worker has it and no configured "
        f"model matches (this rig has: {has}); name one of these in llm_model, or add the "
        "model to a worker in llmo.toml"
    )


def ensure_hot(cx: Ctx, workers: list[Worker], model: str, count: int) -> None:
    if any(w.loading == model for w in workers):
        return  # one load at a time per model
    hot = [w for w in workers if w.alive and w.model_state == "hot" and w.model == model]
    if hot and count <= sum(max(w.slots, 1) for w in hot):
        return
    cfg = cx.cfg
    if cfg.max_hot and hot_count(cx) >= cfg.max_hot:
        return
    for worker in workers:
        if can_load(cx, worker, model):
            load(cx, worker, model, f"{count} llm tasks waiting")
            return
    if hot:
        return
    for worker in workers:  # swap out a model nobody waits for
        if (
            worker.role == "worker"
            and usable(worker)
            and worker.model_state == "hot"
            and not worker.attempts
            and not worker.llm_requests
            and not worker.loading
            and worker.model != model
            and cx.now - worker.hot_since >= SWAP_MIN_HOT_S
            and cx.now - worker.unload_sent_at >= UNLOAD_RESEND_S
            and not demand(cx).get(worker.model)
        ):
            unload(cx, worker, f"make room for {model}")
            return


def default_protected(cx: Ctx, workers: list[Worker]) -> set[str]:
    keep: set[str] = set()
    need = collections.Counter(cx.cfg.default_hot)
    for worker in workers:
        if worker.alive and need[worker.model] > 0 and worker.model_state == "hot":
            need[worker.model] -= 1
            keep.add(worker.name)
    return keep


def return_to_default(cx: Ctx, workers: list[Worker]) -> None:
    need = collections.Counter(cx.cfg.default_hot)
    for worker in workers:
        if worker.alive and (worker.model_state == "hot" or worker.loading):
            model = worker.loading or worker.model
            if need[model] > 0:
                need[model] -= 1
    for model, missing in sorted(need.items()):
        for _ in range(missing):
            target = next((w for w in workers if can_load(cx, w, model)), None)
            if target is None:
                break
            load(cx, target, model, "return to the default")


# --- reports ---------------------------------------------------------------------


def on_report(cx: Ctx, worker: Worker, state: WorkerState, model: str) -> None:
    """A heartbeat's view of the runtime (the latest fact wins)."""
    if not state:
        return
    if state == "hot" and worker.model_state != "hot":
        worker.hot_since = cx.now
        if worker.loading and (not model or model == worker.loading):
            loaded(cx, worker, model or worker.loading)
    if state == "cold" and worker.model_state == "hot":
        worker.unload_sent_at = -1e18
    worker.model_state = state
    worker.model = model if state == "hot" else ""


def on_status(cx: Ctx, msg: ModelStatus) -> None:
    worker = cx.state.workers.get(msg.src)
    if worker is None:
        cx.log("warning", f"ignored a model status ({msg.state}) from unknown worker {msg.src}")
        return
    if msg.state == "hot":
        worker.model_state = "hot"
        worker.model = msg.model
        worker.hot_since = cx.now
        loaded(cx, worker, msg.model)
    elif msg.state == "loading":
        worker.model_state = "loading"
    elif msg.state == "cold":
        worker.model_state = "cold"
        worker.model = ""
        worker.unload_sent_at = -1e18
    elif msg.state == "failed":
        worker.model_state = "cold"
        worker.model = ""
        load_failed(cx, worker, msg.model or worker.loading, msg.error or "load failed")
    cx.publish(None, "model_" + msg.state, worker=worker.name, model=msg.model, error=msg.error)
    cx.state.dispatch_due = True


def take_load_task(cx: Ctx, worker: Worker) -> tuple[Batch, TaskRun] | None:
    """The meta load task waiting on ``worker`` (now no longer waiting), if it still runs."""
    if worker.load_task is None:
        return None
    batch_id, task_id = worker.load_task
    worker.load_task = None
    batch = cx.state.batches.get(batch_id)
    task = batch.tasks.get(task_id) if batch is not None else None
    if batch is None or task is None or task.state != "running":
        return None
    return batch, task


def loaded(cx: Ctx, worker: Worker, model: str) -> None:
    worker.loading = ""
    cx.state.load_failures.pop(model, None)
    found = take_load_task(cx, worker)
    if found is not None:
        tasks.succeed(cx, *found, model=model)


def load_failed(cx: Ctx, worker: Worker, model: str, error: str) -> None:
    st = cx.state
    worker.failed_load = (worker.loading or model, error)  # as it was asked for
    worker.loading = ""
    worker.load_failed[model] = cx.now
    st.load_failures[model] = st.load_failures.get(model, 0) + 1
    cx.log("warning", f"worker {worker.name} failed to load {model}: {error}")
    found = take_load_task(cx, worker)
    if found is not None:
        batch, task = found
        task.attempts += 1
        retry.attempt_failed(cx, batch, task, reason="exit", error=f"load failed: {error}")
    if st.load_failures[model] >= cx.cfg.max_load_failures:
        fail_waiting(cx, model, f"model {model} failed to load {st.load_failures[model]} times")


def fail_waiting(cx: Ctx, model: str, why: str) -> None:
    """Tasks waiting for a model that cannot be loaded fail visibly."""
    for batch in cx.state.active_batches():
        for key, queue in list(batch.ready.items()):
            if key.startswith("llm:") and queue_model(key) == model:
                waiting = [batch.tasks[t] for t in queue]
                queue.clear()
                for task in waiting:
                    if task.state == "ready":
                        tasks.fail(cx, batch, task, why, reason="model")


def worker_gone(cx: Ctx, worker: Worker) -> None:
    worker.loading = ""
    worker.model_state = "cold"
    worker.model = ""
    found = take_load_task(cx, worker)
    if found is not None:
        tasks.requeue(cx, *found, f"worker {worker.name} went down while loading")
