"""The per-step context: the state, the time, and the commands collected so far.

Handlers take a ``Ctx`` instead of threading ``(state, now, out)`` through
every call. ``publish`` is the one place a change becomes visible: it bumps
the revision, sends a ``BatchEvent`` to the broker (which publishes it) and,
for batch changes, queues a line for the batch's ``batch_events.jsonl``
(``brain.records``: llmo's fields and the original system's); the lines of
one step are written with one ``AppendLines`` per file.

``goal_policy`` is how the task lifecycle (``tasks.on_terminal``) tells the
goal policy that a task of a goal-driven batch has ended. The goal module
sits above the lifecycle (it starts rounds and cancels candidates), so the
lifecycle does not import it: ``core`` hands it in when it makes the context.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from llmo.brain import records
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
        wire: bool = True,
        **detail: object,
    ) -> None:
        """Make a change visible: a ``BatchEvent`` to the broker (unless ``wire`` is
        false) and, for a batch (unless ``jsonl`` is false), a line of its events file,
        followed by a line under the original system's name where it has another."""
        st = self.state
        batch_id = batch.id if batch is not None else ""
        if task is not None:
            worker = worker or task.worker
            state: str = task.state
        else:
            state = batch.state if batch is not None else ""
        if wire:
            st.rev += 1
            self.out.append(
                Send(
                    BatchEvent(
                        dst=BROKER,
                        rev=st.rev,
                        batch_id=batch_id,
                        event=event,
                        task_id=task.id if task is not None else "",
                        state=state,
                        worker=worker,
                        attempt_id=task.attempt_id if task is not None else "",
                        detail=detail,
                    )
                )
            )
        if batch is None or not jsonl:
            return
        names = [event]
        original = records.ORIGINAL_NAMES.get(event)
        if original is not None:
            names.append(original)
        lines = self.lines.get(batch.events_path)
        if lines is None:
            lines = self.lines[batch.events_path] = []
        counted = batch.event_counts
        for name in names:
            extra = detail if name == event else {**detail, "same_as": event}
            record = records.event_record(
                batch, name, task, now=self.now, worker=worker, state=state, detail=extra
            )
            lines.append(_line(record))
            counted[name] = counted.get(name, 0) + 1

    def finish(self) -> list[Command]:
        for path, lines in self.lines.items():
            self.out.append(AppendLines(path, tuple(lines)))
        self.lines = {}
        return self.out
