"""The monitor's other screens: help, confirm, a one-line prompt, a task's log.

The log screen reads the tail of ``<history_path>/logs/<task>.log`` from the
shared drive in a thread worker (a slow NFS read must not freeze the UI),
once a second while it is open, and only redraws when the file changed.
``/`` searches the tail (``tui.search``): the matches are highlighted, ``n``
/ ``N`` scroll from one to the next, and following stops so they stay put.

The help scrolls: on a small terminal every key is still reachable.
(The batch screen is in ``tui.batch_screen``.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Input, Label, Static

from llmo.tui import render
from llmo.tui.history import Attempt, read_attempts
from llmo.tui.rows import TaskRow
from llmo.tui.search import SearchLog, matching_lines

TAIL_BYTES = 64 * 1024
TAIL_LINES = 400
ATTEMPTS_EVERY = 5  # log-screen ticks between reads of batch_events.jsonl

HELP_KEYS: Sequence[tuple[str, str]] = (
    ("tab / shift+tab", "move between workers, batches, tasks and events"),
    ("up / down, j / k", "move the cursor; the selected batch's tasks show below"),
    ("pgup / pgdn", "a page up or down; home / end: first or last row"),
    ("enter", "on a batch: its graph by level, goal and files; on a task: its log"),
    ("enter", "on a worker: its telemetry history, recent attempts and log tail"),
    ("/", "filter the tasks: words match id, state, class, worker; state:run, class:llm"),
    ("/ (on events)", "search the events; n / N: next or previous match"),
    ("escape", "clear the filter or the search, close a screen"),
    ("c", "cancel the selected batch (asks first)"),
    ("d", "drain the selected worker, or put a draining one back in service"),
    ("l", "load a model on the selected worker"),
    ("u", "unload the selected worker's model"),
    ("R", "retry the selected failed task: fresh attempts, its batch runs again"),
    ("E", "resume the selected failed or cancelled batch: the rest runs again"),
    ("N", "re-run the selected batch's plan as a new batch, with its settings"),
    ("C", "cancel every running batch (asks first, with the count)"),
    ("p", "start a plan: PLAN_DIR (or its plan.md) and KEY=VALUE settings"),
    ("ctrl+p", "the command palette: every action above by name"),
    ("x", "restart the selected worker llmo up gave up on (asks first)"),
    ("s", "sort the focused table by its next column (tasks: live first, then each column)"),
    ("S", "reverse the sort of the focused table"),
    ("r", "take a fresh snapshot from the brain"),
    ("?", "this help (up / down, pgup / pgdn to scroll)"),
    ("q", "quit"),
)
BATCH_KEYS: Sequence[tuple[str, str]] = (
    ("enter", "on a task: its log; on a foreach group: its items in the task table"),
    ("escape / q", "back to the main screen"),
)
LOG_KEYS: Sequence[tuple[str, str]] = (
    ("/", "search the log; n / N: next or previous match"),
    ("f", "follow the log on or off"),
    ("escape / q", "back"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss", "Close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 96; max-width: 100%; height: auto; max-height: 100%; border: round $accent;
        background: $surface; padding: 1 2;
    }
    """

    def compose(self) -> ComposeResult:
        parts: list[RenderableType] = [Text("llmo tui: keys\n", "bold")]
        for title, keys in (("", HELP_KEYS), ("batch screen", BATCH_KEYS), ("log", LOG_KEYS)):
            if title:
                parts.append(Text(f"\n{title}", "bold"))
            grid = Table.grid(padding=(0, 2))
            grid.add_column(justify="right", style="bold cyan", no_wrap=True, min_width=18)
            grid.add_column()
            for key, what in keys:
                grid.add_row(key, what)
            parts.append(grid)
        text = Text("\nWorker states: ", "bold")
        for state, style in render.WORKER_STYLES.items():
            if state != "up":
                text.append(state, style)
                text.append(" ")
        text.append("\nA '?' after a state: no heartbeat heard for a few seconds.", "dim")
        text.append("\nGreyed panels: the link is down; the figures are not live.", "dim")
        text.append("\nFAIL column: 3✗ failed (or skipped after a failure), 1⊘ cancelled.", "dim")
        parts.append(text)
        with VerticalScroll():
            yield Static(Group(*parts))

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).focus()


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no to an action; ``y`` / ``n`` / escape."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Grid {
        grid-size: 2; grid-gutter: 1 2; grid-rows: auto 3; padding: 1 2;
        width: 64; height: auto; border: thick $warning; background: $surface;
    }
    ConfirmScreen #question { column-span: 2; width: 1fr; }
    ConfirmScreen Button { width: 100%; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Grid():
            yield Label(self.question, id="question")
            yield Button("Yes (y)", variant="error", id="yes")
            yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class PromptScreen(ModalScreen[str | None]):
    """One line of input; Enter sends it, escape gives up."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    PromptScreen { align: center middle; }
    PromptScreen > Vertical {
        width: 72; height: auto; border: thick $accent; background: $surface; padding: 1 2;
    }
    """

    def __init__(self, question: str, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.question = question
        self.value = value
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            yield Input(value=self.value, placeholder=self.placeholder, id="answer")
            yield Label("enter: send    escape: cancel", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


def read_tail(path: str, limit: int = TAIL_BYTES) -> tuple[tuple[int, float], list[str]]:
    """The file's (size, mtime) and its last lines; an explanation if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            start = max(0, stat.st_size - limit)
            handle.seek(start)
            data = handle.read(limit)
    except FileNotFoundError:
        return (-1, 0.0), [f"(no log yet at {path})"]
    except OSError as exc:
        return (-2, 0.0), [f"(cannot read {path}: {exc.strerror or exc})"]
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first line was cut in the middle
    return (stat.st_size, stat.st_mtime), lines[-TAIL_LINES:]


def attempts_text(found: Sequence[Attempt], note: str = "") -> Text:
    """One line per attempt: number, worker, start, outcome and why."""
    out = Text()
    if not found:
        out.append(f"attempts: {note or 'none recorded yet'}", "dim")
        return out
    out.append("attempts (from batch_events.jsonl):\n", "bold")
    for a in found:
        took = f" after {render.duration(a.ended - a.started)}" if a.ended and a.started else ""
        style = {"done": "green", "running": "yellow"}.get(a.outcome, "red")
        out.append(
            f"  #{a.number:<2} {a.worker or render.DASH:10} {render.clock(a.started or 0)}  "
        )
        out.append(a.outcome + took, style)
        if a.why:
            out.append(f": {a.why.strip().splitlines()[-1][:120]}", "dim")
        out.append("\n")
    out.rstrip()
    return out


class LogScreen(Screen[None]):
    """A task's state, attempts and the tail of its log, followed while open."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Back"),
        Binding("f", "toggle_follow", "Follow on/off"),
        Binding("slash", "search", "Search"),
        Binding("n", "next_match(1)", "Next match"),
        Binding("N", "next_match(-1)", "Previous match", show=False),
    ]
    DEFAULT_CSS = """
    LogScreen #task-info { height: auto; max-height: 12; padding: 0 1; background: $panel; }
    LogScreen #attempts { height: auto; max-height: 10; padding: 0 1; background: $panel; }
    LogScreen Log { height: 1fr; border: round $primary-darken-1; }
    """

    class Read(Message):
        def __init__(self, stamp: tuple[int, float], lines: list[str]) -> None:
            super().__init__()
            self.stamp = stamp
            self.lines = lines

    class AttemptsRead(Message):
        def __init__(self, attempts: list[Attempt], note: str) -> None:
            super().__init__()
            self.attempts = attempts
            self.note = note

    def __init__(
        self,
        batch_id: str,
        task: TaskRow,
        path: str,
        describe: Callable[[TaskRow], Text],
        events_path: str = "",
        interval: float = 1.0,
        current: Callable[[], TaskRow | None] | None = None,
    ) -> None:
        super().__init__()
        self.batch_id = batch_id
        self.task_row = task
        self.current = current  # the task's row as the model has it now
        self.path = path
        self.events_path = events_path
        self.describe = describe
        self.interval = interval
        self.follow = True
        self.stamp: tuple[int, float] | None = None
        self.ticks = 0
        self.term = ""
        self.matches: list[int] = []
        self.match_at = -1

    def compose(self) -> ComposeResult:
        yield Static(self.describe(self.task_row), id="task-info")
        yield Static("", id="attempts")
        log = SearchLog(id="log", max_lines=TAIL_LINES * 2)
        log.border_title = self.path
        yield log
        yield Footer()

    def on_mount(self) -> None:
        self.reload()
        self.reload_attempts()
        self.set_interval(self.interval, self.tick)

    def tick(self) -> None:
        row = self.current() if self.current is not None else None
        self.task_row = row or self.task_row
        self.query_one("#task-info", Static).update(self.describe(self.task_row))
        self.ticks += 1
        if self.follow:
            self.reload()
            if self.ticks % ATTEMPTS_EVERY == 0:
                self.reload_attempts()

    @work(thread=True, exclusive=True, group="attempts")
    def reload_attempts(self) -> None:
        if self.events_path:
            found, note = read_attempts(self.events_path, self.task_row.id)
            self.post_message(self.AttemptsRead(found, note))

    def on_log_screen_attempts_read(self, message: AttemptsRead) -> None:
        self.query_one("#attempts", Static).update(attempts_text(message.attempts, message.note))

    @work(thread=True, exclusive=True, group="log-tail")
    def reload(self) -> None:
        stamp, lines = read_tail(self.path)
        self.post_message(self.Read(stamp, lines))

    def on_log_screen_read(self, message: Read) -> None:
        if message.stamp == self.stamp:
            return
        self.stamp = message.stamp
        log = self.query_one("#log", SearchLog)
        log.clear()
        log.write_lines(message.lines)
        if self.term:
            self.find()
        if self.follow:
            self.call_after_refresh(log.scroll_end, animate=False)

    # --- search ------------------------------------------------------------------------

    def action_search(self) -> None:
        def answer(term: str | None) -> None:
            self.search(term or "")

        self.app.push_screen(PromptScreen("Search the log for:", self.term), answer)

    def search(self, term: str) -> None:
        """Highlight ``term`` and scroll to its first line; following stops."""
        self.term = term
        self.query_one("#log", SearchLog).set_term(term)
        self.match_at = -1
        self.find()
        if self.matches:
            self.follow = False
            self.action_next_match(1)
        elif term:
            self.notify(f"{term!r} is not in the log's tail", severity="warning")

    def find(self) -> None:
        log = self.query_one("#log", SearchLog)
        self.matches = matching_lines(log.lines, self.term)
        self.match_at = min(self.match_at, len(self.matches) - 1)
        self.show_matches()

    def action_next_match(self, step: int) -> None:
        if not self.matches:
            return
        self.match_at = (self.match_at + step) % len(self.matches)
        log = self.query_one("#log", SearchLog)
        log.scroll_to(y=max(0, self.matches[self.match_at] - 2), animate=False)
        self.show_matches()

    def show_matches(self) -> None:
        log = self.query_one("#log", SearchLog)
        if not self.term:
            log.border_subtitle = ""
        elif not self.matches:
            log.border_subtitle = f"{self.term!r}: no match"
        else:
            at = self.match_at + 1
            line = self.matches[max(0, self.match_at)] + 1
            log.border_subtitle = (
                f"{self.term!r}: match {at} of {len(self.matches)}, line {line} (n/N)"
            )

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self.notify("following the log" if self.follow else "paused")

    def action_close(self) -> None:
        self.dismiss(None)
