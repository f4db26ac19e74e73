"""A harness for the brain's pure core: a fake clock, and workers simulated in memory.

``Rig`` owns a core state and a clock (a float it moves by hand). ``feed``
steps one event and keeps the commands; ``ReadPlan`` and ``ReadManifest``
commands are answered from ``plans`` / ``manifests`` at once (as the shell
would, and through the same ``step``), so a test drives the core with
messages only. ``auto`` runs simulated workers: every assignment is started
and finished by ``outcome(task_id, attempt_no)``, which returns ``"done"``,
an exit code, ``"hang"`` (never answers) or ``"lost"`` (the worker dies).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable
from typing import Any

from llmo.brain.commands import ReadManifest, ReadPlan, Send
from llmo.brain.config import BrainConfig
from llmo.brain.core import new_state, step
from llmo.brain.events import Configure, ManifestRead, PlanLoaded, Received, Tick
from llmo.proto.messages import (
    Heartbeat,
    Message,
    ModelStatus,
    PlanSubmit,
    Register,
    TaskAssign,
    TaskDone,
    TaskFailed,
    TaskStarted,
)


def plan_text(*tasks: str, name: str = "test", goal: str = "") -> str:
    """plan.md text from task blocks written as ``id | class | command | deps [| extra]``."""
    out = [f"# Plan: {name}", "", "## Objective", "test", "", "## Tasks", ""]
    for spec in tasks:
        parts = [p.strip() for p in spec.split("|")]
        task_id, cls, command = parts[0], parts[1], parts[2]
        deps = parts[3] if len(parts) > 3 and parts[3] else "none"
        executor = "brain" if cls == "brain" else "worker"
        out += [
            f"### {task_id}",
            f"- **executor**: {executor}",
            f"- **task_class**: {cls}",
            f"- **command**: `{command}`",
            f"- **depends_on**: {deps}",
        ]
        for extra in parts[4:]:
            key, _, value = extra.partition("=")
            out.append(f"- **{key.strip()}**: {value.strip()}")
        out.append("")
    if goal:
        out += ["## Goal", goal, ""]
    return "\n".join(out)


class Rig:
    def __init__(self, config: BrainConfig | None = None, now: float = 1_700_000_000.0) -> None:
        self.state = new_state()
        self.now = now
        self.commands: list[Any] = []
        self.sent: list[Message] = []
        self.events: list[tuple[float, Any]] = []
        self.plans: dict[str, str] = {}
        self.manifests: dict[str, Any] = {}  # template id -> items, or an error string
        self.folders: dict[str, dict[str, Any]] = {}  # batch folder -> what read_prior finds
        self.ids = itertools.count(1)
        self.answered: set[str] = set()  # attempts auto() or start() answered
        self.feed(Configure((config or BrainConfig()).to_dict()))

    # --- driving --------------------------------------------------------------

    def feed(self, event: Any) -> list[Any]:
        self.events.append((self.now, event))
        self.state, commands = step(self.state, event, self.now)
        self.commands.extend(commands)
        out = list(commands)
        for command in commands:
            if isinstance(command, Send):
                self.sent.append(command.msg)
            elif isinstance(command, ReadPlan):
                text = self.plans.get(command.plan_path)
                error = "" if text is not None else f"there is no plan folder {command.plan_path}"
                prior = None
                if command.history and text is not None:
                    prior = self.folders.get(command.history, {"exists": False, "done": []})
                out += self.feed(PlanLoaded(command.request_id, text, error, prior))
            elif isinstance(command, ReadManifest):
                base = re.sub(r"_round_\d{4}$", "", command.task_id)
                items = self.manifests.get(base)
                if isinstance(items, list):
                    out += self.feed(ManifestRead(command.batch_id, command.task_id, tuple(items)))
                else:
                    error = items or f"the foreach source {command.spec} does not exist"
                    out += self.feed(ManifestRead(command.batch_id, command.task_id, None, error))
        return out

    def msg(self, msg: Message, src: str) -> list[Any]:
        stamped = dataclasses.replace(msg, src=src, dst="brain", id=self.next_id(), ts=self.now)
        return self.feed(Received(stamped))

    def next_id(self) -> str:
        return f"m{next(self.ids)}"

    def tick(self, seconds: float = 0.0) -> list[Any]:
        self.now += seconds
        return self.feed(Tick())

    def wait(self, seconds: float, step_s: float = 1.0) -> None:
        """Let time pass in ticks, live workers heartbeating all along."""
        end = self.now + seconds
        while self.now < end:
            self.tick(min(step_s, end - self.now))
            for name, worker in list(self.state.workers.items()):
                if worker.alive:
                    self.heartbeat(name)

    # --- actors ---------------------------------------------------------------

    def worker(
        self,
        name: str,
        *,
        slots: int = 1,
        role: str = "worker",
        vram: int = 6000,
        gpus: tuple[int, ...] = (0,),
        state: str = "cold",
        model: str = "",
    ) -> None:
        self.msg(Register(role=role, slots=slots, vram_budget_mb=vram, gpus=gpus, pid=1), src=name)
        self.heartbeat(name, state=state, model=model)

    def heartbeat(self, name: str, **fields: Any) -> list[Any]:
        worker = self.state.workers.get(name)
        base = {
            "role": worker.role if worker else "worker",
            "state": worker.model_state if worker else "cold",
            "model": worker.model if worker else "",
            "slots_total": worker.slots if worker else 1,
            "vram_budget_mb": worker.vram_budget_mb if worker else 6000,
        }
        base.update(fields)
        return self.msg(Heartbeat(**base), src=name)

    def hot(self, name: str, model: str) -> None:
        self.msg(ModelStatus(model=model, state="hot"), src=name)

    def submit(
        self, text: str, *, path: str = "/plans/p", config: dict | None = None, priority=""
    ) -> Message:
        self.plans[path] = text
        request_id = self.next_id()
        msg = PlanSubmit(
            src="submit-1",
            dst="brain",
            id=request_id,
            plan_path=path,
            config=config or {},
            priority=priority,
        )
        self.feed(Received(msg))
        return next(m for m in reversed(self.sent) if getattr(m, "reply_to", None) == request_id)

    # --- looking -----------------------------------------------------------------

    def assigns(self, since: int = 0) -> list[TaskAssign]:
        return [m for m in self.sent[since:] if isinstance(m, TaskAssign)]

    def of(self, kind: type, since: int = 0) -> list[Any]:
        return [m for m in self.sent[since:] if isinstance(m, kind)]

    def task(self, batch_id: str, task_id: str):
        return self.state.batches[batch_id].tasks[task_id]

    def states(self, batch_id: str) -> dict[str, str]:
        return {t.id: t.state for t in self.state.batches[batch_id].tasks.values()}

    # --- simulated workers -----------------------------------------------------

    def start(self, a: TaskAssign) -> None:
        self.answered.add(a.attempt_id)
        self.msg(
            TaskStarted(batch_id=a.batch_id, task_id=a.task_id, attempt_id=a.attempt_id), src=a.dst
        )

    def done(self, a: TaskAssign, **fields: Any) -> None:
        self.msg(
            TaskDone(batch_id=a.batch_id, task_id=a.task_id, attempt_id=a.attempt_id, **fields),
            src=a.dst,
        )

    def failed(self, a: TaskAssign, reason: str = "exit", exit_code: int | None = 1, **f) -> None:
        self.msg(
            TaskFailed(
                batch_id=a.batch_id,
                task_id=a.task_id,
                attempt_id=a.attempt_id,
                reason=reason,
                exit_code=exit_code,
                **f,
            ),
            src=a.dst,
        )

    def auto(
        self,
        outcome: Callable[[TaskAssign], Any] = lambda a: "done",
        *,
        step_s: float = 1.0,
        limit: int = 10_000,
        until: Callable[[], bool] | None = None,
    ) -> None:
        """Answer assignments as they come; tick ``step_s`` when nothing is pending."""
        seen = 0
        pending: list[TaskAssign] = []
        for _ in range(limit):
            new = self.assigns(seen)
            seen = len(self.sent)
            pending.extend(a for a in new if a.attempt_id not in self.answered)
            if until is not None and until():
                return
            if not pending:
                if until is None and not any(
                    b.state == "running" for b in self.state.batches.values()
                ):
                    return
                self.tick(step_s)
                for name, worker in list(self.state.workers.items()):
                    if worker.alive:
                        self.heartbeat(name)
                continue
            a = pending.pop(0)
            self.answered.add(a.attempt_id)
            result = outcome(a)
            if result == "hang":
                continue
            self.start(a)
            if result == "done":
                self.done(a)
            elif isinstance(result, int):
                self.failed(a, exit_code=result)
        raise AssertionError("the simulation did not settle")


# --- a fake worker over real sockets (for process-level tests) ---------------------


class FakeWorker:
    """A worker that 'runs' each assignment by waiting ``run_s``, over a real Client.

    Like the real worker it heartbeats with its active attempts, and holds the
    results the broker could not deliver (no brain connected) to send them
    again, after a fresh ``Register``, once the brain is back.
    """

    def __init__(self, name: str, endpoint: str, *, slots: int = 2, run_s: float = 0.2) -> None:
        import threading

        self.name = name
        self.endpoint = endpoint
        self.slots = slots
        self.run_s = run_s
        self.ran: list[str] = []  # attempt ids run to completion
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> FakeWorker:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)

    def _loop(self) -> None:
        import time as clock

        from llmo.proto.client import Client
        from llmo.proto.messages import Error, TaskAssigns, TaskCancel

        running: dict[str, tuple[float, TaskAssign]] = {}
        sent: dict[str, Message] = {}  # message id -> result, until no error came back
        held: list[Message] = []
        client = Client(self.name, self.endpoint)

        def beat() -> Message:
            return Heartbeat(
                dst="brain",
                role="worker",
                state="cold",
                slots_total=self.slots,
                slots_free=self.slots - len(running),
                vram_budget_mb=6000,
                active=tuple(running),
            )

        def deliver(msg: Message) -> None:
            out = client.send(msg)
            sent[out.id] = msg
            if len(sent) > 1000:
                sent.pop(next(iter(sent)))

        register = Register(
            dst="brain", role="worker", slots=self.slots, vram_budget_mb=6000, pid=12345
        )
        deliver(register)
        next_beat = 0.0
        try:
            while not self.stop_event.is_set():
                got = client.recv(timeout=0.02)
                now = clock.monotonic()
                for msg in got.unpacked() if isinstance(got, TaskAssigns) else (got,):
                    if isinstance(msg, TaskAssign):
                        running[msg.attempt_id] = (now + self.run_s, msg)
                        deliver(
                            TaskStarted(
                                dst="brain",
                                batch_id=msg.batch_id,
                                task_id=msg.task_id,
                                attempt_id=msg.attempt_id,
                            )
                        )
                    elif isinstance(msg, TaskCancel):
                        if running.pop(msg.attempt_id, None):
                            deliver(
                                TaskFailed(
                                    dst="brain",
                                    batch_id=msg.batch_id,
                                    task_id=msg.task_id,
                                    attempt_id=msg.attempt_id,
                                    reason="aborted",
                                )
                            )
                    elif isinstance(msg, Error) and msg.reply_to in sent:
                        held.append(sent.pop(msg.reply_to))
                for attempt_id, (due, a) in list(running.items()):
                    if now >= due:
                        del running[attempt_id]
                        self.ran.append(attempt_id)
                        deliver(
                            TaskDone(
                                dst="brain",
                                batch_id=a.batch_id,
                                task_id=a.task_id,
                                attempt_id=attempt_id,
                                duration_s=self.run_s,
                            )
                        )
                if now >= next_beat:
                    next_beat = now + 0.3
                    if held:
                        again, held = held, []
                        if register not in again:
                            deliver(register)
                        for result in again:
                            deliver(result)
                    deliver(beat())
        finally:
            client.close()
