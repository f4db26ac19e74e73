"""The brain's state, and the lifecycle tables that govern it.

Theory of operation
-------------------
The state is one ``BrainState`` holding workers and batches; a batch holds its
tasks. It is owned by the core: ``step`` mutates it in place and returns it,
so a step costs what the event touches, not the size of the queue (a copy per
step would make a 100,000-task batch quadratic). Nothing else may hold on to
it between steps; the shell only reads it (for snapshots and summaries).

Lifecycles are data. The state names are the protocol's (``proto.states``);
``TASK_TRANSITIONS``, ``BATCH_TRANSITIONS`` and
``WORKER_TRANSITIONS`` map ``state -> {event: next_state}``; every change of a
task, batch or worker goes through ``advance``, which looks the pair up and,
when it is not in the table, leaves the object as it was and returns ``None``
so the caller can log the illegal transition instead of crashing.

Task states::

    pending -release-> ready -assign-> assigned -start-> running -succeed-> done
    ready -expand-> expanding -expanded-> expanded        (foreach templates)
    assigned|running -retry-> delayed -due-> ready      (backoff)
    assigned|running -requeue-> ready                   (exit 75, lost worker)
    any live state -fail-> failed | -skip-> skipped | -cancel-> cancelled
    failed|skipped -reopen-> pending                    (the operator's retry)
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, TypeVar

from llmo import plans
from llmo.brain.config import BrainConfig
from llmo.proto.messages import PlanSubmit
from llmo.proto.states import BatchState, GoalState, Presence, TaskState, WorkerState

# --- lifecycle tables ----------------------------------------------------------

_LIVE_EXITS: dict[str, TaskState] = {"fail": "failed", "skip": "skipped", "cancel": "cancelled"}

TASK_TRANSITIONS: dict[TaskState, dict[str, TaskState]] = {
    "pending": {"release": "ready", "skip": "skipped", "cancel": "cancelled", "fail": "failed"},
    "ready": {
        "assign": "assigned",
        "control": "running",  # a meta task turned into control messages
        "expand": "expanding",
        "succeed": "done",  # a meta task with nothing to do
        **_LIVE_EXITS,
    },
    "assigned": {
        "start": "running",
        "succeed": "done",
        "retry": "delayed",
        "requeue": "ready",
        **_LIVE_EXITS,
    },
    "running": {"succeed": "done", "retry": "delayed", "requeue": "ready", **_LIVE_EXITS},
    "delayed": {"due": "ready", **_LIVE_EXITS},
    "expanding": {"expanded": "expanded", "succeed": "done", **_LIVE_EXITS},
    "expanded": {"succeed": "done", **_LIVE_EXITS},
    "done": {},
    "failed": {"reopen": "pending"},  # the operator's retry (brain.reopen)
    "skipped": {"reopen": "pending"},  # a dependent of a retried task
    "cancelled": {},
}


BATCH_TRANSITIONS: dict[BatchState, dict[str, BatchState]] = {
    "running": {"complete": "complete", "fail": "failed", "cancel": "cancelled"},
    "complete": {},
    "failed": {"reopen": "running"},  # a task of it was retried (brain.reopen)
    "cancelled": {},
}

# The brain's view of a worker's presence; the model state is the worker's own
# report (``Worker.model_state``) and is not a brain decision.
WORKER_TRANSITIONS: dict[Presence, dict[str, Presence]] = {
    "up": {"down": "down", "drain": "draining", "restart": "up"},
    "draining": {"undrain": "up", "down": "down", "drain": "draining", "restart": "draining"},
    "down": {"up": "up", "restart": "up"},
}

S = TypeVar("S", bound=str)


def _edges(table: Mapping[S, Mapping[str, S]]) -> list[tuple[str, str, str]]:
    """Every ``(state, event, next_state)`` of a table, in table order."""
    return [(src, event, dst) for src, events in table.items() for event, dst in events.items()]


TABLES: dict[str, list[tuple[str, str, str]]] = {
    "task": _edges(TASK_TRANSITIONS),
    "batch": _edges(BATCH_TRANSITIONS),
    "worker": _edges(WORKER_TRANSITIONS),
}


def advance(obj: TaskRun | Batch | Worker, event: str) -> str | None:
    """Move ``obj.state`` along its kind's table; the new state, or None if illegal."""
    if isinstance(obj, TaskRun):
        task_state = TASK_TRANSITIONS[obj.state].get(event)
        if task_state is not None:
            obj.state = task_state
        return task_state
    if isinstance(obj, Batch):
        batch_state = BATCH_TRANSITIONS[obj.state].get(event)
        if batch_state is not None:
            obj.state = batch_state
        return batch_state
    presence = WORKER_TRANSITIONS[obj.state].get(event)
    if presence is not None:
        obj.state = presence
    return presence


