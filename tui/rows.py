"""The rows the monitor shows: a worker, a batch, a task, an events-pane line.

Plain mutable records with the few derived figures each row needs (a
worker's shown state, a batch's progress split and ETA, a task's duration);
``tui.model`` keeps them up to date.

A worker's detail screen draws from two bounded rings on its row: one
``TelemetrySample`` a second (``TELEMETRY_SAMPLES`` of them, five minutes;
a silent second is a sample of ``None``s, a gap) and its last
``WORKER_ATTEMPTS_KEPT`` attempts as ``WorkerAttempt`` records.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from llmo.proto.messages import GoalInfo
from llmo.proto.rates import batch_wall_s, tok_s_text
from llmo.proto.states import BATCH_TERMINAL, TASK_ACTIVE, TASK_TERMINAL, TASK_UNSUCCESSFUL

SPARK_SAMPLES = 180  # tok/s history per worker: 3 minutes at one sample a second
TELEMETRY_SAMPLES = 300  # telemetry history per worker: 5 minutes at one sample a second
WORKER_ATTEMPTS_KEPT = 20  # recent attempts remembered per worker
SAMPLE_S = 1.0
EVENTS_KEPT = 500
ETA_WINDOW_S = 120.0
WORKER_STALE_S = 5.0  # no heartbeat for this long: the row is shown as silent
HEARTBEAT_AMBER_S = 60.0  # a worker's heartbeat age turns amber after this much silence
HEARTBEAT_RED_S = 120.0  # and red after this much
RATE_STALE_S = 5.0  # a task's tok/s older than this is not shown
TASK_HISTORY = 8  # notable events remembered per task (retries, failures)

WORKER_ROLES = frozenset({"worker", "brain"})

# Lifecycle events worth a line in the events pane, with their level. Routine
# task steps (released, assigned, started, succeeded) show in the task table.
EVENT_LEVELS: dict[str, str] = {
    "task_retried": "warning",
    "task_failed": "warning",
    "task_aborting": "warning",
    "task_killing": "error",
    "task_abandoned": "error",
    "task_expanded": "info",
    "batch_accepted": "info",
    "batch_completed": "good",
    "batch_failed": "error",
    "batch_cancelled": "warning",
    "batch_interrupted": "warning",
    "batch_resumed": "info",
    "batch_reopened": "warning",
    "task_reopened": "info",
    "worker_up": "info",
    "worker_registered": "info",
    "worker_down": "error",
    "worker_drain": "warning",
    "worker_undrain": "info",
    "model_load": "info",
    "model_unload": "info",
    "model_hot": "good",
    "model_cold": "info",
    "model_failed": "error",
    "goal_round": "info",
    "goal_reached": "good",
    "goal_exhausted": "error",
    "brain_resumed": "warning",
}
TASK_NOTABLE = frozenset(
    {
        "task_retried",
        "task_failed",
        "task_aborting",
        "task_killing",
        "task_abandoned",
        "task_reopened",
    }
)


class TelemetrySample(NamedTuple):
    """One second of a worker's figures; ``None`` where it reported none (or was silent)."""

    ts: float
    gpu_temp_c: float | None = None  # its hottest GPU
    vram_used_mb: float | None = None  # summed over its GPUs
    power_w: float | None = None  # summed over its GPUs
    cpu_percent: float | None = None
    cpu_temp_c: float | None = None
    tok_s: float | None = None


@dataclass(slots=True)
class WorkerAttempt:
    """An attempt a worker ran, as the snapshot and the task events told it."""

    batch_id: str
    task_id: str
    attempt_id: str = ""
    state: str = "running"  # running, then done, failed, retried, cancelled, ...
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    why: str = ""

    def duration(self, now: float) -> float | None:
        if self.duration_s is not None:
            return self.duration_s
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else now
        return max(0.0, end - self.started_at)


@dataclass(slots=True)
class WorkerRow:
    name: str
    role: str = ""
    state: str = ""  # the worker's own report: cold, loading, hot, constrained, draining
    presence: str = "up"  # the brain's (or broker's) view: up, draining, down
    model: str = ""
    loading: str = ""
    gpus: tuple[int, ...] = ()
    slots: int = 0
    slots_free: int = 0
    vram_budget_mb: int = 0
    vram_used_mb: int = 0
    tok_s: float = 0.0
    telemetry: Any = None  # proto Telemetry from the latest heartbeat
    constraint: str = ""
    endpoint: str = ""  # its OpenAI-compatible endpoint's URL, on its own host
    given_up: str = ""  # why llmo up gave up on its process ("" while it has not)
    host: str = ""
    pid: int = 0
    active: tuple[str, ...] = ()  # the attempt ids it runs now
    last_heartbeat: float = 0.0
    last_sample: float = 0.0
    history: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=SPARK_SAMPLES)
    )
    samples: collections.deque[TelemetrySample] = field(
        default_factory=lambda: collections.deque(maxlen=TELEMETRY_SAMPLES)
    )
    attempts: collections.deque[WorkerAttempt] = field(
        default_factory=lambda: collections.deque(maxlen=WORKER_ATTEMPTS_KEPT)
    )

    @property
    def shown_state(self) -> str:
        if self.given_up:
            return "given up"
        if self.presence == "down" or self.state == "down":
            return "down"
        if self.presence == "draining" and self.state != "constrained":
            return "draining"
        return self.state or "up"

    def silent(self, now: float) -> bool:
        """Up by the brain's account, but no heartbeat heard for a while."""
        return (
            self.shown_state not in ("down", "given up")
            and now - self.last_heartbeat > WORKER_STALE_S
        )

    def holding(self) -> list[str]:
        """The task ids of the attempts it runs now, in its own order."""
        return [task_of_attempt(a) for a in self.active]

    def attempt(self, attempt_id: str) -> WorkerAttempt | None:
        return next((a for a in reversed(self.attempts) if a.attempt_id == attempt_id), None)

    def heartbeat_age(self, now: float) -> float | None:
        """Seconds since its last heartbeat (heard here, or by the brain); None: never heard."""
        if not self.last_heartbeat:
            return None
        return max(0.0, now - self.last_heartbeat)


