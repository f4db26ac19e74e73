"""One worker in full: its facts, telemetry history, recent attempts and log tail.

Theory of operation
-------------------
The screen is a view of the app's ``Model``, redrawn once a second from the
worker's row: the facts from its latest heartbeat and the brain's snapshot,
the sparklines from its telemetry ring (``rows.TelemetrySample``, one a
second for five minutes, squeezed into the screen's width; a silent stretch
is blank), the attempts from its ``WorkerAttempt`` ring (the snapshot's tasks
and the task events that named it since the monitor joined).

The log tail is that of its running attempt, else its most recent one, read
like the task log screen's, from ``<history_path>/logs/<task>.log`` on the
shared drive, in a thread worker (a slow NFS read must not freeze the UI),
and redrawn only when the file changed. While the link to the rig is down
the figures are the last ones heard: the screen says so, and since when.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Log, Static

from llmo.tui import render
from llmo.tui.model import Model
from llmo.tui.rows import TelemetrySample, WorkerAttempt, WorkerRow
from llmo.tui.screens import TAIL_LINES, read_tail

LABEL_WIDTH = 10
FIGURES_WIDTH = 34  # "  now   64°C  min 61°C max 70°C" after each sparkline
ATTEMPTS_SHOWN = 12  # at most, newest first
SHORT_SCREEN = 30  # lines: below this, fewer attempts and no titles, so the log keeps room
SHORT_ATTEMPTS = 3


def _mb(value: float) -> str:
    return f"{value / 1024:.1f}G"


# (label, the sample's field, its figure as text, the scale's floor span, fixed scale)
METRICS: Sequence[tuple[str, str, Callable[[float], str], float, tuple[float, float] | None]] = (
    ("GPU temp", "gpu_temp_c", lambda v: f"{v:.0f}°C", 10.0, None),
    ("VRAM used", "vram_used_mb", _mb, 1024.0, None),
    ("GPU power", "power_w", lambda v: f"{v:.0f}W", 20.0, None),
    ("CPU", "cpu_percent", lambda v: f"{v:.0f}%", 0.0, (0.0, 100.0)),
    ("CPU temp", "cpu_temp_c", lambda v: f"{v:.0f}°C", 10.0, None),
    ("tok/s", "tok_s", lambda v: f"{v:.1f}", 1.0, None),
)


def telemetry_text(row: WorkerRow, width: int, titled: bool = True, live: bool = True) -> Text:
    """A line per figure: its history as a sparkline, then now (the last heard,
    while the link is down), min and max (``titled``: under a line that says
    how long a stretch it shows)."""
    samples: Sequence[TelemetrySample] = row.samples
    spark_width = max(8, width - 2 - (LABEL_WIDTH + 1) - FIGURES_WIDTH)
    out = Text(no_wrap=True, overflow="ellipsis")
    if titled and samples:
        span = samples[-1].ts - samples[0].ts + 1
        out.append(f"history: the last {render.duration(span)}, one sample a second\n", "dim")
    elif titled:
        out.append("history: no heartbeat heard yet\n", "dim")
    for label, field, text, floor, fixed in METRICS:
        values = [getattr(s, field) for s in samples]
        known = [v for v in values if v is not None]
        out.append(f"{label:<{LABEL_WIDTH}} ", "bold")
        if not known:
            out.append(" " * spark_width + f"  {render.DASH}\n", "dim")
            continue
        lo, hi = fixed if fixed is not None else (min(known), max(known))
        if fixed is None:
            if field == "tok_s":
                lo = 0.0  # from nothing: an idle worker shows low
            hi = max(hi, lo + floor)
        out.append(render.history_spark(values, spark_width, lo, hi), "cyan")
        now = values[-1]
        when = "now" if live else "last"
        out.append(f"  {when} {text(now) if now is not None else render.DASH:>6}", "bold")
        out.append(f"  min {text(min(known))} max {text(max(known))}\n", "dim")
    out.rstrip()
    return out


def facts_text(row: WorkerRow | None, name: str, model: Model, now: float, width: int = 80) -> Text:
    """Who and where the worker is, what it runs, and how fresh that is."""
    out = Text()
    out.append(name, "bold")
    if row is None:
        out.append("  no longer known to the brain", "bold red")
        return out
    state = row.shown_state
    out.append("  ")
    out.append(state, render.WORKER_STYLES.get(state, ""))
    if row.silent(now) and row.last_heartbeat:
        out.append("?", "dim")
    out.append(f"   heard {render.heartbeat_age(row, now, model.live).plain} ago")
    link = model.link
    if link.state in ("down", "no_brain"):
        heard = model.last_heard or model.snapshot_at
        out.append(
            f"   stale: the link is down since {render.clock(link.since)}, "
            f"figures as of {render.clock(heard)}",
            "bold yellow",
        )
    out.append("\n")
    gpus = ",".join(str(g) for g in row.gpus) or render.DASH
    out.append(f"host {row.host or render.DASH}   pid {row.pid or render.DASH}   ")
    out.append(f"gpus {gpus}   role {row.role or render.DASH}   ")
    out.append(f"endpoint {row.endpoint or render.DASH}\n")
    model_name = row.model or render.DASH
    if row.loading:
        model_name += f" (loading {row.loading})"
    busy = max(0, row.slots - row.slots_free)
    out.append(f"model {model_name}   slots {busy}/{row.slots} busy")
    if row.vram_budget_mb:
        out.append(f"   VRAM budget {_mb(row.vram_budget_mb)}")
    out.append("\nholding ")
    holding = row.holding()
    if holding:
        out.append(render.holding_text(holding, max(10, width - 10)), "yellow")
    else:
        out.append("nothing", "dim")
    if row.constraint:
        out.append("\nlimit ", "bold")
        out.append(render.limit_text(row.constraint), "magenta")
    return out


ATTEMPT_STYLES = {
    "running": "bold yellow",
    "done": "green",
    "cancelled": "magenta",
    "retried": "yellow",
    "aborting": "yellow",
    "killing": "red",
}


def attempts_text(
    attempts: Sequence[WorkerAttempt], now: float, shown: int, titled: bool = True
) -> Text:
    """Its recent attempts, newest first: task, batch, outcome, exit code, time, why
    (``titled``: under a line that says how many it remembers)."""
    out = Text(no_wrap=True, overflow="ellipsis")
    if not attempts:
        out.append("attempts: none seen since this monitor joined", "dim")
        return out
    recent = list(reversed(attempts))[:shown]
    task_width = max(12, min(32, max(len(a.task_id) for a in recent)))
    if titled:
        title = f"recent attempts ({len(recent)} of {len(attempts)} remembered, newest first)"
        out.append(title + "\n", "bold")
    out.append(
        f"{'TASK':<{task_width}} {'BATCH':<14} {'OUTCOME':<15} EXIT {'TIME':>6} STARTED  WHY\n",
        "bold",
    )
    for a in recent:
        task = a.task_id if len(a.task_id) <= task_width else "…" + a.task_id[-task_width + 1 :]
        out.append(f"{task:<{task_width}} {a.batch_id[:14]:<14} ")
        out.append(f"{a.state:<15}", ATTEMPT_STYLES.get(a.state, "bold red"))
        exit_code = str(a.exit_code) if a.exit_code is not None else render.DASH
        out.append(f" {exit_code:>4} {render.duration(a.duration(now)):>6} ")
        out.append(render.clock(a.started_at or 0.0) + " ")
        if a.why:
            out.append(a.why.strip().splitlines()[-1][:200] if a.why.strip() else "", "red")
        out.append("\n")
    out.rstrip()
    return out


def log_attempt(row: WorkerRow | None) -> WorkerAttempt | None:
    """The attempt whose log the screen follows: its running one, else its latest."""
    if row is None or not row.attempts:
        return None
    running = [a for a in row.attempts if a.state == "running"]
    return running[-1] if running else row.attempts[-1]


class WorkerScreen(Screen[None]):
    """A worker's facts, telemetry history, recent attempts and log tail."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "close", "Back")]
    DEFAULT_CSS = """
    WorkerScreen Static { text-wrap: nowrap; text-overflow: ellipsis; }
    WorkerScreen #worker-facts { height: auto; padding: 0 1; background: $panel; }
    WorkerScreen #worker-telemetry { height: auto; padding: 0 1; }
    WorkerScreen #worker-attempts { height: auto; padding: 0 1; background: $panel; }
    WorkerScreen Log { height: 1fr; min-height: 3; border: round $primary-darken-1; }
    """

    class Read(Message):
        def __init__(self, path: str, stamp: tuple[int, float], lines: list[str]) -> None:
            super().__init__()
            self.path = path
            self.stamp = stamp
            self.lines = lines

    def __init__(
        self,
        name: str,
        model: Model,
        clock: Callable[[], float],
        map_path: Callable[[str], str] = lambda path: path,
        interval: float = 1.0,
    ) -> None:
        super().__init__()
        self.worker_name = name
        self.model = model
        self.clock = clock
        self.map_path = map_path
        self.interval = interval
        self.log_path = ""
        self.stamp: tuple[int, float] | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="worker-facts")
        yield Static("", id="worker-telemetry")
        yield Static("", id="worker-attempts")
        yield Log(id="worker-log", highlight=False, max_lines=TAIL_LINES * 2)
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_view()
        self.set_interval(self.interval, self.refresh_view)

    def on_resize(self) -> None:
        self.refresh_view()

    @property
    def row(self) -> WorkerRow | None:
        return self.model.workers.get(self.worker_name)

    def refresh_view(self) -> None:
        if not self.is_attached:
            return
        now = self.clock()
        row = self.row
        width = self.size.width or 80
        tall = self.size.height >= SHORT_SCREEN
        self.query_one("#worker-facts", Static).update(
            facts_text(row, self.worker_name, self.model, now, width)
        )
        live = self.model.live
        telemetry = telemetry_text(row, width, tall, live) if row is not None else Text()
        self.query_one("#worker-telemetry", Static).update(telemetry)
        shown = ATTEMPTS_SHOWN if tall else SHORT_ATTEMPTS
        recent = row.attempts if row is not None else ()
        attempts = attempts_text(recent, now, shown, titled=tall)
        self.query_one("#worker-attempts", Static).update(attempts)
        self.follow_log(row)

    def follow_log(self, row: WorkerRow | None) -> None:
        log = self.query_one("#worker-log", Log)
        attempt = log_attempt(row)
        path = ""
        if attempt is None:
            title, note = "log", "(no attempt seen on this worker since this monitor joined)"
        else:
            batch = self.model.batches.get(attempt.batch_id)
            if batch is None or not batch.history_path:
                title = f"log of {attempt.task_id}"
                note = f"(batch {attempt.batch_id}'s history folder is not known yet)"
            else:
                path = self.map_path(f"{batch.history_path}/logs/{attempt.task_id}.log")
                title, note = f"{attempt.task_id}: {path}", ""
        log.border_title = title
        if path != self.log_path:
            self.log_path = path
            self.stamp = None
            log.clear()
            if note:
                log.write_line(note)
        if path:
            self.reload(path)

    @work(thread=True, exclusive=True, group="worker-log")
    def reload(self, path: str) -> None:
        stamp, lines = read_tail(path)
        self.post_message(self.Read(path, stamp, lines))

    def on_worker_screen_read(self, message: Read) -> None:
        if message.path != self.log_path or message.stamp == self.stamp:
            return
        self.stamp = message.stamp
        log = self.query_one("#worker-log", Log)
        log.clear()
        log.write_lines(message.lines)
        self.call_after_refresh(log.scroll_end, animate=False)

    def action_close(self) -> None:
        self.dismiss(None)
