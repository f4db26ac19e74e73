"""The per-step context: the state, the time, and the commands collected so far.

Handlers take a ``Ctx`` instead of threading ``(state, now, out)`` through
every call. ``publish`` is the one place a change becomes visible: it bumps
the revision, sends a ``BatchEvent`` to the broker (which publishes it) and,
for batch changes, queues a line for the batch's ``batch_events.jsonl``; the
lines of one step are written with one ``AppendLines`` per file.

``goal_policy`` is how the task lifecycle (``tasks.on_terminal``) tells the
goal policy that a task of a goal-driven batch has ended. The goal module
sits above the lifecycle (it starts rounds and cancels candidates), so the
lifecycle does not import it: ``core`` hands it in when it makes the context.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from llmo.brain.commands import AppendLines, Command, Log, Send
from llmo.brain.state import Batch, BrainState, TaskRun
from llmo.proto.messages import BROKER, BatchEvent, Message

ERROR_CHARS = 300  # error text kept in events and summaries
_line = json.JSONEncoder(separators=(",", ":"), default=str).encode

TaskHook = Callable[["Ctx", Batch, TaskRun], None]


def cut(text: str, limit: int = ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Ctx:
    __slots__ = ("cfg", "goal_policy", "lines", "now", "out", "state")

    def __init__(self, state: BrainState, now: float, goal_policy: TaskHook) -> None:
        self.state = state
        self.goal_policy = goal_policy
        self.cfg = state.config
        self.now = now
        self.out: list[Command] = []
        self.lines: dict[str, list[str]] = {}

    def send(self, msg: Message) -> None:
        self.out.append(Send(msg))

    def log(self, level: str, text: str) -> None:
        self.out.append(Log(level, text))

    def publish(
        self,
        batch: Batch | None,
        event: str,
        task: TaskRun | None = None,
        *,
        worker: str = "",
        jsonl: bool = True,
        **detail: object,
    ) -> None:
        st = self.state
        st.rev += 1
        batch_id = batch.id if batch is not None else ""
        if task is not None:
            worker = worker or task.worker
            state: str = task.state
            task_id = task.id
            attempt_id = task.attempt_id
        else:
            state = batch.state if batch is not None else ""
            task_id = attempt_id = ""
        self.out.append(
            Send(
                BatchEvent(
                    dst=BROKER,
                    rev=st.rev,
                    batch_id=batch_id,
                    event=event,
                    task_id=task_id,
                    state=state,
                    worker=worker,
                    attempt_id=attempt_id,
                    detail=detail,
                )
            )
        )
        if batch is None or not jsonl:
            return
        record: dict[str, object] = {"ts": self.now, "event": event, "batch_id": batch_id}
        if task is not None:
            spec = task.spec
            record.update(
                task_id=task_id,
                name=task.id,
                task_class=spec.task_class,
                executor=spec.executor,
                worker=worker,
                attempt=task.attempts,
                attempt_id=attempt_id,
                state=state,
            )
        else:
            record["state"] = state
        if detail:
            record.update(detail)
        lines = self.lines.get(batch.events_path)
        if lines is None:
            lines = self.lines[batch.events_path] = []
        lines.append(_line(record))

    def finish(self) -> list[Command]:
        for path, lines in self.lines.items():
            self.out.append(AppendLines(path, tuple(lines)))
        self.lines = {}
        return self.out
