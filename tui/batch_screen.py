"""The batch screen: one batch's dependency graph by level, its goal, counts and files.

Theory of operation
-------------------
Opened with Enter on a batch row, it draws from the monitor's ``Model`` (it
holds no state of its own) once a second while it is open: the header says
what the batch is, its tasks by outcome (cancelled apart from failed), a
goal-driven batch's progress towards its goal, and where its files are on
the shared drive (mapped with ``--path-map``): the history folder, the
summary, the events, the task logs, and ``ESCALATION.md`` once it failed.

Below, the graph by level (``tui.levels``): one line per task, one per
foreach group with its items counted. Enter on a task opens its log screen;
on a group, it goes back to the main screen with the task table filtered
to the group's items. Dependencies come with the brain's snapshot of the
batch, which the screen asks for when the model does not hold them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Static

from llmo.proto.messages import GoalInfo
from llmo.proto.states import TASK_ACTIVE
from llmo.tui import render
from llmo.tui.levels import GOAL_DEP, Node, graph_levels, group_text
from llmo.tui.model import TASK_QUEUED, Model
from llmo.tui.rows import BatchRow, TaskRow
from llmo.tui.widgets import VirtualList

GROUP_STYLE = "bold cyan"


def counts_text(batch: BatchRow) -> Text:
    """``tasks 120: 80 done · 5 running · 30 waiting · 3 failed · 2 cancelled``."""
    c = batch.counts
    out = Text(f"tasks {batch.total}: ")
    parts = [
        (c["done"], "done", "green"),
        (sum(c[s] for s in TASK_ACTIVE), "running", "bold yellow"),
        (sum(c[s] for s in TASK_QUEUED) + c["expanding"], "waiting", ""),
        (c["failed"], "failed", "bold red"),
        (c["skipped"], "skipped", "red"),
        (c["cancelled"], "cancelled", "magenta"),
    ]
    shown = [(n, label, style) for n, label, style in parts if n or label in ("done", "failed")]
    for i, (n, label, style) in enumerate(shown):
        if i:
            out.append(" · ", "dim")
        out.append(f"{n} {label}", style if n else "dim")
    if c["expanded"]:
        out.append(f"  ({c['expanded']} foreach templates expanded)", "dim")
    return out


def goal_text(goal: GoalInfo) -> Text:
    """``goal: 6 of 8 succeeded (2 may fail), 9 tried of at most 40, round 1 of 3: running``."""
    out = Text("goal: ", "bold")
    out.append(f"{goal.succeeded} of {goal.target} succeeded")
    if goal.tolerance:
        out.append(f" ({goal.tolerance} may fail)", "dim")
    out.append(f", {goal.tried} tried")
    if goal.cap:
        out.append(f" of at most {goal.cap}")
    out.append(f", round {goal.rounds}")
    if goal.round_cap:
        out.append(f" of {goal.round_cap}")
    style = {"reached": "green", "exhausted": "bold red"}.get(goal.state, "yellow")
    out.append(": ")
    out.append(goal.state, style)
    if goal.reason:
        out.append(f" ({goal.reason})", "dim")
    return out


def files_text(batch: BatchRow, map_path: Callable[[str], str]) -> Text:
    """Where the batch's files are, as this machine sees them; ESCALATION.md once it failed."""
    out = Text()
    if not batch.history_path:
        out.append("files: the history folder is not known yet", "dim")
        return out
    history = map_path(batch.history_path).rstrip("/")
    rows = [("history", history + "/")]
    rows.append(("summary", f"{history}/RUN_SUMMARY.md (and .json)"))
    rows.append(("events", f"{history}/batch_events.jsonl"))
    rows.append(("logs", f"{history}/logs/<task>.log"))
    if batch.state == "failed":
        rows.append(("escalation", f"{history}/ESCALATION.md"))
    if batch.state in ("failed", "cancelled"):
        rows.append(("why", f"{history}/results/batch_failure.json"))
    if batch.plan_path:
        rows.append(("plan", map_path(batch.plan_path)))
    for i, (label, path) in enumerate(rows):
        if i:
            out.append("\n")
        out.append(f"{label:>10}  ", "bold" if label != "escalation" else "bold red")
        out.append(path)
    return out


def node_line(node: Node | tuple[int, int], now: float) -> Text:
    """A graph line: a level's heading, a task, or a foreach group with its progress."""
    if isinstance(node, tuple):
        level, count = node
        return Text(f"level {level} · {count} node{'s' if count != 1 else ''}", "bold")
    out = Text(no_wrap=True, overflow="ellipsis")
    if node.id == GOAL_DEP:
        out.append("  ◆ " + group_text(node), "bold magenta")
        return out
    if node.group:
        out.append("  ▸ ", GROUP_STYLE)
        bar = _group_bar(node)
        out.append_text(bar)
        out.append(" ")
        out.append(group_text(node), GROUP_STYLE)
    else:
        out.append("  · ")
        out.append(node.id)
        out.append("  ")
        out.append(node.state or "?", render.TASK_STYLES.get(node.state, ""))
        row = node.row
        if row is not None:
            if row.worker and node.state in TASK_ACTIVE:
                out.append(f" on {row.worker}", "dim")
            if row.state in ("failed", "delayed") and row.error.strip():
                out.append(f"  {row.error.strip().splitlines()[-1]}", "red")
    if node.deps:
        out.append(f"   ← {', '.join(node.deps)}", "dim")
    return out


