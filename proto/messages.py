"""The message types of the llmo wire protocol.

Theory of operation
-------------------
Every message is one msgpack map in one ZeroMQ frame. Six envelope keys are
common to all messages:

    v     protocol version (``PROTOCOL_VERSION``)
    type  the message type, a ``MsgType`` value
    id    message id, unique per sender (stamped by the client helper)
    src   the sending actor's name; the broker refuses a ``src`` that differs
          from the sender's ZeroMQ identity
    dst   the actor the broker routes to; ``broker`` means the broker itself
    ts    send time, seconds since the epoch (stamped by the client helper)

The remaining keys are the fields of the type, declared below as frozen,
keyword-only dataclasses. Nested records (``Telemetry``, ``GpuReading``, and
the snapshot's ``WorkerInfo``, ``BatchInfo``, ``TaskInfo``) are maps. Three
types carry several messages of one brain loop turn, to cut the sends of a
busy one: ``TaskAssigns`` (``TaskAssign`` maps), ``Acks`` and ``BatchEvents``
(``EventRecord`` maps); each ``unpacked`` gives the single messages.
``proto.codec`` derives its validation from these annotations, so an
annotation here *is* the wire contract: ``Literal`` (or a ``StrEnum``) restricts values,
``X | None`` allows nil, ``tuple[X, ...]`` is an array, ``dict[str, X]`` a map,
``Any`` is not checked.

Adding a field with a default is backwards compatible (receivers ignore keys
they do not know, senders that omit it get the default); anything else bumps
``PROTOCOL_VERSION``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from llmo.proto.errors import ErrorCode
from llmo.proto.states import BatchState, GoalState, Presence, TaskState, WorkerState

PROTOCOL_VERSION = 1
BROKER = "broker"  # the reserved actor name of the broker itself
BRAIN = "brain"  # the reserved actor name of the brain

ENVELOPE_KEYS = ("v", "type", "id", "src", "dst", "ts")

TaskClass = Literal["cpu", "script", "llm", "brain", "meta"]
Priority = Literal["", "low", "normal", "high", "urgent"]
Role = Literal["worker", "brain", "client", "broker"]


class MsgType(enum.StrEnum):
    REGISTER = "register"
    HEARTBEAT = "heartbeat"
    TASK_ASSIGN = "task.assign"
    TASK_ASSIGNS = "task.assigns"
    TASK_STARTED = "task.started"
    TASK_PROGRESS = "task.progress"
    TASK_DONE = "task.done"
    TASK_FAILED = "task.failed"
    TASK_CANCEL = "task.cancel"
    MODEL_LOAD = "model.load"
    MODEL_UNLOAD = "model.unload"
    MODEL_STATUS = "model.status"
    WORKER_DRAIN = "worker.drain"
    PLAN_SUBMIT = "plan.submit"
    PLAN_ACCEPTED = "plan.accepted"
    PLAN_REJECTED = "plan.rejected"
    BATCH_CANCEL = "batch.cancel"
    TASK_RETRY = "task.retry"
    BATCH_EVENT = "batch.event"
    BATCH_EVENTS = "batch.events"
    SNAPSHOT_REQUEST = "snapshot.request"
    SNAPSHOT_REPLY = "snapshot.reply"
    PEER_UP = "peer.up"
    PEER_DOWN = "peer.down"
    ACK = "ack"
    ACKS = "acks"
    ERROR = "error"
    # the supervisor of ``llmo up`` (see the block of its messages below)
    SUPERVISOR_QUERY = "supervisor.query"
    SUPERVISOR_REPORT = "supervisor.report"
    CHILD_RESTART = "child.restart"


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """The envelope. Subclasses set ``TYPE`` and add their fields."""

    TYPE: ClassVar[MsgType]
    src: str = ""
    dst: str = ""
    id: str = ""
    ts: float = 0.0


# --- nested records -------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessVram:
    """VRAM held by one process on a GPU, where the driver reports it."""

    pid: int
    vram_mb: int


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuReading:
    """One GPU's NVML readings; ``None`` where the driver gives no figure."""

    index: int
    name: str = ""
    temperature_c: float | None = None
    vram_used_mb: int | None = None
    vram_total_mb: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    util_percent: float | None = None
    sm_clock_mhz: int | None = None
    throttle_reasons: tuple[str, ...] = ()
    processes: tuple[ProcessVram, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Telemetry:
    """What a worker measured of its machine at heartbeat time.

    ``gpu_available`` is false where NVML is absent (no driver); ``note`` then
    says why, and ``gpus`` is empty while the CPU and memory figures remain.
    """

    gpu_available: bool = False
    note: str = ""
    gpus: tuple[GpuReading, ...] = ()
    cpu_percent: float = 0.0
    load_avg: float = 0.0
    mem_used_mb: int = 0
    mem_total_mb: int = 0
    cpu_temperature_c: float | None = None


# --- the brain's state, as snapshots show it -----------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class View:
    """A record of the brain's state; ``to_wire`` is its map of plain values
    (what the codec sends, and what tools print as JSON)."""

    def to_wire(self) -> dict[str, Any]:
        return {f.name: _wire(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _wire(value: Any) -> Any:
    if isinstance(value, View):
        return value.to_wire()
    if type(value) is tuple:
        return [_wire(v) for v in value]
    if type(value) is dict:
        return dict(value)
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuGauges(View):
    """A worker's telemetry in a few figures: the hottest and busiest GPU, VRAM
    and power summed over its GPUs, and its CPU and memory. ``available`` is
    false where NVML is absent, and ``note`` then says why."""

    available: bool = False
    note: str = ""
    temperature_c: float | None = None
    util_percent: float | None = None
    vram_used_mb: int | None = None
    vram_total_mb: int | None = None
    power_w: float | None = None
    cpu_percent: float = 0.0
    cpu_temperature_c: float | None = None
    mem_used_mb: int = 0
    mem_total_mb: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerInfo(View):
    """One worker. ``state`` is the worker's own report (or ``down`` when the
    brain lost it), ``presence`` the brain's view; ``loading`` is the model the
    brain asked it to load; ``attempts`` the attempt ids it runs for the brain;
    ``gpu`` is ``None`` until it reports telemetry; ``endpoint`` is the URL of its
    OpenAI-compatible endpoint, on its own host; ``host`` and ``pid`` are the
    machine and process it registered from; ``load_failed`` and ``load_error``
    name its last failed load and why, until it is asked to load again."""

    name: str
    role: Literal["worker", "brain"] = "worker"
    state: WorkerState
    presence: Presence = "up"
    model: str = ""
    loading: str = ""
    gpus: tuple[int, ...] = ()
    slots: int = 1
    slots_free: int = 0
    vram_budget_mb: int = 0
    vram_used_mb: int = 0
    attempts: tuple[str, ...] = ()
    last_seen: float = 0.0
    tok_s: float = 0.0
    constraint: str = ""
    gpu: GpuGauges | None = None
    endpoint: str = ""
    host: str = ""
    pid: int = 0
    load_failed: str = ""
    load_error: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class GoalInfo(View):
    """Progress of a goal-driven batch: ``succeeded`` of ``target`` wanted
    (``tolerance`` more may fail), ``tried`` of ``cap`` candidates, in round
    ``rounds`` of at most ``round_cap``; ``reason`` says why an exhausted
    goal stopped. The same record is in RUN_SUMMARY.json."""

    state: GoalState
    target: int
    tolerance: int = 0
    succeeded: int = 0
    tried: int = 0
    cap: int = 0
    rounds: int = 1
    round_cap: int = 0
    reason: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchInfo(View):
    """One batch. ``priority`` is its number (higher runs first), ``tasks`` how
    many it holds, ``counts`` task state -> count (states with none left out),
    ``tokens`` what its succeeded tasks generated (its tok/s: ``proto.rates``),
    ``config`` the plan settings it was submitted with (to run it again)."""

    id: str
    plan: str = ""
    plan_path: str = ""
    history_path: str = ""
    state: BatchState
    priority: int = 0
    priority_name: str = ""
    created_at: float = 0.0
    finished_at: float | None = None
    tasks: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    goal: GoalInfo | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the settings it was submitted with


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskInfo(View):
    """One task of batch ``batch_id``; ``template`` names the foreach template
    an item came from; ``deps`` the tasks it waits for (left empty for an
    item: it shares its template's). Times are ``None`` until they happen."""

    batch_id: str
    id: str
    state: TaskState
    task_class: TaskClass = "cpu"
    executor: Literal["worker", "brain"] = "worker"
    attempts: int = 0
    worker: str = ""
    attempt_id: str = ""
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str = ""
    template: str = ""
    deps: tuple[str, ...] = ()


# --- registration and heartbeat -----------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Register(Message):
    """A worker announces itself and what it can do (worker -> brain).

    ``endpoint`` is the URL of its OpenAI-compatible endpoint, on its own host
    (``worker.api``), for operators; empty for tools."""

    TYPE = MsgType.REGISTER
    role: Literal["worker", "brain"] = "worker"
    gpus: tuple[int, ...] = ()
    vram_total_mb: int = 0
    vram_budget_mb: int = 0
    slots: int = 1
    models: tuple[str, ...] = ()
    host: str = ""
    pid: int = 0
    version: str = ""
    endpoint: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Heartbeat(Message):
    """Liveness and capacity. Tools send the bare envelope; workers fill the rest.

    ``slots_free`` and ``vram_budget_mb - vram_used_mb`` are the credit the
    brain may assign against; ``active`` lists the attempt ids running now,
    and those whose result the worker holds until the brain acknowledges it;
    ``held`` names the latter among them: they have ended and take no slot.
    ``constraint`` says why a ``constrained`` worker is (which limit, which
    reading); empty otherwise. ``llm_slots`` is how many LLM sequences its hot
    model generates at once (0 when cold): the brain may run that many LLM
    attempts on it besides its shell slots (``vocab.slot_free``).
    ``llm_requests`` is how many requests its endpoint has in flight, or
    received since its previous heartbeat: a model that serves is never
    unloaded for want of demand (``brain.models``).
    """

    TYPE = MsgType.HEARTBEAT
    role: Role = "client"
    state: WorkerState = ""
    model: str = ""
    slots_total: int = 0
    slots_free: int = 0
    vram_budget_mb: int = 0
    vram_used_mb: int = 0
    active: tuple[str, ...] = ()
    held: tuple[str, ...] = ()
    tok_s: float = 0.0
    interval_s: float = 1.0
    telemetry: Telemetry | None = None
    constraint: str = ""
    llm_slots: int = 0
    llm_requests: int = 0


# --- tasks -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskAssign(Message):
    """Run one attempt of a task (brain -> worker).

    ``command`` is shell text with every placeholder already substituted;
    for ``meta`` tasks it is the control command name. The attempt runs in
    ``batch_path`` with ``env`` added to a clean environment and its output
    streamed to ``log_path``.
    """

    TYPE = MsgType.TASK_ASSIGN
    batch_id: str
    task_id: str
    attempt_id: str
    task_class: TaskClass
    executor: Literal["worker", "brain"] = "worker"
    command: str
    plan_path: str = ""
    batch_path: str = ""
    log_path: str = ""
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 1800.0
    grace_s: float = 120.0
    vram_mb: int = 0
    model: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskAssigns(Message):
    """Several assignments to one worker from one brain loop turn (brain -> worker), in
    order. The same as that many ``TaskAssign``s (their envelope fields are not sent):
    ``unpacked`` gives them, each with this message's envelope (its id suffixed with
    the assignment's place). ``acks`` are plain ``Ack``s of the same turn to the same
    worker (``Acks.reply_to``; ``unpacked_acks``), handled before the assignments: a
    chain's hop sends the result's ack and the next assignment as one message."""

    TYPE = MsgType.TASK_ASSIGNS
    assigns: tuple[TaskAssign, ...]
    acks: tuple[str, ...] = ()

    def unpacked(self) -> tuple[TaskAssign, ...]:
        return tuple(
            dataclasses.replace(a, src=self.src, dst=self.dst, id=f"{self.id}.{i}", ts=self.ts)
            for i, a in enumerate(self.assigns)
        )

    def unpacked_acks(self) -> tuple[Ack, ...]:
        return Acks(
            src=self.src, dst=self.dst, id=f"{self.id}.a", ts=self.ts, reply_to=self.acks
        ).unpacked()


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskStarted(Message):
    """The attempt's process is running (worker -> brain); sent once it has run
    ``worker.attempts.START_REPORT_S``, so an attempt that ends sooner sends its
    result alone (the brain counts the start with it)."""

    TYPE = MsgType.TASK_STARTED
    batch_id: str
    task_id: str
    attempt_id: str
    pid: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskProgress(Message):
    """Tokens generated so far by an attempt (worker -> brain, published)."""

    TYPE = MsgType.TASK_PROGRESS
    batch_id: str
    task_id: str
    attempt_id: str
    tokens: int = 0
    tok_s: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskDone(Message):
    """The attempt exited 0 (worker -> brain)."""

    TYPE = MsgType.TASK_DONE
    batch_id: str
    task_id: str
    attempt_id: str
    exit_code: int = 0
    duration_s: float = 0.0
    peak_rss_mb: float = 0.0
    tokens: int = 0
    tok_s: float = 0.0
    log_tail: str = ""


# Why an attempt failed, as a ``TaskFailed`` says it.
FailReason = Literal[
    "exit",
    "retry_later",
    "aborted",
    "killed",
    "refused",
    "policy",
    "spawn_error",
    "lost",
    "interrupted",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskFailed(Message):
    """The attempt did not succeed (worker -> brain).

    ``reason``: ``exit`` (non-zero exit code), ``retry_later`` (exit code 75:
    requeue without spending an attempt), ``aborted`` / ``killed`` (after a
    cancel), ``refused`` (no capacity now: worth trying again), ``policy`` (the
    command policy forbids it: final), ``spawn_error`` (could not
    start), ``lost`` (the worker no longer knows the attempt), ``interrupted``
    (the worker was stopping and ended the attempt: not the task's failure, so
    it is run again without spending an attempt).
    """

    TYPE = MsgType.TASK_FAILED
    batch_id: str
    task_id: str
    attempt_id: str
    reason: FailReason
    exit_code: int | None = None
    signal: int | None = None
    duration_s: float = 0.0
    peak_rss_mb: float = 0.0
    tokens: int = 0
    error: str = ""
    log_tail: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskCancel(Message):
    """Stop an attempt (brain -> worker): ``abort`` = SIGTERM to its process
    group, ``kill`` = SIGKILL."""

    TYPE = MsgType.TASK_CANCEL
    batch_id: str
    task_id: str
    attempt_id: str
    mode: Literal["abort", "kill"] = "abort"
    reason: str = ""


# --- models ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelLoad(Message):
    """Load a GGUF model into the worker's runtime (brain -> worker).

    ``n_gpu_layers`` -1 offloads every layer; ``tensor_split`` spreads a split
    model over the worker's GPUs; ``threads`` 0 lets the worker choose. An
    operator tool sends it to the brain with ``worker`` naming the target; the
    brain answers with an ``Ack`` and forwards it.
    """

    TYPE = MsgType.MODEL_LOAD
    model: str
    worker: str = ""
    alias: str = ""
    n_gpu_layers: int = -1
    tensor_split: tuple[float, ...] = ()
    n_ctx: int = 4096
    threads: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelUnload(Message):
    """Unload the worker's model (brain -> worker; from a tool to the brain
    with ``worker`` naming the target)."""

    TYPE = MsgType.MODEL_UNLOAD
    reason: str = ""
    worker: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelStatus(Message):
    """Where a worker's runtime stands (worker -> brain).

    ``hot`` is sent only after a real test completion succeeded; ``failed``
    carries the reason in ``error`` and leaves the worker usable cold.
    """

    TYPE = MsgType.MODEL_STATUS
    model: str = ""
    state: Literal["loading", "hot", "cold", "failed"]
    error: str = ""
    load_s: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerDrain(Message):
    """Drain a worker: finish running attempts, take no new ones.

    Sent by an operator tool to the brain, which forwards it to ``worker``.
    ``drain`` false returns the worker to service.
    """

    TYPE = MsgType.WORKER_DRAIN
    worker: str
    drain: bool = True
    deadline_s: float | None = None


# --- plans and batches -----------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanSubmit(Message):
    """Run a plan (tool -> brain). ``priority`` empty = the config's PRIORITY
    key, else ``normal``."""

    TYPE = MsgType.PLAN_SUBMIT
    plan_path: str
    config: dict[str, Any] = field(default_factory=dict)
    priority: Priority = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanAccepted(Message):
    """The plan is valid and a batch was created (brain -> tool)."""

    TYPE = MsgType.PLAN_ACCEPTED
    reply_to: str
    batch_id: str
    plan: str = ""
    history_path: str = ""
    tasks: int = 0
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanRejected(Message):
    """The plan was refused; ``errors`` lists every problem (brain -> tool)."""

    TYPE = MsgType.PLAN_REJECTED
    reply_to: str
    plan_path: str = ""
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchCancel(Message):
    """Cancel a batch (tool -> brain): running attempts aborted, the rest skipped."""

    TYPE = MsgType.BATCH_CANCEL
    batch_id: str
    reason: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskRetry(Message):
    """Re-open a task that failed for good (tool -> brain).

    The task gets a fresh attempt budget, the dependents it had skipped wait
    for it again, and a batch that ended ``failed`` runs again. The brain
    answers with an ``Ack``, or an ``Error`` with code ``refused`` naming why
    (no such batch or task, a task that has not failed, a batch that cannot
    run again).
    """

    TYPE = MsgType.TASK_RETRY
    batch_id: str
    task_id: str
    reason: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchEvent(Message):
    """A lifecycle change (brain -> broker, published to monitors).

    ``rev`` is the brain's state revision after the change; a monitor that
    took a snapshot at revision R ignores events with ``rev <= R``.
    """

    TYPE = MsgType.BATCH_EVENT
    rev: int
    batch_id: str
    event: str
    task_id: str = ""
    state: str = ""
    worker: str = ""
    attempt_id: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class EventRecord:
    """One ``BatchEvent`` inside a ``BatchEvents``: its fields without the envelope."""

    rev: int
    batch_id: str
    event: str
    task_id: str = ""
    state: str = ""
    worker: str = ""
    attempt_id: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchEvents(Message):
    """Several lifecycle changes of one loop turn, in order (brain -> broker, published
    as one message). The same as that many ``BatchEvent``s: ``unpacked`` gives them,
    each with this message's envelope (its id suffixed with the event's place)."""

    TYPE = MsgType.BATCH_EVENTS
    events: tuple[EventRecord, ...]

    @classmethod
    def of(cls, events: Sequence[BatchEvent]) -> BatchEvents:
        return cls(
            dst=events[0].dst if events else "",
            events=tuple(
                EventRecord(
                    rev=e.rev,
                    batch_id=e.batch_id,
                    event=e.event,
                    task_id=e.task_id,
                    state=e.state,
                    worker=e.worker,
                    attempt_id=e.attempt_id,
                    detail=e.detail,
                )
                for e in events
            ),
        )

    def unpacked(self) -> tuple[BatchEvent, ...]:
        return tuple(
            BatchEvent(
                src=self.src,
                dst=self.dst,
                id=f"{self.id}.{i}",
                ts=self.ts,
                rev=e.rev,
                batch_id=e.batch_id,
                event=e.event,
                task_id=e.task_id,
                state=e.state,
                worker=e.worker,
                attempt_id=e.attempt_id,
                detail=e.detail,
            )
            for i, e in enumerate(self.events)
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SnapshotRequest(Message):
    """Ask the brain for its whole state (tool -> brain); ``batch_id`` narrows
    the task list to one batch."""

    TYPE = MsgType.SNAPSHOT_REQUEST
    batch_id: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class SnapshotReply(Message):
    """The brain's state at revision ``rev`` (brain -> tool): every worker,
    every batch, and the tasks of the batch asked for (else of the running
    batches, live ones first, at most ``brain.view.MAX_TASKS``)."""

    TYPE = MsgType.SNAPSHOT_REPLY
    reply_to: str
    rev: int
    workers: tuple[WorkerInfo, ...] = ()
    batches: tuple[BatchInfo, ...] = ()
    tasks: tuple[TaskInfo, ...] = ()
    disk_full: str = ""  # why the brain cannot journal (it takes no new work); "" when it can


# --- liveness, replies, errors ---------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerUp(Message):
    """The broker heard from a peer that was unknown or down (broker -> brain, published)."""

    TYPE = MsgType.PEER_UP
    peer: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerDown(Message):
    """A peer was silent past its expiry (broker -> brain, published)."""

    TYPE = MsgType.PEER_DOWN
    peer: str
    silent_s: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Ack(Message):
    """The outcome of a control request (cancel, drain, load, unload)."""

    TYPE = MsgType.ACK
    reply_to: str
    ok: bool = True
    detail: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Acks(Message):
    """Several plain ``Ack``s (``ok``, no detail) to one actor from one loop turn: one
    for each id in ``reply_to``, in order. ``unpacked`` gives them as ``Ack``s."""

    TYPE = MsgType.ACKS
    reply_to: tuple[str, ...]

    def unpacked(self) -> tuple[Ack, ...]:
        return tuple(
            Ack(src=self.src, dst=self.dst, id=f"{self.id}.{i}", ts=self.ts, reply_to=r)
            for i, r in enumerate(self.reply_to)
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Error(Message):
    """Something about message ``reply_to`` was wrong; ``code`` names what.

    ``peer`` names the missing actor for ``unknown_destination``.
    """

    TYPE = MsgType.ERROR
    code: ErrorCode
    detail: str = ""
    reply_to: str = ""
    peer: str = ""


# --- the supervisor of ``llmo up`` -----------------------------------------------------
#
# ``llmo up`` joins the broker under the reserved name ``supervisor`` (role
# ``supervisor``, ``broker.roles``). It answers a ``SupervisorQuery`` with a
# ``SupervisorReport`` and publishes one whenever a child changes state (and
# every few seconds); it answers a ``ChildRestart`` with an ``Ack``. Only a
# child it gave up on is restarted (``cli.supervisor.restart_refusal``): the
# request names a child, never a command. A rig under systemd has no
# supervisor: the broker then answers for it (``unknown_destination``, peer
# ``supervisor``), naming the ``systemctl`` command when it knows.

SUPERVISOR = "supervisor"  # the reserved actor name of ``llmo up``'s supervisor

ChildState = Literal["running", "restarting", "given_up", "config_error", "stopping"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ChildInfo(View):
    """One child process of ``llmo up``: ``kind`` broker, brain or worker; ``state``
    ``running``, ``restarting`` (crashed, back-off under way), ``given_up`` (crashed
    more than the restart policy allows: left stopped until the operator restarts
    it), ``config_error`` (exited 2: restarting cannot help) or ``stopping``.
    ``restarts`` counts its automatic restarts in the policy's window, ``exit_code``
    its last exit, ``reason`` the last line of its log once it stopped."""

    name: str
    kind: Literal["broker", "brain", "worker"] = "worker"
    state: ChildState
    pid: int = 0
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    log_path: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class SupervisorQuery(Message):
    """Ask ``llmo up``'s supervisor for its children (tool -> supervisor)."""

    TYPE = MsgType.SUPERVISOR_QUERY


@dataclass(frozen=True, kw_only=True, slots=True)
class SupervisorReport(Message):
    """``llmo up``'s children (supervisor -> tool, or -> broker: published).

    ``reply_to`` is empty in a publication. ``max_restarts`` in ``window_s`` is
    its restart policy; ``host`` and ``pid`` say where ``llmo up`` runs."""

    TYPE = MsgType.SUPERVISOR_REPORT
    reply_to: str = ""
    host: str = ""
    pid: int = 0
    rig_dir: str = ""
    max_restarts: int = 0
    window_s: float = 0.0
    children: tuple[ChildInfo, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class ChildRestart(Message):
    """Restart ``child``, a child the supervisor gave up on, with its restart window
    reset (tool -> supervisor; answered with an ``Ack``)."""

    TYPE = MsgType.CHILD_RESTART
    child: str


MESSAGE_CLASSES: dict[MsgType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Register,
        Heartbeat,
        TaskAssign,
        TaskAssigns,
        TaskStarted,
        TaskProgress,
        TaskDone,
        TaskFailed,
        TaskCancel,
        ModelLoad,
        ModelUnload,
        ModelStatus,
        WorkerDrain,
        PlanSubmit,
        PlanAccepted,
        PlanRejected,
        BatchCancel,
        TaskRetry,
        BatchEvent,
        BatchEvents,
        SnapshotRequest,
        SnapshotReply,
        PeerUp,
        PeerDown,
        Ack,
        Acks,
        Error,
        SupervisorQuery,
        SupervisorReport,
        ChildRestart,
    )
}

# Types the broker republishes on its PUB socket, whatever their destination.
PUBLISHED_TYPES = frozenset(
    {
        MsgType.HEARTBEAT,
        MsgType.TASK_PROGRESS,
        MsgType.BATCH_EVENT,
        MsgType.BATCH_EVENTS,
        MsgType.MODEL_STATUS,
        MsgType.PEER_UP,
        MsgType.PEER_DOWN,
        MsgType.SUPERVISOR_REPORT,
    }
)