def mermaid(kind: str) -> str:
    """The table as a Mermaid state diagram, for the docs."""
    lines = ["stateDiagram-v2"]
    for src, event, dst in TABLES[kind]:
        lines.append(f"    {src} --> {dst}: {event}")
    return "\n".join(lines)


# --- records ---------------------------------------------------------------------

CancelStage = Literal["", "abort", "kill"]


class FailedAttempt(TypedDict):
    """One failed attempt of a task, as kept for its summary and escalation report."""

    attempt_id: str
    worker: str
    reason: str
    exit_code: int | None
    error: str
    log_tail: str


@dataclass(slots=True, eq=False)
class TaskRun:
    """One task of a batch (a plan task, a foreach template or an expanded item).

    ``spec`` is the ``plans.Task`` it came from (for items, the template's, so
    100,000 items share one); ``command`` and ``deps`` are its own, substituted,
    and ``env`` holds the values its command refers to (``"${LLMO_ITEM_ID}"``).
    ``attempts`` counts attempts spent (from their start); ``seq`` numbers every
    attempt id handed out, spent or not, so ids never repeat.
    """

    id: str
    spec: plans.Task
    command: str
    deps: tuple[str, ...] = ()
    state: TaskState = "pending"
    waiting: int = 0  # dependencies not yet done
    parent: str = ""  # the foreach template an item came from
    children_left: int = 0
    children_failed: int = 0
    attempts: int = 0
    seq: int = 0
    attempt_id: str = ""
    worker: str = ""
    assigned_at: float = 0.0
    started_at: float = 0.0
    first_started_at: float = 0.0
    finished_at: float = 0.0
    last_progress_at: float = 0.0
    tokens: int = 0
    tok_s: float = 0.0
    exit_code: int | None = None
    duration_s: float = 0.0
    lost_workers: int = 0
    refusals: int = 0
    cancel_stage: CancelStage = ""  # how far stopping it has gone
    cancel_at: float = 0.0  # when the next stopping stage is due
    cancel_why: str = ""
    error: str = ""
    failures: list[FailedAttempt] | None = None  # one entry per failed attempt, with log tail
    env: dict[str, str] | None = None  # the values of the command's placeholders
    lost_attempts: dict[str, str] | None = None  # attempt id -> worker, for attempts judged lost
    fail_reason: str = ""  # why it failed for good, where no failed attempt says (lost, model)

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        """Unpickle from a snapshot, giving fields newer than the snapshot their defaults."""
        self.env = None
        self.lost_attempts = None
        self.fail_reason = ""
        for name, value in state[1].items():
            object.__setattr__(self, name, value)


@dataclass(slots=True, eq=False)
class GoalRun:
    """Progress of a goal-driven plan (see ``brain.goal``)."""

    target: int
    tolerance: int
    tracked: str
    pipeline: tuple[str, ...]  # plan task ids that are re-run each round
    cap: int  # candidates that may be tried in all
    round: int = 1
    tried: int = 0
    succeeded: int = 0
    state: GoalState = "running"
    round_ids: dict[str, str] = field(default_factory=dict)  # plan id -> id this round
    members: set[str] = field(default_factory=set)  # pipeline ids of every round
    round_cap: int = 0  # rounds that may start in all (0: no limit)
    discovery: tuple[str, ...] = ()  # plan ids of the discovery tasks
    seen: dict[str, set[str]] = field(default_factory=dict)  # template -> candidate keys
    reason: str = ""  # why an exhausted goal stopped

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        """Unpickle from a snapshot, giving fields newer than the snapshot their defaults.

        A goal from before the round limit keeps running without one, and with
        every one of its pipeline templates as its discovery (new rounds go on).
        """
        values = state[1]
        self.round_cap = 0
        self.discovery = tuple(values.get("pipeline", ()))  # type: ignore[arg-type]
        self.seen = {}
        self.reason = ""
        for name, value in values.items():
            object.__setattr__(self, name, value)


@dataclass(slots=True, eq=False)
class Batch:
    id: str
    plan: str
    plan_path: str
    history_path: str
    config: dict[str, Any]
    priority: int
    priority_name: str
    seq: int  # age order among batches
    created_at: float
    request_id: str = ""
    requester: str = ""
    state: BatchState = "running"
    finished_at: float = 0.0
    tasks: dict[str, TaskRun] = field(default_factory=dict)
    dependents: dict[str, list[str]] = field(default_factory=dict)
    ready: dict[str, collections.deque[str]] = field(default_factory=dict)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    variables: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    goal: GoalRun | None = None
    summary_due: bool = False
    summary_at: float = 0.0
    interrupted_at: float = 0.0  # the brain stopped with it unfinished (0: not since)
    plan_tasks: dict[str, plans.Task] = field(default_factory=dict)  # by plan task id
    # Resumed batches: the tasks an earlier run of this batch completed, kept as done
    # (foreach items among them when their template expands again).
    kept: frozenset[str] = frozenset()
    resumed_from: str = ""  # where ``kept`` came from: "brain" or the files read
    # What attempt ids start with (empty: the batch id). A batch id a submission named
    # may have run before, and workers answer a repeated attempt id with the old
    # result: such batches get ids of their own (``brain.submit``).
    attempt_prefix: str = ""

    event_counts: dict[str, int] = field(default_factory=dict)  # lines written, by event name
    end_reason: str = ""  # why it was cancelled (the operator's words)

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        """Unpickle from a snapshot, giving fields newer than the snapshot their defaults."""
        self.kept = frozenset()
        self.resumed_from = self.attempt_prefix = ""
        self.event_counts = {}
        self.end_reason = ""
        for name, value in state[1].items():
            object.__setattr__(self, name, value)

    @property
    def events_path(self) -> str:
        return f"{self.history_path}/batch_events.jsonl"