def _group_bar(node: Node, width: int = 10) -> Text:
    batch = BatchRow(id=node.id, counts=node.counts)
    return render.progress(batch, width)


class GraphList(VirtualList):
    """The graph's lines; the cursor steps over the level headings.

    Its scrollable height is its lines exactly: a graph is a few hundred
    lines at most, and rounding up would show a scrollbar over nothing."""

    EXACT_HEIGHT = True

    def move_cursor_to(self, index: int, quiet: bool = False) -> None:
        step = 1 if index >= self.cursor else -1
        while 0 <= index < len(self.rows) and isinstance(self.rows[index], tuple):
            index += step
        if 0 <= index < len(self.rows):
            super().move_cursor_to(index, quiet)
        elif self.cursor + step < 0 or step < 0:
            self.scroll_to(y=0, animate=False)  # above the first task: its heading shows


class BatchScreen(Screen[None]):
    """One batch: its header (counts, goal, files) and its graph by level."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Back"),
    ]
    DEFAULT_CSS = """
    BatchScreen #batch-info {
        height: auto; max-height: 14; padding: 0 1; background: $panel;
    }
    BatchScreen #graph { height: 1fr; border: round $primary-darken-1; }
    BatchScreen #graph:focus { border: round $accent; }
    """

    def __init__(
        self,
        batch_id: str,
        model: Model,
        clock: Callable[[], float],
        *,
        map_path: Callable[[str], str] = lambda path: path,
        open_log: Callable[[str, TaskRow], None] | None = None,
        show_group: Callable[[str], None] | None = None,
        fetch: Callable[[str], None] | None = None,
        interval: float = 1.0,
    ) -> None:
        super().__init__()
        self.batch_id = batch_id
        self.model = model
        self.clock = clock
        self.map_path = map_path
        self.open_log = open_log
        self.show_group = show_group
        self.fetch = fetch
        self.interval = interval
        self.asked = False

    def compose(self) -> ComposeResult:
        yield Static("", id="batch-info")
        graph = GraphList(self._line, key=_node_key, id="graph")
        graph.border_title = "dependency graph by level"
        yield graph
        yield Footer()

    def _line(self, node: Any) -> Text:
        return node_line(node, self.clock())

    def on_mount(self) -> None:
        self.redraw()
        self.query_one("#graph", VirtualList).focus()
        self.set_interval(self.interval, self.redraw)

    def redraw(self) -> None:
        model = self.model
        batch = model.batches.get(self.batch_id)
        info = self.query_one("#batch-info", Static)
        graph = self.query_one("#graph", VirtualList)
        if batch is None:
            info.update(Text(f"batch {self.batch_id} is no longer known to the brain", "yellow"))
            graph.set_rows([])
            return
        info.update(self.info_text(batch))
        tasks = model.tasks.get(self.batch_id)
        if tasks is None:
            graph.border_title = "dependency graph by level (asking the brain for the tasks...)"
            graph.set_rows([])
            self.ask()
            return
        levels = graph_levels(tasks)
        rows: list[Any] = []
        for n, level in enumerate(levels):
            rows.append((n, len(level)))
            rows.extend(level)
        graph.set_rows(rows)
        if isinstance(graph.current, tuple):
            graph.move_cursor_to(graph.cursor + 1, quiet=True)
        nodes = sum(len(level) for level in levels)
        title = f"dependency graph by level: {len(levels)} levels, {nodes} nodes"
        unknown = any(r.deps is None and not r.template for r in tasks.values())
        if unknown:
            title += " (dependencies not known yet: asking the brain)"
            self.ask()
        graph.border_title = title

    def ask(self) -> None:
        """One narrowed snapshot per visit: it carries the tasks and their dependencies."""
        if not self.asked and self.fetch is not None:
            self.asked = True
            self.fetch(self.batch_id)

    def info_text(self, batch: BatchRow) -> Text:
        now = self.clock()
        out = Text()
        out.append(f"batch {batch.id}", "bold")
        out.append(f"  plan {batch.plan or render.DASH}  ")
        out.append(batch.state, render.BATCH_STYLES.get(batch.state, ""))
        out.append(f"  priority {batch.priority_name or render.DASH}", "dim")
        out.append(f"  elapsed {render.duration(batch.elapsed(now))}")
        eta = batch.eta(now)
        if eta is not None:
            out.append(f"  left ~{render.duration(eta)}")
        out.append("\n")
        out.append_text(counts_text(batch))
        out.append(f"\n{self.model.batch_rate_text(batch.id, now)}", "cyan")
        if batch.goal is not None:
            out.append("\n")
            out.append_text(goal_text(batch.goal))
        out.append("\n")
        out.append_text(files_text(batch, self.map_path))
        return out

    def on_virtual_list_selected(self, event: VirtualList.Selected) -> None:
        event.stop()
        node = event.row
        if not isinstance(node, Node):
            return
        if node.group:
            if self.show_group is not None:
                self.dismiss(None)
                self.show_group(node.id)
        elif node.row is not None and self.open_log is not None:
            self.open_log(self.batch_id, node.row)

    def action_close(self) -> None:
        self.dismiss(None)


def _node_key(node: Any) -> str:
    return node.id if isinstance(node, Node) else f"level {node[0]}"
