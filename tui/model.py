"""The monitor's state: what the brain's snapshot and the published updates say.

Theory of operation
-------------------
``Model`` is pure: it reads no clock and no socket; every call takes ``now``
(the monitor's wall clock). It is seeded from a ``SnapshotReply`` at revision
R and then folds the ``BatchEvent``s with ``rev > R`` (the zguide's Clone
pattern: an event the snapshot already holds is skipped), plus the telemetry
that carries no revision: heartbeats and task progress, newest wins.

A snapshot narrowed to one batch (taken when the operator selects a batch
whose tasks the model does not hold) refreshes that batch and its tasks under
a revision floor of its own, so events of the other batches that are still
on their way are not skipped.

Memory is bounded: task rows are kept for running batches and the selected
batch only (a finished batch keeps its counts), events are a ring, and each
worker's tok/s history and telemetry history are rings of one sample a
second (a silent second is a gap). Each worker also keeps its last few
attempts (``WorkerAttempt``), from the snapshot's tasks and the task events
that name it, for its detail screen.

Batch counts move task by task (old state -1, new state +1). A task the
model never saw (the brain truncates very large snapshots) only adds, and
the counts carried by a batch's final event replace the lot.

``changes`` names what moved since the app last drew (``workers``,
``batches``, ``tasks``, ``events``, ``link``) so it redraws only that.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from llmo.proto.messages import (
    BatchEvent,
    BatchInfo,
    GoalInfo,
    GpuGauges,
    GpuReading,
    Heartbeat,
    PeerDown,
    PeerUp,
    SnapshotReply,
    SupervisorReport,
    TaskInfo,
    TaskProgress,
    Telemetry,
    WorkerInfo,
)
from llmo.proto.states import TASK_ACTIVE, TASK_TERMINAL, GoalState
from llmo.tui.rows import (
    EVENT_LEVELS,
    EVENTS_KEPT,
    SAMPLE_S,
    TASK_NOTABLE,
    WORKER_ROLES,
    WORKER_STALE_S,
    BatchRow,
    EventLine,
    RigCounts,
    TaskRow,
    TelemetrySample,
    WorkerAttempt,
    WorkerRow,
)
from llmo.tui.sorting import TASK_RANK
from llmo.tui.updates import ActionResult, LinkStatus, Update
from llmo.tui.wording import describe


def _num(value: Any, default: float | None = None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _sample(hb: Heartbeat, now: float) -> TelemetrySample:
    """One second of a worker's figures, from its heartbeat."""
    tele = hb.telemetry
    if tele is None:
        return TelemetrySample(now, tok_s=hb.tok_s)
    temps = [g.temperature_c for g in tele.gpus if g.temperature_c is not None]
    used = [g.vram_used_mb for g in tele.gpus if g.vram_used_mb is not None]
    power = [g.power_w for g in tele.gpus if g.power_w is not None]
    return TelemetrySample(
        now,
        gpu_temp_c=max(temps) if temps else None,
        vram_used_mb=float(sum(used)) if used else None,
        power_w=sum(power) if power else None,
        cpu_percent=tele.cpu_percent,
        cpu_temp_c=tele.cpu_temperature_c,
        tok_s=hb.tok_s,
    )


# What a task event says of the attempt it names: its outcome, and whether it ended.
_ATTEMPT_OUTCOMES: dict[str, tuple[str, bool]] = {
    "task_succeeded": ("done", True),
    "task_failed": ("failed", True),
    "task_abandoned": ("failed", True),
    "task_cancelled": ("cancelled", True),
    "task_aborting": ("aborting", False),
    "task_killing": ("killing", False),
}


def _telemetry_from(gauges: GpuGauges, gpus: tuple[int, ...]) -> Telemetry:
    """The brain's summary of a worker's telemetry, shaped like a heartbeat's,
    until the worker's own heartbeat arrives."""
    cpu = Telemetry(cpu_percent=gauges.cpu_percent, cpu_temperature_c=gauges.cpu_temperature_c)
    if not gauges.available:
        return replace(cpu, note=gauges.note)
    reading = GpuReading(
        index=gpus[0] if gpus else 0,
        temperature_c=gauges.temperature_c,
        vram_used_mb=gauges.vram_used_mb or None,
        vram_total_mb=gauges.vram_total_mb or None,
        power_w=gauges.power_w,
        util_percent=gauges.util_percent,
    )
    return replace(cpu, gpu_available=True, gpus=(reading,))