@dataclass(slots=True, eq=False)
class Worker:
    """What the brain knows of one worker: its reports, and the attempts it gave it."""

    name: str
    role: Literal["worker", "brain"] = "worker"
    state: Presence = "up"  # see WORKER_TRANSITIONS
    model_state: WorkerState = "cold"  # the worker's report: cold, loading, hot, constrained, ...
    model: str = ""
    gpus: tuple[int, ...] = ()
    models: tuple[str, ...] = ()
    slots: int = 1
    llm_slots: int = 0  # LLM sequences its hot model batches, from its heartbeat
    llm_requests: int = 0  # requests its endpoint serves (or served since its last heartbeat)
    llm_request_at: float = 0.0  # when a heartbeat last reported requests
    endpoint: str = ""  # its OpenAI-compatible endpoint's URL, from its registration
    host: str = ""  # the machine it registered from
    vram_budget_mb: int = 0
    vram_used_mb: int = 0
    pid: int = 0
    interval_s: float = 1.0
    last_seen: float = 0.0
    attempts: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # id -> b, t, vram
    foreign: tuple[str, ...] = ()  # attempts it runs that the brain did not give it
    reports_active: bool = False
    last_active: frozenset[str] = frozenset()
    loading: str = ""  # model the brain asked it to load
    load_since: float = 0.0
    load_failed: dict[str, float] = field(default_factory=dict)  # model -> when
    failed_load: tuple[str, str] = ("", "")  # its last failed load (model, why), until the next
    hot_since: float = 0.0
    unload_sent_at: float = -1e18
    idle_since: float = 0.0
    load_task: tuple[str, str] | None = None  # meta load_llm waiting for this worker
    tok_s: float = 0.0  # its recent generation rate, from its heartbeat
    constraint: str = ""  # why it is constrained, from its heartbeat
    gauges: dict[str, Any] = field(default_factory=dict)  # telemetry summary, see view.py

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        """Unpickle from a snapshot, giving fields newer than the snapshot their defaults."""
        self.endpoint = ""
        self.host = ""
        self.failed_load = ("", "")
        for name, value in state[1].items():
            object.__setattr__(self, name, value)

    @property
    def alive(self) -> bool:
        return self.state != "down"

    def busy(self) -> int:
        return len(self.attempts) + len(self.foreign)

    def free_slots(self) -> int:
        return self.slots - self.busy()

    def free_vram(self) -> int:
        mine = 0
        unseen = 0
        for attempt_id, (_, _, vram) in self.attempts.items():
            mine += vram
            if attempt_id not in self.last_active:
                unseen += vram
        used = self.vram_used_mb + unseen if self.reports_active else max(self.vram_used_mb, mine)
        return self.vram_budget_mb - used


@dataclass(slots=True, eq=False)
class BrainState:
    """Everything the brain knows. ``rev`` counts published changes."""

    config: BrainConfig = field(default_factory=BrainConfig)  # set by the Configure event
    rev: int = 0
    events: int = 0  # events folded so far
    batches: dict[str, Batch] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)
    batch_seq: int = 0
    delayed: list[tuple[float, int, str, str]] = field(default_factory=list)  # heap
    delay_seq: int = 0
    llm_demand_at: dict[str, float] = field(default_factory=dict)  # model -> last demand
    load_failures: dict[str, int] = field(default_factory=dict)  # model -> failed loads in a row
    idle_since: float = 0.0  # when the last batch ended (0 = never idle yet)
    pending_plans: dict[str, PlanSubmit] = field(default_factory=dict)  # by request id
    dispatch_due: bool = False
    last_now: float = 0.0  # the time of the previous event: a long gap is a pause or a jump
    hush_until: float = 0.0  # no attempt is judged lost by a heartbeat before this time

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        """Unpickle from a snapshot, giving fields newer than the snapshot their defaults."""
        self.last_now = self.hush_until = 0.0
        for name, value in state[1].items():
            object.__setattr__(self, name, value)

    def active_batches(self) -> list[Batch]:
        """Running batches, highest priority first, then oldest."""
        running = [b for b in self.batches.values() if b.state == "running"]
        running.sort(key=lambda b: (-b.priority, b.seq))
        return running
