"""The monitor: workers, batches, the selected batch's tasks and the events.

Enter on a task opens its log (``screens.LogScreen``); on a worker, its detail
(``worker_screen.WorkerScreen``).

Theory of operation
-------------------
The app owns a ``Model`` and, when it runs for real, a ``Feed`` in a thread
worker. The feed posts ``FeedUpdate`` messages, at most a few a second and
never more than one waiting; the app folds each into the model, tells the
feed it may send the next, and redraws only the panels the update changed.
A one-second tick samples the tok/s histories and refreshes elapsed times.

The task table is a ``VirtualList``: its rows are recomputed (filter
applied) at most ``TASK_REFRESH_S`` apart and only the visible lines are
drawn, so a batch of 10,000 tasks stays cheap.

Enter on a batch opens the batch screen (``tui.batch_screen``), on a worker
its detail (``tui.worker_screen``); ``s`` sorts the focused table by its
next column and ``S`` reverses it (``tui.sorting``); ``/`` on the events
pane searches them.

Actions (cancel, drain, load, unload, and the run controls of
``tui.controls``: retry, resume, re-run, cancel all, start a plan) ask first,
go to the brain through the feed, and their answer lands in the events pane
and as a notification. They are refused while the link is not live: a
request queued on a dead link could reach the brain long after the operator
gave up on it. The command palette (ctrl+p) lists them (``LlmoCommands``).
``x`` (restart) goes to ``llmo up``'s supervisor instead (``cli.up_link``),
for a worker it gave up on (shown ``given up``, with why, from the
supervisor's published report) or one that is down; a rig without ``llmo
up`` answers how systemd restarts it.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Footer, Input, Static

from llmo.proto.messages import (
    BRAIN,
    SUPERVISOR,
    BatchCancel,
    ChildRestart,
    ModelLoad,
    ModelUnload,
    WorkerDrain,
)
from llmo.tui import controls, render, sorting
from llmo.tui.batch_screen import BatchScreen
from llmo.tui.model import Model
from llmo.tui.rows import TaskRow
from llmo.tui.screens import ConfirmScreen, HelpScreen, LogScreen, PromptScreen
from llmo.tui.updates import Update
from llmo.tui.widgets import BatchesTable, EventList, StatusBar, VirtualList, WorkersTable
from llmo.tui.worker_screen import WorkerScreen

log = logging.getLogger("llmo.tui")

TICK_S = 1.0
TASK_REFRESH_S = 0.5
LAGS_KEPT = 20_000


class FeedUpdate(Message):
    """An ``Update`` from the feed thread."""

    def __init__(self, update: Update) -> None:
        super().__init__()
        self.update = update


@dataclass(slots=True)
class Stats:
    """What the benchmark reads: updates applied, their cost, and their lag to the screen.

    ``lags`` holds, per update, the age of its oldest publication when the
    screen showing it was refreshed (the worst case of that update) and
    ``fresh_lags`` that of its newest; ``work`` the seconds spent folding it
    in and redrawing.
    """

    updates: int = 0
    messages: int = 0
    lags: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=LAGS_KEPT)
    )
    fresh_lags: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=LAGS_KEPT)
    )
    work: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=LAGS_KEPT)
    )


class MonitorApp(App[None]):
    TITLE = "llmo"
    COMMANDS = App.COMMANDS | {controls.LlmoCommands}
    CSS = """
    #status { height: 1; background: $panel; }
    #workers { height: auto; max-height: 14; border: round $primary-darken-2; }
    #batches { height: auto; max-height: 10; border: round $primary-darken-2; }
    #bottom { height: 1fr; min-height: 6; }
    #tasks-pane { width: 2fr; border: round $primary-darken-2; }
    #events { width: 1fr; border: round $primary-darken-2; }
    #filter { display: none; height: 1; border: none; padding: 0 1; }
    #filter.-shown { display: block; }
    #task-header { height: 1; padding: 0 0 0 0; }
    #tasks { height: 1fr; }
    VirtualList:focus { border: round $accent; }
    #tasks:focus { border: none; }
    #main.-stale #workers, #main.-stale #batches, #main.-stale #tasks-pane,
    #main.-stale #events { text-opacity: 55%; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("c", "cancel_batch", "Cancel batch"),
        Binding("d", "drain", "Drain"),
        Binding("l", "load", "Load model"),
        Binding("u", "unload", "Unload"),
        Binding("R", "retry_task", "Retry task", show=False),
        Binding("E", "resume_batch", "Resume batch", show=False),
        Binding("N", "rerun_batch", "Re-run batch", show=False),
        Binding("C", "cancel_all", "Cancel all", show=False),
        Binding("p", "start_plan", "Start plan", show=False),
        Binding("x", "restart_worker", "Restart"),
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("S", "reverse_sort", "Reverse sort", show=False),
        Binding("r", "resync", "Refresh"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(
        self,
        feed_factory: Callable[[Callable[[Update], object]], Any] | None = None,
        *,
        model: Model | None = None,
        clock: Callable[[], float] = time.time,
        endpoint: str = "",
        rig: str = "",
        path_map: Sequence[tuple[str, str]] = (),
        tick_s: float = TICK_S,
    ) -> None:
        super().__init__()
        self.model = model or Model()
        self.clock = clock
        self.endpoint = endpoint
        self.rig = rig  # "rig NAME at ENDPOINT": which rig the header says this is
        self.path_map = tuple(path_map)
        self.tick_s = tick_s
        self.feed_factory = feed_factory
        self.feed: Any = None
        self.stats = Stats()
        self.task_filter = ""
        self.task_sort: int | None = None  # None: live first; else a TASK_COLUMNS index
        self.task_reverse = False
        self._task_width = render.TASK_COLUMNS[0][1]
        self._task_line_width: int | None = None
        self._tasks_drawn_at = 0.0
        self._tasks_key: tuple[str, str] = ("", "")

    # --- layout ------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        # The panels are kept by reference: the app draws them from message
        # handlers that may still run while it shuts down, when queries fail.
        self.status_bar = StatusBar(id="status")
        self.workers_table = WorkersTable(id="workers")
        self.workers_table.border_title = "workers"
        self.batches_table = BatchesTable(id="batches")
        self.batches_table.border_title = "batches"
        self.filter_box = Input(
            placeholder="filter tasks: words, state:run, class:llm", id="filter"
        )
        self.task_header = Static(render.task_header(), id="task-header")
        self.task_list = VirtualList(self._task_line, key=lambda row: row.id, id="tasks")
        self.event_list = EventList(id="events")
        self.event_list.border_title = "events (newest first)"
        self.main_panel = Vertical(id="main")
        self.tasks_pane = Vertical(id="tasks-pane")
        self.tasks_pane.border_title = "tasks"
        yield self.status_bar
        with self.main_panel:
            yield self.workers_table
            yield self.batches_table
            with Horizontal(id="bottom"):
                with self.tasks_pane:
                    yield self.filter_box
                    yield self.task_header
                    yield self.task_list
                yield self.event_list
        yield Footer()

    def on_mount(self) -> None:
        self.batches_table.focus()
        self.redraw(force=True)
        self.call_after_refresh(self._fit_tasks)
        self.set_interval(self.tick_s, self.tick)
        if self.feed_factory is not None:
            self.feed = self.feed_factory(self._post)
            self.run_worker(self.feed.run, name="feed", thread=True, exit_on_error=True)

    def _post(self, update: Update) -> None:
        self.post_message(FeedUpdate(update))

    def stop_feed(self) -> None:
        if self.feed is not None:
            self.feed.stop()

    def on_unmount(self) -> None:
        self.stop_feed()

    async def action_quit(self) -> None:
        self.stop_feed()
        self.exit()

    # --- the feed ----------------------------------------------------------------------

    def on_feed_update(self, message: FeedUpdate) -> None:
        started = time.perf_counter()
        update = message.update
        now = self.clock()
        try:
            self.model.apply(update, now)
        except Exception as exc:  # bad input from the rig must not take the monitor down
            log.exception("could not apply an update")
            self.model.note(now, "error", f"could not apply an update ({exc!r}); resyncing")
            if self.feed is not None:
                self.feed.resync()
        if self.feed is not None:
            self.feed.taken()
        for result in update.results:  # the brain's answers, also in the events pane
            text = f"{result.label}: {result.text}"
            if result.ok:
                self.notify(text, timeout=8, markup=False)
            else:
                self.notify(text, severity="error", timeout=8, markup=False)
        self.redraw()
        stats = self.stats
        stats.updates += 1
        stats.messages += update.received
        stats.work.append(time.perf_counter() - started)
        if update.oldest_ts:
            self.call_after_refresh(self._record_lag, update.oldest_ts, update.newest_ts)

    def _record_lag(self, oldest: float, newest: float) -> None:
        now = time.time()
        self.stats.lags.append(now - oldest)
        self.stats.fresh_lags.append(now - newest)

    def tick(self) -> None:
        self.model.tick(self.clock())
        self.redraw()

    # --- drawing -----------------------------------------------------------------------

    def redraw(self, force: bool = False) -> None:
        if not self.status_bar.is_attached:
            return  # shutting down
        model = self.model
        now = self.clock()
        changes = model.take_changes()
        if force:
            changes |= {"workers", "batches", "tasks", "events", "link"}
        self.status_bar.show(model, self.endpoint, self.rig)
        stale = model.link.state in ("down", "no_brain")
        self.main_panel.set_class(stale, "-stale")
        if changes & {"workers", "link"}:  # the link's state colours heartbeat ages
            workers = self.workers_table
            workers.show(model, now)
            rate = f"rig {model.rig_tok_s():.1f} tok/s" if model.live else "stale"
            workers.border_title = f"workers · {rate}"
            self.show_worker_detail()
        if "batches" in changes:
            batches = self.batches_table
            batches.show(model, now)
            selected = batches.selected_key or ""
            if selected != model.selected_batch:
                self.select_batch(selected)
        if "events" in changes:
            self.event_list.show(tuple(model.events))
        if changes & {"tasks", "batches"}:
            self.redraw_tasks(force=force)

    def redraw_tasks(self, force: bool = False) -> None:
        if not self.task_list.is_attached:
            return
        now = time.monotonic()
        key = (self.model.selected_batch, self.task_filter)
        if not force and key == self._tasks_key and now - self._tasks_drawn_at < TASK_REFRESH_S:
            self.task_list.refresh()  # figures only: redraw visible rows
            return
        self._tasks_key = key
        self._tasks_drawn_at = now
        model = self.model
        batch_id = model.selected_batch
        rows = model.task_rows(batch_id, self.task_filter, live_first=self.live_first)
        if self.task_sort is not None:
            sort_key = sorting.TASK_KEYS[self.task_sort]
            rows = sorting.ordered(rows, sort_key, self.clock(), self.task_reverse)
        self.task_list.set_rows(rows)
        pane = self.tasks_pane
        if not batch_id:
            pane.border_title = "tasks (no batch selected)"
            return
        batch = model.batches.get(batch_id)
        name = f"{batch.plan} {batch_id}" if batch is not None and batch.plan else batch_id
        known = len(model.tasks.get(batch_id, {}))
        order = self.task_order()
        if batch is not None:
            order += f" · {model.batch_rate_text(batch_id, self.clock())}"
        if batch_id not in model.tasks:
            pane.border_title = f"tasks of {name} (loading...)"
        elif self.task_filter:
            shown = f"{len(rows)} of {known} match {self.task_filter!r}"
            pane.border_title = f"tasks of {name}: {shown}, {order}"
        else:
            pane.border_title = f"tasks of {name}: {known}, {order}"

    @property
    def live_first(self) -> bool:
        return self.task_sort is None

    def task_order(self) -> str:
        if self.task_sort is None:
            return "live first"
        if self.task_sort == 0:
            return "plan order, reversed" if self.task_reverse else "plan order"
        name = render.TASK_COLUMNS[self.task_sort][0].lower()
        return f"by {name}{', descending' if self.task_reverse else ''}"

    def _task_line(self, row: TaskRow) -> Text:
        return render.task_line(row, self.clock(), self._task_width, self._task_line_width)

    def on_virtual_list_resized(self, event: VirtualList.Resized) -> None:
        if event.source is self.task_list:  # the pane has its new width only now
            self._fit_tasks()

    def _fit_tasks(self) -> None:
        if not self.task_list.is_attached:
            return
        tasks = self.task_list
        self._task_line_width = tasks.scrollable_content_region.width or None
        width = render.task_width(tasks.scrollable_content_region.width)
        if width != self._task_width:
            self._task_width = width
            self.show_task_header()
        tasks.refresh()

    def show_task_header(self) -> None:
        mark = (self.task_sort, self.task_reverse) if self.task_sort is not None else None
        self.task_header.update(render.task_header(self._task_width, mark))

    # --- selection ---------------------------------------------------------------------

    def on_virtual_list_highlighted(self, event: VirtualList.Highlighted) -> None:
        if isinstance(event.source, WorkersTable):
            self.show_worker_detail()
        if isinstance(event.source, BatchesTable) and event.row is not None:
            key = event.row[0]
            if key != self.model.selected_batch:
                self.select_batch(key)

    def select_batch(self, batch_id: str) -> None:
        if self.model.select_batch(batch_id) and self.feed is not None:
            self.feed.resync(batch_id)
        self.redraw_tasks(force=True)

    def selected_worker(self) -> str:
        return self.workers_table.selected_key or ""

    def show_worker_detail(self) -> None:
        """The selected worker's endpoint URL under the workers panel."""
        row = self.model.workers.get(self.selected_worker())
        self.workers_table.border_subtitle = render.worker_detail(row) if row else ""

    def on_virtual_list_selected(self, event: VirtualList.Selected) -> None:
        if event.source.id == "tasks":
            self.open_log(event.row)
        elif isinstance(event.source, WorkersTable) and event.row is not None:
            self.open_worker(event.row[0])
        elif isinstance(event.source, BatchesTable) and event.row is not None:
            self.open_batch(event.row[0])

    def open_worker(self, name: str) -> None:
        """The worker's detail: telemetry history, recent attempts, log tail."""
        self.push_screen(WorkerScreen(name, self.model, self.clock, self.map_path))

    def open_batch(self, batch_id: str) -> None:
        if batch_id != self.model.selected_batch:
            self.select_batch(batch_id)
        self.push_screen(
            BatchScreen(
                batch_id,
                self.model,
                self.clock,
                map_path=self.map_path,
                open_log=lambda _batch, task: self.open_log(task),
                show_group=self.show_group,
                fetch=self.fetch_batch,
                interval=min(1.0, self.tick_s),
            )
        )

    def fetch_batch(self, batch_id: str) -> None:
        if self.feed is not None:
            self.feed.resync(batch_id)

    def show_group(self, template: str) -> None:
        """The task table narrowed to a foreach group's items."""
        box = self.filter_box
        box.add_class("-shown")
        box.value = f"task:{template}_"
        self.task_filter = box.value
        self.redraw_tasks(force=True)
        self.task_list.focus()

    def open_log(self, task: TaskRow) -> None:
        batch = self.model.batches.get(self.model.selected_batch)
        if batch is None or not batch.history_path:
            self.notify("this batch's history folder is not known yet", severity="warning")
            return
        history = self.map_path(batch.history_path)
        path = f"{history}/logs/{task.id}.log"
        events = f"{history}/batch_events.jsonl"

        def current() -> TaskRow | None:
            return self.model.tasks.get(batch.id, {}).get(task.id)

        # The table's row may be a redraw behind the model: the model's row, and kept so.
        task = current() or task
        self.push_screen(
            LogScreen(batch.id, task, path, self.describe_task, events, current=current)
        )

    def map_path(self, path: str) -> str:
        """A rig path as this machine sees the shared drive (``--path-map``)."""
        for rig, local in self.path_map:
            if path == rig or path.startswith(rig.rstrip("/") + "/"):
                return local.rstrip("/") + path[len(rig.rstrip("/")) :]
        return path

    def describe_task(self, task: TaskRow) -> Text:
        now = self.clock()
        batch_id = self.model.selected_batch
        out = Text()
        out.append(f"{task.id}", "bold")
        out.append(f"  ({task.task_class or '?'} task of batch {batch_id})\n", "dim")
        out.append("state ")
        out.append(task.state, render.TASK_STYLES.get(task.state, ""))
        out.append(f"   worker {task.worker or render.DASH}   attempts {task.attempts}")
        out.append(f"   attempt id {task.attempt_id or render.DASH}\n")
        out.append(f"time {render.duration(task.duration(now))}")
        if task.exit_code is not None:
            out.append(f"   exit code {task.exit_code}")
        rate = task.rate(now)
        if rate is not None or task.tokens:
            out.append(f"   tokens {task.tokens}   tok/s {rate or 0:.1f}")
        out.append("\n")
        if task.error:
            out.append("error: " + task.error.strip() + "\n", "red")
        for line in task.history or ():
            out.append("· " + line + "\n", "yellow")
        return out

    # --- filter ------------------------------------------------------------------------

    def action_filter(self) -> None:
        if self.focused is self.event_list:
            self.search_events()
            return
        box = self.filter_box
        box.add_class("-shown")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.task_filter = event.value.strip()
            self.redraw_tasks(force=True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            if not event.value.strip():
                event.input.remove_class("-shown")
            self.task_list.focus()

    def search_events(self) -> None:
        def answer(term: str | None) -> None:
            found = self.event_list.search(term or "")
            if term and not found:
                self.notify(f"no event holds {term!r}", severity="warning")

        self.push_screen(PromptScreen("Search the events for:", self.event_list.term), answer)

    def action_clear_filter(self) -> None:
        if self.focused is self.event_list and self.event_list.term:
            self.event_list.search("")
            return
        box = self.filter_box
        if box.has_class("-shown") or self.task_filter:
            box.value = ""
            box.remove_class("-shown")
            self.task_filter = ""
            self.redraw_tasks(force=True)
            self.task_list.focus()

    # --- actions -----------------------------------------------------------------------

    MAIN_ONLY = frozenset(
        {"cancel_batch", "drain", "load", "unload", "restart_worker", "filter", "sort", "resync"}
        | {"reverse_sort", "retry_task", "resume_batch", "rerun_batch", "cancel_all", "start_plan"}
    )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The main screen's keys do nothing (and are not listed) over another screen."""
        return not (action in self.MAIN_ONLY and len(self.screen_stack) > 1)

    def action_sort(self) -> None:
        """The focused table's next sort column (the tasks when no table has the focus)."""
        table = self.focused
        if isinstance(table, WorkersTable | BatchesTable):
            self.notify(f"{table.id}: {table.cycle_sort()}")
            return
        columns = len(render.TASK_COLUMNS)
        if self.task_sort is None:
            self.task_sort = 0
        else:
            self.task_sort = self.task_sort + 1 if self.task_sort + 1 < columns else None
        self.task_reverse = False
        self.resort_tasks()

    def action_reverse_sort(self) -> None:
        table = self.focused
        if isinstance(table, WorkersTable | BatchesTable):
            self.notify(f"{table.id}: {table.reverse_sort()}")
            return
        if self.task_sort is None:
            self.task_sort = 0
        self.task_reverse = not self.task_reverse
        self.resort_tasks()

    def resort_tasks(self) -> None:
        self.show_task_header()
        self.notify(f"tasks: {self.task_order()}")
        self.redraw_tasks(force=True)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_resync(self) -> None:
        if self.feed is not None:
            self.feed.resync()
            self.notify("asking the brain for a fresh snapshot")

    def _can_act(self) -> bool:
        if self.feed is None:
            self.notify("not connected to a rig", severity="warning")
            return False
        if not self.model.live:
            self.notify(
                "the link to the rig is not live: nothing sent", severity="error", timeout=6
            )
            return False
        return True

    def _send(self, label: str, msg: Any) -> None:
        self.model.note(self.clock(), "info", f"{label}: sent")
        self.redraw()
        self.feed.act(label, msg)

    def action_cancel_batch(self) -> None:
        batch = self.model.batches.get(self.model.selected_batch)
        if batch is None:
            self.notify("no batch selected", severity="warning")
            return
        if batch.finished:
            self.notify(f"batch {batch.id} has already ended ({batch.state})", severity="warning")
            return
        if not self._can_act():
            return
        done, running, _, rest = batch.split()
        question = (
            f"Cancel batch {batch.id} ({batch.plan or 'plan'})?\n"
            f"{running} running attempt(s) will be aborted, {rest} task(s) skipped; "
            f"{done} done stay done."
        )

        def answer(yes: bool | None) -> None:
            if yes:
                self._send(
                    f"cancel {batch.id}",
                    BatchCancel(dst=BRAIN, batch_id=batch.id, reason="cancelled from llmo tui"),
                )

        self.push_screen(ConfirmScreen(question), answer)

    def _worker_row(self):
        name = self.selected_worker()
        row = self.model.workers.get(name)
        if row is None:
            self.notify("no worker selected", severity="warning")
        return row

    def action_drain(self) -> None:
        row = self._worker_row()
        if row is None or not self._can_act():
            return
        drain = row.shown_state != "draining"
        if drain:
            question = f"Drain {row.name}? Its running attempts finish; it takes no new work."
        else:
            question = f"Put {row.name} back in service?"

        def answer(yes: bool | None) -> None:
            if yes:
                label = f"{'drain' if drain else 'undrain'} {row.name}"
                self._send(label, WorkerDrain(dst=BRAIN, worker=row.name, drain=drain))

        self.push_screen(ConfirmScreen(question), answer)

    def action_load(self) -> None:
        row = self._worker_row()
        if row is None or not self._can_act():
            return
        question = f"Load which model on {row.name}? (a GGUF path or a name the rig knows)"

        def answer(model: str | None) -> None:
            if model:
                self._send(
                    f"load {model} on {row.name}",
                    ModelLoad(dst=BRAIN, worker=row.name, model=model),
                )

        self.push_screen(PromptScreen(question, row.model or row.loading), answer)

    def action_unload(self) -> None:
        row = self._worker_row()
        if row is None or not self._can_act():
            return
        if not row.model and row.shown_state != "hot":
            self.notify(f"{row.name} has no model loaded", severity="warning")
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._send(
                    f"unload {row.name}",
                    ModelUnload(dst=BRAIN, worker=row.name, reason="unloaded from llmo tui"),
                )

        self.push_screen(
            ConfirmScreen(f"Unload {row.model or 'the model'} from {row.name}?"), answer
        )

    # run controls (tui.controls)

    def action_retry_task(self) -> None:
        controls.retry_task(self)

    def action_resume_batch(self) -> None:
        controls.resume_batch(self)

    def action_rerun_batch(self) -> None:
        controls.rerun_batch(self)

    def action_cancel_all(self) -> None:
        controls.cancel_all(self)

    def action_start_plan(self) -> None:
        controls.start_plan(self)

    def action_restart_worker(self) -> None:
        row = self._worker_row()
        if row is None or not self._can_act():
            return
        if not row.given_up and row.shown_state != "down":
            self.notify(
                f"{row.name} is up: only a worker llmo up gave up on is restarted",
                severity="warning",
            )
            return
        if row.given_up:
            question = f"Restart {row.name}? llmo up gave up on it: {row.given_up}"
        else:
            question = f"Ask llmo up to restart {row.name}? (it is down)"

        def answer(yes: bool | None) -> None:
            if yes:
                self._send(f"restart {row.name}", ChildRestart(dst=SUPERVISOR, child=row.name))

        self.push_screen(ConfirmScreen(question), answer)