TASK_QUEUED = frozenset(
    {"pending", "ready", "delayed"}
)  # waiting for a worker, a dependency or a retry

_GOAL_ENDS: dict[str, GoalState] = {"goal_reached": "reached", "goal_exhausted": "exhausted"}
_GOAL_FIGURES = {"succeeded": "succeeded", "tried": "tried", "cap": "cap"}
_GOAL_FIGURES |= {"rounds": "rounds", "round": "rounds"}


def _goal_after(goal: GoalInfo | None, ev: BatchEvent) -> GoalInfo:
    """The goal as a ``goal_*`` event leaves it (its detail carries the new figures)."""
    if goal is None:
        goal = GoalInfo(state="running", target=0)
    figures: dict[str, Any] = {
        field: value
        for key, field in _GOAL_FIGURES.items()
        if type(value := ev.detail.get(key)) is int
    }
    return replace(goal, state=_GOAL_ENDS.get(ev.event, goal.state), **figures)


class Model:
    def __init__(self) -> None:
        self.rev = -1
        self.logged_rev = -1  # the newest event whose line the events pane has seen
        self.batch_rev: dict[str, int] = {}
        self.workers: dict[str, WorkerRow] = {}
        self.batches: dict[str, BatchRow] = {}
        self.tasks: dict[str, dict[str, TaskRow]] = {}
        self.events: collections.deque[EventLine] = collections.deque(maxlen=EVENTS_KEPT)
        self.link = LinkStatus()
        self.selected_batch = ""
        self.snapshot_at: float = 0.0
        self.last_heard: float = 0.0
        self.supervisor: SupervisorReport | None = None  # llmo up's latest report
        self.changes: set[str] = set()

    # --- the fold --------------------------------------------------------------------

    def apply(self, update: Update, now: float) -> None:
        """Fold one feed update, in its order: snapshot, events, telemetry, link."""
        for batch_id, reply in update.snapshots:
            self.seed(reply, now, batch_id=batch_id)
        for event in update.events:
            self.apply_event(event, now)
        for peer in update.peers:
            self.peer(peer, now)
        for hb in update.heartbeats:
            self.heartbeat(hb, now)
        for msg in update.progress:
            self.progress(msg, now)
        for result in update.results:
            self.result(result, now)
        for text in update.notes:
            self.note(now, "warning", text)
        if update.supervisor is not None:
            self.supervise(update.supervisor, now)
        if update.link is not None and update.link != self.link:
            self.set_link(update.link)
        if update.received:
            self.last_heard = now

    def take_changes(self) -> set[str]:
        changed, self.changes = self.changes, set()
        return changed

    # --- snapshots -------------------------------------------------------------------

    def seed(self, reply: SnapshotReply, now: float, *, batch_id: str = "") -> None:
        if batch_id:
            self._seed_batch(reply, batch_id)
            return
        if not self.snapshot_at:
            self.note(
                now,
                "info",
                f"joined at revision {reply.rev}; earlier events are in "
                "each batch's batch_events.jsonl",
            )
        self.rev = reply.rev
        self.logged_rev = min(self.logged_rev, reply.rev) if self.snapshot_at else reply.rev
        self.batch_rev.clear()
        self.snapshot_at = now
        old_workers = self.workers
        self.workers = {}
        for w in reply.workers:
            row = old_workers.pop(w.name, None) or WorkerRow(name=w.name)
            self._worker_from(row, w)
            if w.last_seen and reply.ts:  # the brain's clock, so only the age is carried over
                heard = now - max(0.0, reply.ts - w.last_seen)
                row.last_heartbeat = max(row.last_heartbeat, heard)
            self.workers[row.name] = row
        for name, row in old_workers.items():  # heard from, but unknown to the brain
            if now - row.last_heartbeat <= WORKER_STALE_S:
                self.workers[name] = row
        old_batches = self.batches
        self.batches = {}
        for b in reply.batches:
            batch_row = old_batches.get(b.id) or BatchRow(id=b.id)
            self._batch_from(batch_row, b)
            self.batches[batch_row.id] = batch_row
        old_tasks = self.tasks
        self.tasks = self._tasks_from(reply.tasks)
        selected = self.selected_batch
        if selected and selected not in self.tasks and selected in old_tasks:
            batch = self.batches.get(selected)
            if batch is not None and batch.finished:
                self.tasks[selected] = old_tasks[selected]  # a finished batch does not change
        if self.supervisor is not None:
            self.supervise(self.supervisor, now)  # rows the snapshot replaced
        self.changes |= {"workers", "batches", "tasks"}

    def _seed_batch(self, reply: SnapshotReply, batch_id: str) -> None:
        for b in reply.batches:
            if b.id == batch_id:
                row = self.batches.get(batch_id) or BatchRow(id=batch_id)
                self._batch_from(row, b)
                self.batches[batch_id] = row
        mine = (t for t in reply.tasks if t.batch_id == batch_id)
        tasks = self._tasks_from(mine)
        self.tasks[batch_id] = tasks.get(batch_id, {})
        if reply.rev > self.rev:
            self.batch_rev[batch_id] = reply.rev
        self.changes |= {"batches", "tasks"}

    @staticmethod
    def _worker_from(row: WorkerRow, w: WorkerInfo) -> None:
        row.role = w.role or row.role
        row.presence = w.presence
        if w.state and w.state != "down":
            row.state = w.state
        row.model = w.model
        row.loading = w.loading
        row.gpus = w.gpus or row.gpus
        row.slots = w.slots
        row.slots_free = w.slots_free
        row.vram_budget_mb = w.vram_budget_mb
        row.vram_used_mb = w.vram_used_mb
        row.tok_s = w.tok_s
        row.constraint = w.constraint
        row.endpoint = w.endpoint or row.endpoint
        row.host = w.host or row.host
        row.pid = w.pid or row.pid
        row.active = w.attempts
        if row.telemetry is None and w.gpu is not None:
            row.telemetry = _telemetry_from(w.gpu, row.gpus)
        if row.presence == "down":
            row.tok_s = 0.0

    @staticmethod
    def _batch_from(row: BatchRow, b: BatchInfo) -> None:
        row.plan = b.plan or row.plan
        row.plan_path = b.plan_path or row.plan_path
        row.history_path = b.history_path or row.history_path
        row.state = b.state
        row.priority_name = b.priority_name or row.priority_name
        row.created_at = b.created_at
        row.finished_at = b.finished_at
        row.counts = collections.Counter(b.counts)
        row.tokens = b.tokens
        row.config = dict(b.config)
        if b.goal is not None:
            row.goal = b.goal

    def _tasks_from(self, tasks: Iterable[TaskInfo]) -> dict[str, dict[str, TaskRow]]:
        out: dict[str, dict[str, TaskRow]] = {}
        for t in tasks:
            batch_id = t.batch_id
            row = TaskRow(
                id=t.id,
                state=t.state,
                task_class=t.task_class,
                executor=t.executor,
                worker=t.worker,
                attempts=t.attempts,
                attempt_id=t.attempt_id,
                started_at=t.started_at,
                finished_at=t.finished_at,
                exit_code=t.exit_code,
                error=t.error,
                template=t.template,
                deps=t.deps,
            )
            row.counted = row.attempt_id if row.attempts else ""
            out.setdefault(batch_id, {})[row.id] = row
            if t.worker and t.attempt_id:
                self._attempt_from(batch_id, row)
            if row.template and batch_id in self.batches:
                self.batches[batch_id].templates.add(row.template)
        return out

    def _attempt_from(self, batch_id: str, task: TaskRow) -> None:
        """A snapshot's task as its worker's attempt (updated where it is known)."""
        worker = self.workers.get(task.worker)
        if worker is None:
            return
        attempt = worker.attempt(task.attempt_id)
        if attempt is None:
            attempt = WorkerAttempt(batch_id, task.id, task.attempt_id)
            started = task.started_at or 0.0
            place = len(worker.attempts)
            while place and (worker.attempts[place - 1].started_at or 0.0) > started:
                place -= 1  # the snapshot lists tasks in plan order, not as they started
            if len(worker.attempts) == worker.attempts.maxlen:
                if place == 0:
                    return  # older than every attempt remembered
                worker.attempts.popleft()
                place -= 1
            worker.attempts.insert(place, attempt)
        attempt.state = "running" if task.state in TASK_ACTIVE else task.state
        attempt.started_at = task.started_at
        attempt.finished_at = task.finished_at if task.state in TASK_TERMINAL else None
        attempt.exit_code = task.exit_code
        attempt.why = task.error or attempt.why

    # --- events ----------------------------------------------------------------------

    def apply_event(self, ev: BatchEvent, now: float) -> bool:
        """Fold one lifecycle event; False when the snapshot already held it."""
        floor = self.batch_rev.get(ev.batch_id, self.rev)
        if ev.rev <= floor:
            # The snapshot holds its effect, but a snapshot taken on the heels
            # of the event (a new batch, a gap) must not hide it from the pane.
            if ev.rev > self.logged_rev:
                self._line(ev, ev.ts or now)
            return False
        self.rev = max(self.rev, ev.rev)
        if self.batch_rev:
            self.batch_rev = {k: v for k, v in self.batch_rev.items() if v > self.rev}
        when = ev.ts or now
        if ev.task_id:
            self._task_event(ev, when)
            if ev.worker:
                self._worker_attempt(ev, when)
        elif ev.batch_id:
            self._batch_event(ev, when)
        elif ev.worker:
            self._worker_event(ev, when)
        self._line(ev, when)
        return True

    def _line(self, ev: BatchEvent, when: float) -> None:
        self.logged_rev = max(self.logged_rev, ev.rev)
        level = EVENT_LEVELS.get(ev.event)
        if level is None and not ev.task_id:
            level = "info"  # an event this monitor does not know: show it anyway
        if level is not None:
            self._log(
                EventLine(
                    when,
                    level,
                    describe(ev, self._plan_of(ev.batch_id)),
                    ev.batch_id,
                    ev.task_id,
                    ev.worker,
                )
            )

    def _plan_of(self, batch_id: str) -> str:
        batch = self.batches.get(batch_id)
        return batch.plan if batch is not None else ""

    def _task_event(self, ev: BatchEvent, when: float) -> None:
        batch = self.batches.get(ev.batch_id)
        if batch is None:
            batch = self.batches[ev.batch_id] = BatchRow(id=ev.batch_id, created_at=when)
        rows = self.tasks.get(ev.batch_id)
        if rows is None and not batch.finished:
            rows = self.tasks[ev.batch_id] = {}
        row = rows.get(ev.task_id) if rows is not None else None
        old = row.state if row is not None else None
        new = ev.state
        if new and new != old:
            if old:
                batch.counts[old] -= 1
            batch.counts[new] += 1
            self.changes.add("batches")
        if ev.event == "task_expanded":
            batch.templates.add(ev.task_id)
        if rows is None:
            return
        if row is None:
            row = rows[ev.task_id] = TaskRow(id=ev.task_id, template=self._template(batch, ev))
            template = rows.get(row.template) if row.template else None
            if template is not None:
                row.task_class, row.executor = template.task_class, template.executor
        self._task_fields(row, ev, when)
        if ev.batch_id == self.selected_batch:
            self.changes.add("tasks")

    def _worker_attempt(self, ev: BatchEvent, when: float) -> None:
        """Keep the worker's recent attempts: a start adds one, an outcome closes it."""
        worker = self.workers.get(ev.worker)
        if worker is None:
            return
        attempt = worker.attempt(ev.attempt_id) if ev.attempt_id else None
        if ev.event == "task_started":
            if attempt is None:
                attempt = WorkerAttempt(ev.batch_id, ev.task_id, ev.attempt_id)
                worker.attempts.append(attempt)
            attempt.started_at = when
            self.changes.add("workers")
            return
        if attempt is None:  # a retry's event no longer names the attempt
            attempt = next(
                (
                    a
                    for a in reversed(worker.attempts)
                    if a.task_id == ev.task_id and a.batch_id == ev.batch_id
                ),
                None,
            )
        if attempt is None:
            return
        detail = ev.detail
        outcome = _ATTEMPT_OUTCOMES.get(ev.event)
        if ev.event == "task_retried":
            outcome = ("failed, retried" if attempt.state == "failed" else "retried", True)
        elif outcome is None and ev.state in TASK_TERMINAL and attempt.finished_at is None:
            outcome = (ev.state, True)
        if outcome is None:
            return
        attempt.state, ended = outcome
        if ended and attempt.finished_at is None:
            attempt.finished_at = when
        duration = _num(detail.get("duration_s"))
        if duration is not None:
            attempt.duration_s = duration
        if type(detail.get("exit_code")) is int:
            attempt.exit_code = detail["exit_code"]
        why = detail.get("error") or detail.get("reason")
        if isinstance(why, str) and why and not attempt.why:
            attempt.why = why
        self.changes.add("workers")

    @staticmethod
    def _template(batch: BatchRow, ev: BatchEvent) -> str:
        best = ""
        for template in batch.templates:
            if ev.task_id.startswith(template + "_") and len(template) > len(best):
                best = template
        return best

    @staticmethod
    def _task_fields(row: TaskRow, ev: BatchEvent, when: float) -> None:
        if ev.state:
            row.state = ev.state
        if ev.worker:
            row.worker = ev.worker
        if ev.attempt_id:
            row.attempt_id = ev.attempt_id
        detail = ev.detail
        if ev.event == "task_reopened":  # the operator's retry: a fresh attempt budget
            row.attempts = 0
            row.error = ""
            row.exit_code = row.duration_s = None
        if ev.event == "task_started":
            if ev.attempt_id and ev.attempt_id != row.counted:
                row.attempts += 1
                row.counted = ev.attempt_id
            row.started_at = when
            row.finished_at = row.duration_s = None
            row.tokens, row.tok_s = 0, 0.0
        elif row.state in ("ready", "delayed", "pending"):
            row.worker = ""
            row.started_at = row.finished_at = None
        if row.state in TASK_TERMINAL:
            row.finished_at = when
            duration = _num(detail.get("duration_s"))
            if duration is not None:
                row.duration_s = duration
            if "exit_code" in detail:
                row.exit_code = detail["exit_code"]
        why = detail.get("error") or (detail.get("reason") if ev.event == "task_retried" else "")
        if isinstance(why, str) and why:
            row.error = why
        if ev.event in TASK_NOTABLE:
            row.remember(describe(ev, ""))

    def _batch_event(self, ev: BatchEvent, when: float) -> None:
        batch = self.batches.get(ev.batch_id)
        if batch is None:
            batch = self.batches[ev.batch_id] = BatchRow(id=ev.batch_id, created_at=when)
        detail = ev.detail
        if ev.event == "batch_accepted":
            batch.plan = str(detail.get("plan", batch.plan))
            batch.priority_name = str(detail.get("priority", batch.priority_name))
            batch.created_at = batch.created_at or when
            if not batch.counts and isinstance(detail.get("tasks"), int):
                batch.counts["pending"] = detail["tasks"]
            self.tasks.setdefault(ev.batch_id, {})
        if ev.state:
            batch.state = ev.state
        if isinstance(detail.get("counts"), dict):
            batch.counts = collections.Counter({k: int(v) for k, v in detail["counts"].items()})
        if ev.event.startswith("goal_"):
            batch.goal = _goal_after(batch.goal, ev)
        if ev.event == "batch_reopened":  # a retried task: it runs again
            batch.finished_at = None
        if batch.finished:
            batch.finished_at = batch.finished_at or when
            if ev.batch_id != self.selected_batch:
                self.tasks.pop(ev.batch_id, None)  # keep counts only
        self.changes.add("batches")

    def _worker_event(self, ev: BatchEvent, when: float) -> None:
        row = self.workers.get(ev.worker)
        if row is None:
            row = self.workers[ev.worker] = WorkerRow(name=ev.worker)
        model = ev.detail.get("model")
        name = ev.event
        if name in ("worker_up", "worker_registered", "worker_undrain"):
            # A restarted worker registers again but stays draining if it was.
            if name != "worker_registered" or row.presence == "down":
                row.presence = "up"
            if isinstance(ev.detail.get("role"), str):
                row.role = ev.detail["role"]
        elif name == "worker_down":
            row.presence = "down"
            row.tok_s = 0.0
        elif name == "worker_drain":
            row.presence = "draining"
        elif name == "model_load":
            row.loading = str(model or "")
        elif name == "model_hot":
            row.loading = ""
            row.model = str(model or row.model)
            row.state = "hot"
        elif name in ("model_cold", "model_failed"):
            row.loading = ""
            row.model = ""
            row.state = "cold"
        self.changes.add("workers")

    # --- telemetry -------------------------------------------------------------------

    def heartbeat(self, hb: Heartbeat, now: float) -> None:
        if hb.role not in WORKER_ROLES:
            return  # tools and the brain itself heartbeat as clients
        row = self.workers.get(hb.src)
        if row is None:
            row = self.workers[hb.src] = WorkerRow(name=hb.src)
        row.role = hb.role
        if hb.state:
            row.state = hb.state
        row.model = hb.model
        row.slots = hb.slots_total or row.slots
        row.slots_free = hb.slots_free
        row.vram_budget_mb = hb.vram_budget_mb or row.vram_budget_mb
        row.vram_used_mb = hb.vram_used_mb
        row.tok_s = hb.tok_s
        row.telemetry = hb.telemetry
        row.active = hb.active
        if hb.constraint != row.constraint and row.last_heartbeat:
            if hb.constraint:
                self._log(
                    EventLine(
                        now,
                        "warning",
                        f"{hb.src} constrained: {hb.constraint.removeprefix('constrained: ')}",
                        worker=hb.src,
                    )
                )
            else:
                self._log(
                    EventLine(now, "good", f"{hb.src} within its limits again", worker=hb.src)
                )
        row.constraint = hb.constraint
        if not row.gpus and hb.telemetry is not None and hb.telemetry.gpus:
            row.gpus = tuple(g.index for g in hb.telemetry.gpus)
        if row.presence == "down":
            row.presence = "up"  # it speaks again; the brain's worker_up follows
        row.last_heartbeat = now
        if now - row.last_sample >= SAMPLE_S * 0.95:
            row.history.append(hb.tok_s)
            row.samples.append(_sample(hb, now))
            row.last_sample = now
        self.changes.add("workers")

    def progress(self, msg: TaskProgress, now: float) -> None:
        row = self.tasks.get(msg.batch_id, {}).get(msg.task_id)
        if row is None or (row.attempt_id and row.attempt_id != msg.attempt_id):
            return
        row.tokens = msg.tokens
        row.tok_s = msg.tok_s
        row.rate_at = now
        if msg.batch_id == self.selected_batch:
            self.changes.add("tasks")

    def peer(self, msg: PeerUp | PeerDown, now: float) -> None:
        row = self.workers.get(msg.peer)
        if isinstance(msg, PeerDown):
            if row is not None and row.presence != "down":
                row.presence = "down"
                row.tok_s = 0.0
                self.changes.add("workers")
            who = "the brain" if msg.peer == "brain" else msg.peer
            if row is not None or msg.peer == "brain":
                self._log(
                    EventLine(
                        msg.ts or now,
                        "error",
                        f"{who} silent for {msg.silent_s:.1f}s (broker)",
                        worker=msg.peer,
                    )
                )
        elif row is not None and row.presence == "down":
            row.presence = "up"
            self.changes.add("workers")

    def supervise(self, report: SupervisorReport, now: float) -> None:
        """``llmo up``'s children: a worker it gave up on shows ``given up`` with why."""
        self.supervisor = report
        for child in report.children:
            if child.kind != "worker":
                continue
            row = self.workers.get(child.name)
            stopped = child.state in ("given_up", "config_error")
            if row is None:
                if not stopped:
                    continue
                row = self.workers[child.name] = WorkerRow(name=child.name, presence="down")
            why = ""
            if stopped:
                code = "" if child.exit_code is None else f" (exit code {child.exit_code})"
                if child.state == "config_error":
                    head = "configuration error"
                else:
                    head = f"{child.restarts} restarts in {report.window_s:g} s"
                why = f"{head}{code}: {child.reason or 'nothing in its log'}"
            if why == row.given_up:
                continue
            if why:
                self._log(
                    EventLine(
                        now,
                        "error",
                        f"{child.name} given up by llmo up after {why}; x restarts it",
                        worker=child.name,
                    )
                )
            else:
                self._log(EventLine(now, "info", f"{child.name} running again under llmo up"))
            row.given_up = why
            self.changes.add("workers")

    # --- time, selection, notes ---------------------------------------------------------

    def tick(self, now: float) -> None:
        """Once a second: history samples for silent workers, ETA samples for batches."""
        for row in self.workers.values():
            if now - row.last_sample >= SAMPLE_S * 0.95 and (
                row.shown_state in ("down", "given up") or now - row.last_heartbeat > 2 * SAMPLE_S
            ):
                row.history.append(0.0)
                row.samples.append(TelemetrySample(now))  # a gap
                row.last_sample = now
        for batch in self.batches.values():
            if not batch.finished:
                batch.samples.append((now, batch.terminal()))
        self.changes |= {"workers", "batches"}

    def select_batch(self, batch_id: str) -> bool:
        """Show ``batch_id``'s tasks; True when the model must fetch them first."""
        previous = self.selected_batch
        self.selected_batch = batch_id
        if previous and previous != batch_id:
            batch = self.batches.get(previous)
            if batch is not None and batch.finished:
                self.tasks.pop(previous, None)
        self.changes.add("tasks")
        return bool(batch_id) and batch_id not in self.tasks

    def set_link(self, status: LinkStatus) -> None:
        old = self.link
        self.link = status
        self.changes.add("link")
        if status.state != old.state:
            if status.state == "down":
                self._log(EventLine(status.since, "error", f"link down: {status.detail}"))
            elif status.state == "no_brain":
                self._log(EventLine(status.since, "error", status.detail or "no brain"))
            elif status.state == "live" and old.state in ("down", "no_brain"):
                self._log(EventLine(status.since, "good", "link back: fresh snapshot taken"))

    def result(self, result: ActionResult, now: float) -> None:
        level = "good" if result.ok else "error"
        self._log(EventLine(now, level, f"{result.label}: {result.text}"))

    def note(self, now: float, level: str, text: str) -> None:
        self._log(EventLine(now, level, text))

    def _log(self, line: EventLine) -> None:
        self.events.appendleft(line)
        self.changes.add("events")

    # --- queries ------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return self.link.state == "live"

    def batch_rate_text(self, batch_id: str, now: float) -> str:
        """The batch's tok/s (``proto.rates``), with its running tasks' tokens so far."""
        row = self.batches[batch_id]
        tasks = self.tasks.get(batch_id, {}).values()
        running = 0 if row.finished else sum(t.tokens for t in tasks if t.state in TASK_ACTIVE)
        return row.rate_text(now, running)

    def rig_counts(self) -> RigCounts:
        """Every known batch's tasks, counted as the header shows them (a foreach
        template that expanded counts as its children do, not itself)."""
        total: collections.Counter[str] = collections.Counter()
        for batch in self.batches.values():
            total.update({state: n for state, n in batch.counts.items() if n > 0})
        return RigCounts(
            running=sum(total[s] for s in TASK_ACTIVE),
            queued=sum(total[s] for s in TASK_QUEUED),
            done=total["done"],
            failed=total["failed"] + total["skipped"],
            cancelled=total["cancelled"],
        )

    def rig_tok_s(self) -> float:
        return sum(
            w.tok_s for w in self.workers.values() if w.shown_state not in ("down", "given up")
        )

    def batch_order(self) -> list[BatchRow]:
        """Running batches first (oldest first), then finished ones (newest first)."""
        running = sorted(
            (b for b in self.batches.values() if not b.finished), key=lambda b: (b.created_at, b.id)
        )
        ended = sorted(
            (b for b in self.batches.values() if b.finished),
            key=lambda b: (-(b.finished_at or b.created_at), b.id),
        )
        return running + ended

    def task_rows(
        self, batch_id: str, text: str = "", *, live_first: bool = False
    ) -> list[TaskRow]:
        """The batch's tasks matching every word of ``text``, in plan order or
        with the live ones first (running, then waiting to retry or failed)."""
        rows = list(self.tasks.get(batch_id, {}).values())
        terms = text.lower().split()
        if terms:
            rows = [row for row in rows if all(_matches(row, term) for term in terms)]
        if live_first:
            rows.sort(key=lambda row: TASK_RANK.get(row.state, 2))  # stable: plan order within
        return rows


_FIELDS = {"state": "state", "class": "task_class", "worker": "worker", "task": "id"}


def _matches(row: TaskRow, term: str) -> bool:
    key, sep, value = term.partition(":")
    if sep and key in _FIELDS:
        return str(getattr(row, _FIELDS[key])).lower().startswith(value)
    return any(term in str(v).lower() for v in (row.id, row.state, row.task_class, row.worker))