def task_of_attempt(attempt_id: str) -> str:
    """``BATCH:TASK:SEQ`` -> ``TASK``; an id of another shape is its own task id."""
    head, sep, _ = attempt_id.rpartition(":")
    if not sep:
        return attempt_id
    _, sep, task = head.partition(":")
    return task if sep else head


@dataclass(frozen=True, slots=True)
class RigCounts:
    """The tasks of every batch the monitor knows, by what they are doing."""

    running: int = 0  # an attempt is out on a worker
    queued: int = 0  # waiting: for dependencies, a worker or a retry
    done: int = 0
    failed: int = 0  # failed, or skipped because a dependency failed
    cancelled: int = 0


@dataclass(slots=True)
class TaskRow:
    id: str
    state: str = ""
    task_class: str = ""
    executor: str = ""
    worker: str = ""
    attempts: int = 0
    attempt_id: str = ""
    counted: str = ""  # the attempt id last counted in ``attempts``
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    error: str = ""
    template: str = ""
    deps: tuple[str, ...] | None = None  # from the brain's snapshot; None: not known
    tokens: int = 0
    tok_s: float = 0.0
    rate_at: float = 0.0
    history: list[str] | None = None

    def duration(self, now: float) -> float | None:
        if self.duration_s is not None and self.state in TASK_TERMINAL:
            return self.duration_s
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else now
        return max(0.0, end - self.started_at)

    def rate(self, now: float) -> float | None:
        if self.tok_s and (self.state in TASK_TERMINAL or now - self.rate_at <= RATE_STALE_S):
            return self.tok_s
        return None

    def remember(self, line: str) -> None:
        if self.history is None:
            self.history = []
        self.history.append(line)
        del self.history[:-TASK_HISTORY]


@dataclass(slots=True)
class BatchRow:
    id: str
    plan: str = ""
    plan_path: str = ""
    history_path: str = ""
    state: str = "running"
    priority_name: str = ""
    created_at: float = 0.0
    finished_at: float | None = None
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    tokens: int = 0  # its succeeded tasks' generated tokens, as of the last snapshot
    goal: GoalInfo | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the settings it was submitted with
    templates: set[str] = field(default_factory=set)
    samples: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=int(ETA_WINDOW_S / SAMPLE_S) + 2)
    )

    @property
    def finished(self) -> bool:
        return self.state in BATCH_TERMINAL

    @property
    def total(self) -> int:
        return sum(v for v in self.counts.values() if v > 0)

    def rate_text(self, now: float, running_tokens: int = 0) -> str:
        """Its tok/s as every view prints it (``proto.rates``): tokens over wall time;
        ``running_tokens`` adds what its running attempts generated so far."""
        wall = batch_wall_s(self.created_at, self.finished_at, now)
        return tok_s_text(self.tokens + running_tokens, wall)

    def split(self) -> tuple[int, int, int, int]:
        """(done, running, failed or skipped or cancelled, the rest)."""
        c = self.counts
        done = max(0, c.get("done", 0))
        running = sum(max(0, c.get(s, 0)) for s in TASK_ACTIVE)
        bad = sum(max(0, c.get(s, 0)) for s in TASK_UNSUCCESSFUL)
        return done, running, bad, max(0, self.total - done - running - bad)

    def terminal(self) -> int:
        done, _, bad, _ = self.split()
        return done + bad

    def elapsed(self, now: float) -> float:
        end = self.finished_at if self.finished_at else now
        return max(0.0, end - self.created_at) if self.created_at else 0.0

    def eta(self, now: float) -> float | None:
        """Seconds left at the recent completion rate (the whole run's, early on)."""
        if self.finished:
            return None
        left = self.total - self.terminal()
        if left <= 0:
            return None
        rate = 0.0
        if len(self.samples) >= 2:
            t0, n0 = self.samples[0]
            t1, n1 = self.samples[-1]
            if t1 > t0 and n1 > n0:
                rate = (n1 - n0) / (t1 - t0)
        if rate <= 0.0:
            elapsed = self.elapsed(now)
            if elapsed > 0 and self.terminal() > 0:
                rate = self.terminal() / elapsed
        return left / rate if rate > 0 else None


@dataclass(frozen=True, slots=True)
class EventLine:
    ts: float
    level: str  # info, good, warning, error
    text: str
    batch_id: str = ""
    task_id: str = ""
    worker: str = ""
