"""Following one batch: a snapshot, then published events (the Clone pattern).

Theory of operation
-------------------
``BatchView`` is pure: it is seeded from a ``SnapshotReply`` (revision R)
and then folds ``BatchEvent``s, ignoring those with ``rev <= R`` so nothing
is counted twice. Task groups (a foreach template and its items, or a plain
task) give one progress bar each. The tok/s shown is the batch's figure of
``proto.rates``: its generated tokens over its wall time. The tokens are
those of the last snapshot (``BatchInfo.tokens``: succeeded tasks), plus
those of tasks that succeeded since, plus the running attempts' counts from
``TaskProgress``; when the batch ends a last snapshot makes the figure the
one RUN_SUMMARY and the monitor show.

The view keeps each group's counts as events change a task's state, so an
event costs the same with ten tasks or ten thousand; only a snapshot, or a
new foreach template (which can regroup tasks), counts them all again.

``follow`` owns the sockets: it subscribes *before* asking for the snapshot
(so no event falls between the two), takes a fresh snapshot whenever the
sequence shows a gap or nothing about its batch arrives for a while (PUB
drops silently when a link is slow), and returns when the batch reaches a
terminal state. A SUB socket connects in the background, so the first
snapshot can come before the subscription takes effect, and what the broker
published in between is lost with no gap to show it: the first publication
received proves the subscription live, and a snapshot follows it. The
subscription takes every topic (``subscribe``): the broker numbers all its
publications in one sequence, so a subscriber of some topics only would see
every heartbeat as a gap. Snapshots for gaps come at most one a
``RESYNC_MIN_S`` (the first at once): under a burst that overflows the
socket, a snapshot of thousands of tasks must not cause the next gap itself.
A malformed publication is logged, naming what is wrong, and counts as a gap:
the next snapshot covers whatever it was; so does the brain's ``peer.up`` (a
restarted brain's state replaces the view). The screen is drawn a few times a
second at most (``Screen``), never once per event.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from llmo.proto.errors import ProtocolError
from llmo.proto.messages import (
    BRAIN,
    BatchEvent,
    BatchInfo,
    PeerUp,
    SnapshotReply,
    TaskProgress,
)
from llmo.proto.pubsub import Subscriber
from llmo.proto.rates import batch_wall_s, tok_s_text
from llmo.proto.states import BATCH_TERMINAL, TASK_ACTIVE, TASK_UNSUCCESSFUL

RATE_WINDOW_S = 5.0
RESYNC_MIN_S = 2.0  # snapshots for gaps: at most one this often (the first at once)

log = logging.getLogger("llmo.watch")


@dataclass(slots=True)
class BatchView:
    batch_id: str
    rev: int = -1
    state: str = "running"
    plan: str = ""
    history_path: str = ""
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> state
    group: dict[str, str] = field(default_factory=dict)  # task id -> group name
    templates: set[str] = field(default_factory=set)
    rates: dict[str, tuple[float, float]] = field(default_factory=dict)  # attempt -> (tok/s, t)
    tokens: dict[str, int] = field(default_factory=dict)  # running attempt -> tokens so far
    attempt_task: dict[str, str] = field(default_factory=dict)  # attempt -> task id
    settled: int = 0  # tokens of tasks that succeeded since the last snapshot
    batch: BatchInfo | None = None  # as the last snapshot had it, with the final counts
    # group -> state -> tasks, kept by events; None: count afresh at the next ``groups``
    _counts: dict[str, dict[str, int]] | None = field(default=None, init=False, repr=False)
    _member: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def seed(self, reply: SnapshotReply) -> bool:
        """Take a snapshot; False if it does not know the batch."""
        mine = next((b for b in reply.batches if b.id == self.batch_id), None)
        if mine is None:
            return False
        self.rev = reply.rev
        self.batch = mine
        self.state = mine.state
        self.plan = mine.plan
        self.history_path = mine.history_path or self.history_path
        self.tasks = {}
        self.settled = 0
        self._counts = None
        for task in reply.tasks:
            if task.batch_id != self.batch_id:
                continue
            self.tasks[task.id] = task.state
            if task.template:
                self.templates.add(task.template)
                self.group[task.id] = task.template
        for attempt, task_id in list(self.attempt_task.items()):
            if self.tasks.get(task_id) not in TASK_ACTIVE:
                self._forget(attempt)  # its tokens are in the snapshot's, or were not kept
        return True

    def _forget(self, attempt: str) -> int:
        self.attempt_task.pop(attempt, None)
        self.rates.pop(attempt, None)
        return self.tokens.pop(attempt, 0)

    def apply(self, event: BatchEvent) -> None:
        if event.batch_id != self.batch_id or event.rev <= self.rev:
            return
        self.rev = event.rev
        if event.task_id:
            if event.event == "task_expanded" and event.task_id not in self.templates:
                self.templates.add(event.task_id)
                self._counts = None  # tasks named after it may change group
            self._set_state(event.task_id, event.state)
            if event.state not in TASK_ACTIVE:
                for attempt, task_id in list(self.attempt_task.items()):
                    if task_id == event.task_id:
                        kept = self._forget(attempt)
                        self.settled += kept if event.state == "done" else 0
        elif event.state:
            self.state = event.state
            counts = event.detail.get("counts")
            final = event.event.startswith("batch_")
            if final and isinstance(counts, dict) and self.batch is not None:
                self.batch = replace(self.batch, counts=counts)

    def progress(self, msg: TaskProgress, now: float) -> None:
        if msg.batch_id == self.batch_id:
            if self.tasks.get(msg.task_id, "running") not in TASK_ACTIVE:
                return  # a late report of an attempt that has ended
            self.rates[msg.attempt_id] = (msg.tok_s, now)
            self.tokens[msg.attempt_id] = msg.tokens
            self.attempt_task[msg.attempt_id] = msg.task_id

    def tok_s(self, now: float) -> float:
        """The running attempts' own rates, summed: how fast it generates at this moment."""
        return sum(rate for rate, seen in self.rates.values() if now - seen <= RATE_WINDOW_S)

    def generated(self) -> int:
        """The batch's generated tokens so far (succeeded tasks and running attempts)."""
        known = self.batch.tokens if self.batch is not None else 0
        return known + self.settled + sum(self.tokens.values())

    def wall_s(self, wall_now: float) -> float | None:
        """The batch's wall time (``proto.rates``); None while no snapshot gave its start."""
        if self.batch is None or not self.batch.created_at:
            return None
        return batch_wall_s(self.batch.created_at, self.batch.finished_at, wall_now)

    @property
    def finished(self) -> bool:
        return self.state in BATCH_TERMINAL

    def group_of(self, task_id: str) -> str:
        known = self.group.get(task_id)
        if known is not None:
            return known
        best = ""
        for template in self.templates:
            if task_id.startswith(template + "_") and len(template) > len(best):
                best = template
        return best or task_id

    def _set_state(self, task_id: str, state: str) -> None:
        old = self.tasks.get(task_id)
        self.tasks[task_id] = state
        counts = self._counts
        if counts is None or old == state:
            return
        name = self._member.get(task_id)
        if name is not None and old is not None:
            states = counts[name]
            states[old] -= 1
            if not states[old]:
                del states[old]
        else:
            name = self.group_of(task_id)
            if name == task_id and task_id in self.templates:
                return  # the template itself: its items carry the progress
            self._member[task_id] = name
        states = counts.setdefault(name, {})
        states[state] = states.get(state, 0) + 1

    def groups(self) -> dict[str, dict[str, int]]:
        """Each group's tasks by state (the template itself left out)."""
        if self._counts is None:
            self._member = {}
            self._counts = self._tally(self._member)
        return {name: dict(states) for name, states in self._counts.items()}

    def count_groups(self) -> dict[str, dict[str, int]]:
        """``groups`` counted afresh from every task's state."""
        return self._tally({})

    def _tally(self, member: dict[str, str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for task_id, state in self.tasks.items():
            name = self.group_of(task_id)
            if name == task_id and task_id in self.templates:
                continue  # the template itself: its items carry the progress
            member[task_id] = name
            counts = out.setdefault(name, {})
            counts[state] = counts.get(state, 0) + 1
        return out


def bar(counts: dict[str, int], width: int = 24) -> str:
    total = sum(counts.values()) or 1
    done = counts.get("done", 0)
    bad = sum(counts.get(s, 0) for s in TASK_UNSUCCESSFUL)
    running = sum(counts.get(s, 0) for s in TASK_ACTIVE)
    cells = [
        ("#", round(width * done / total)),
        ("!", round(width * bad / total)),
        (">", round(width * running / total)),
    ]
    text = "".join(ch * n for ch, n in cells)[:width]
    return "[" + text.ljust(width, ".") + "]"


def render(
    view: BatchView, now: float, started: float, *, wall_now: float | None = None
) -> list[str]:
    """The view's lines; ``now``/``started`` on the follower's clock, ``wall_now`` the
    time of day (default: now) for the batch's wall time."""
    wall = view.wall_s(time.time() if wall_now is None else wall_now)
    lines = [
        f"batch {view.batch_id} ({view.plan}): {view.state}, "
        f"{tok_s_text(view.generated(), now - started if wall is None else wall)}"
    ]
    for name, counts in sorted(view.groups().items()):
        total = sum(counts.values())
        done = counts.get("done", 0)
        extra = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "done" and v)
        lines.append(f"  {name[:28]:28} {bar(counts)} {done:>5}/{total:<5} {extra}")
    return lines


class Screen:
    """Redraws in place on a terminal, at most every ``interval`` seconds; prints changed
    lines otherwise, at most every 0.5 s. ``due`` says whether a draw would happen, so
    a caller builds the lines only then."""

    def __init__(self, out: TextIO = sys.stdout, interval: float = 0.25) -> None:
        self.out = out
        self.tty = out.isatty()
        self.interval = interval if self.tty else 0.5
        self.drawn = 0
        self.last = 0.0
        self.previous: list[str] = []
        self.printed = 0.0

    def due(self, now: float) -> bool:
        return now - self.last >= self.interval

    def show(self, lines: list[str], now: float, force: bool = False) -> None:
        if not force and not self.due(now):
            return
        self.last = now
        if self.tty:
            if self.drawn:
                self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.out.write("\n".join(lines) + "\n")
            self.drawn = len(lines)
        elif force or lines[1:] != self.previous[1:] or now - self.printed >= 30.0:
            # Without a terminal, print when a group changes (the first line's
            # clock always does), and at least every 30 s as a sign of life.
            self.out.write("\n".join(lines) + "\n")
            self.printed = now
        self.previous = lines
        self.out.flush()


def follow(
    view: BatchView,
    subscriber,
    take_snapshot: Callable[[], SnapshotReply | None],
    screen: Screen | None,
    *,
    resync_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> BatchView:
    """Follow ``view``'s batch until it ends; returns the final view."""
    started = clock()
    reply = take_snapshot()
    if reply is not None:
        view.seed(reply)
    last_heard = clock()
    live = False  # a publication has arrived: the subscription is in effect
    stale = False  # missed something: a snapshot is due
    resync_at = float("-inf")  # no snapshot for a gap before this time
    while not view.finished:
        try:
            published = subscriber.recv(timeout=0.25)
        except ProtocolError as exc:
            log.warning("skipped a malformed publication from the broker (%s); resyncing", exc)
            published, stale = None, True
        now = clock()
        if published is not None:
            msg = published.message
            if not live:
                # What was published before the subscription took effect is lost
                # without a gap to show it; a snapshot from now on holds it.
                live, stale = True, True
            if published.gap or (isinstance(msg, PeerUp) and msg.peer == BRAIN):
                stale = True  # missed publications, or a restarted brain: its state, not ours
            if isinstance(msg, BatchEvent):
                view.apply(msg)
            elif isinstance(msg, TaskProgress):
                view.progress(msg, now)
            if isinstance(msg, BatchEvent | TaskProgress) and msg.batch_id == view.batch_id:
                last_heard = now  # news of this batch
        if now - last_heard > resync_s or (stale and now >= resync_at):
            reply = take_snapshot()
            if reply is not None:
                view.seed(reply)
            last_heard = now
            stale = False
            resync_at = now + RESYNC_MIN_S
        if screen is not None and screen.due(now):
            screen.show(render(view, now, started), now)
    # The end's own snapshot: its tokens and end time give the figure RUN_SUMMARY has.
    reply = take_snapshot()
    if reply is not None:
        view.seed(reply)
    if screen is not None:
        now = clock()
        screen.show(render(view, now, started), now, force=True)
    return view


def subscribe(endpoint: str) -> Subscriber:
    """The watcher's subscription: every topic, so a gap in the sequence is a real one."""
    return Subscriber(endpoint)


def watch_to_end(
    view: BatchView,
    subscriber,
    take_snapshot: Callable[[], SnapshotReply | None],
    as_json: bool,
) -> int:
    """Follow the batch to its end (``follow``; the progress screen unless ``as_json``),
    then print how it ended and where its summary and escalation are: exit 0 for a
    complete batch, 1 otherwise. The view of ``submit --watch`` and ``llmo watch``."""
    view = follow(view, subscriber, take_snapshot, None if as_json else Screen(sys.stdout))
    return report_end(view, as_json)


def report_end(view: BatchView, as_json: bool) -> int:
    """How the batch ended and where its summary and escalation are: 0 if complete."""
    summary_path = Path(view.history_path) / "RUN_SUMMARY.json"
    summary = None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    if as_json:
        out = {
            "batch_id": view.batch_id,
            "state": view.state,
            "batch": view.batch.to_wire() if view.batch is not None else {},
            "summary": summary,
        }
        print(json.dumps(out, indent=2, default=str))
    else:
        print(f"batch {view.batch_id} {view.state}")
        md = Path(view.history_path) / "RUN_SUMMARY.md"
        if md.exists():
            print(f"summary: {md}")
        escalation = Path(view.history_path) / "ESCALATION.md"
        if view.state != "complete" and escalation.exists():
            print(f"escalation: {escalation}")
    return 0 if view.state == "complete" else 1
