"""A scripted stand-in for the brain and the workers, for the monitor's tests.

``FakeRig`` runs one thread that owns a ``Client`` named ``brain`` and one
client per worker, all connected to a real broker on loopback. The test
scripts it from its own thread through a queue: publish batch events (sent
to the broker, which publishes them, as the real brain does), send worker
heartbeats, change the state the snapshot shows. Each worker client registers
first, as a real worker does, so the broker gives it the worker role and
admits its worker heartbeats. The brain answers
``SnapshotRequest`` from that state and control requests with an ``Ack``,
and records every request it got.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import zmq

from llmo.proto.client import Client
from llmo.proto.messages import (
    BRAIN,
    BROKER,
    Ack,
    BatchCancel,
    BatchEvent,
    BatchInfo,
    GpuReading,
    Heartbeat,
    Message,
    ModelLoad,
    ModelUnload,
    PlanAccepted,
    PlanSubmit,
    Register,
    SnapshotReply,
    SnapshotRequest,
    TaskInfo,
    TaskProgress,
    TaskRetry,
    Telemetry,
    WorkerDrain,
    WorkerInfo,
)
from tests.waiting import wait_for

CONTROL = (BatchCancel, WorkerDrain, ModelLoad, ModelUnload, TaskRetry)


def gpu_telemetry(index: int, temp: float = 61.0, used: int = 4200) -> Telemetry:
    return Telemetry(
        gpu_available=True,
        gpus=(
            GpuReading(
                index=index,
                name="GTX 1060 6GB",
                temperature_c=temp,
                vram_used_mb=used,
                vram_total_mb=6144,
                power_w=96.0,
                power_limit_w=120.0,
                util_percent=87.0,
            ),
        ),
        cpu_percent=20.0,
    )


def no_gpu() -> Telemetry:
    return Telemetry(gpu_available=False, note="NVML not found")


def worker_view(name: str, state: str = "hot", **extra: Any) -> WorkerInfo:
    view: dict[str, Any] = {
        "name": name,
        "role": "worker",
        "state": state,
        "presence": "down" if state == "down" else "up",
        "model": "qwen2.5-7b-q4" if state == "hot" else "",
        "gpus": (int(name.rsplit("-", 1)[-1]),) if name[-1].isdigit() else (),
        "slots": 1,
        "slots_free": 0,
        "vram_budget_mb": 5600,
        "vram_used_mb": 4200,
    }
    view.update(extra)
    return WorkerInfo(**view)


def batch_view(batch_id: str, plan: str, counts: dict[str, int], **extra: Any) -> BatchInfo:
    view: dict[str, Any] = {
        "id": batch_id,
        "plan": plan,
        "plan_path": f"/srv/plans/{plan}",
        "history_path": f"/srv/plans/{plan}/history/{batch_id}",
        "state": "running",
        "priority": 2,
        "priority_name": "normal",
        "created_at": 1000.0,
        "tasks": sum(counts.values()),
        "counts": counts,
    }
    view.update(extra)
    return BatchInfo(**view)


def task_view(batch_id: str, task_id: str, state: str, **extra: Any) -> TaskInfo:
    view: dict[str, Any] = {
        "batch_id": batch_id,
        "id": task_id,
        "state": state,
        "task_class": "llm",
        "executor": "worker",
        "attempts": 1 if state not in ("pending", "ready") else 0,
    }
    view.update(extra)
    return TaskInfo(**view)


class FakeRig:
    """The brain and the workers, scripted; see the module docstring."""

    def __init__(self, endpoint: str, workers: tuple[str, ...] = ()) -> None:
        self.endpoint = endpoint
        self.context = zmq.Context()
        self.rev = 0
        self.workers: list[WorkerInfo] = []
        self.batches: list[BatchInfo] = []
        self.tasks: list[TaskInfo] = []
        self.requests: list[Message] = []
        self.snapshot_requests: list[SnapshotRequest] = []
        self.answering = True
        self.ack: Callable[[Message], tuple[bool, str]] = lambda msg: (True, "ok")
        # how a PlanSubmit is answered (PlanAccepted or PlanRejected, reply_to filled in)
        self.plan_answer: Callable[[PlanSubmit], Message] = lambda msg: PlanAccepted(
            reply_to="", batch_id="N1", tasks=2
        )
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._worker_names = workers
        self._thread = threading.Thread(target=self._run, name="fake-rig", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        assert self._ready.wait(5), "fake rig did not start"

    # --- scripting, from the test's thread ---------------------------------------------------

    def set_state(self, *, workers=None, batches=None, tasks=None, rev: int | None = None) -> None:
        with self._lock:
            if workers is not None:
                self.workers = list(workers)
            if batches is not None:
                self.batches = list(batches)
            if tasks is not None:
                self.tasks = list(tasks)
            if rev is not None:
                self.rev = rev

    def event(self, batch_id: str, event: str, task_id: str = "", state: str = "", **kw: Any):
        """Publish a lifecycle event at the next revision (and fold it into the snapshot)."""
        with self._lock:
            self.rev += 1
            rev = self.rev
            self._fold(batch_id, task_id, state, kw.get("detail", {}))
            self._fold_worker(event, kw.get("worker", ""))
            if event == "task_started":
                self._fold_start(batch_id, task_id, kw.get("worker", ""), kw.get("attempt_id", ""))
        msg = BatchEvent(
            dst=BROKER, rev=rev, batch_id=batch_id, event=event, task_id=task_id, state=state, **kw
        )
        self._queue.put(lambda: self.brain.send(msg))
        return rev

    def heartbeat(self, worker: str, **fields: Any) -> None:
        fields.setdefault("role", "worker")
        msg = Heartbeat(dst=BRAIN, **fields)
        self._queue.put(lambda: self.clients[worker].send(msg))

    def progress(self, worker: str, **fields: Any) -> None:
        msg = TaskProgress(dst=BRAIN, **fields)
        self._queue.put(lambda: self.clients[worker].send(msg))

    def wait_for(self, kind: type, timeout: float = 5.0) -> Message:

        def received() -> Message | None:
            with self._lock:
                return next((m for m in self.requests if isinstance(m, kind)), None)

        return wait_for(received, timeout, f"the fake brain to get a {kind.__name__}", poll_s=0.02)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far has been sent."""
        done = threading.Event()
        self._queue.put(done.set)
        assert done.wait(timeout), "fake rig did not send its queue"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.context.destroy(linger=0)

    # --- the thread ---------------------------------------------------------------------

    def _fold_start(self, batch_id: str, task_id: str, worker: str, attempt_id: str) -> None:
        """A started attempt (``<batch>:<task>:<n>``) is in later snapshots too."""
        number = attempt_id.rpartition(":")[2]
        for i, task in enumerate(self.tasks):
            if task.batch_id == batch_id and task.id == task_id and number.isdigit():
                self.tasks[i] = replace(
                    task, attempts=int(number), worker=worker, attempt_id=attempt_id
                )

    def _fold_worker(self, event: str, name: str) -> None:
        """A worker that went down or came back is so in later snapshots too, as the
        brain's would have it."""
        presence = {"worker_down": "down", "worker_registered": "up"}.get(event)
        for i, worker in enumerate(self.workers):
            if presence is not None and worker.name == name:
                state = "down" if presence == "down" else worker.state
                self.workers[i] = replace(worker, presence=presence, state=state)

    def _fold(self, batch_id: str, task_id: str, state: str, detail: dict) -> None:
        if task_id:
            for i, task in enumerate(self.tasks):
                if task.batch_id == batch_id and task.id == task_id:
                    old = task.state
                    self.tasks[i] = replace(task, state=state)
                    for j, batch in enumerate(self.batches):
                        if batch.id == batch_id:
                            counts = dict(batch.counts)
                            counts[old] = counts.get(old, 0) - 1
                            counts[state] = counts.get(state, 0) + 1
                            counts = {k: v for k, v in counts.items() if v}
                            self.batches[j] = replace(batch, counts=counts)
        elif batch_id and state:
            for j, batch in enumerate(self.batches):
                if batch.id == batch_id:
                    counts = dict(detail.get("counts", batch.counts))
                    self.batches[j] = replace(batch, state=state, counts=counts)

    def _run(self) -> None:
        self.brain = Client(BRAIN, self.endpoint, context=self.context, heartbeat_interval=0.2)
        self.clients = {
            name: Client(name, self.endpoint, context=self.context) for name in self._worker_names
        }
        for client in self.clients.values():
            client.send(Register(dst=BRAIN))
        self._ready.set()
        try:
            while not self._stop.is_set():
                self.brain.tick()
                while True:
                    try:
                        self._queue.get_nowait()()
                    except queue.Empty:
                        break
                msg = self.brain.recv(timeout=0.02)
                if msg is not None:
                    self._answer(msg)
        finally:
            self.brain.close()
            for client in self.clients.values():
                client.close()

    def _answer(self, msg: Message) -> None:
        if isinstance(msg, Heartbeat | TaskProgress | Register):
            return
        with self._lock:
            self.requests.append(msg)
            answering = self.answering
        if not answering:
            return
        if isinstance(msg, SnapshotRequest):
            with self._lock:
                self.snapshot_requests.append(msg)
                tasks = [t for t in self.tasks if not msg.batch_id or t.batch_id == msg.batch_id]
                if not msg.batch_id:
                    running = {b.id for b in self.batches if b.state == "running"}
                    tasks = [t for t in tasks if t.batch_id in running]
                reply = SnapshotReply(
                    dst=msg.src,
                    reply_to=msg.id,
                    rev=self.rev,
                    workers=tuple(self.workers),
                    batches=tuple(self.batches),
                    tasks=tuple(tasks),
                )
            self.brain.send(reply)
        elif isinstance(msg, CONTROL):
            ok, detail = self.ack(msg)
            self.brain.send(Ack(dst=msg.src, reply_to=msg.id, ok=ok, detail=detail))
        elif isinstance(msg, PlanSubmit):
            self.brain.send(replace(self.plan_answer(msg), dst=msg.src, reply_to=msg.id))
