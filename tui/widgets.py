"""The monitor's widgets: keyed tables that update in place, and virtual lists.

``KeyedTable`` is a ``DataTable`` whose rows are synchronised from a list of
``(key, cells)``: unchanged cells are left alone, so the cursor and scroll
stay put while figures change under them. ``VirtualList`` is a Line API
widget: it draws only the rows on screen from a plain list, so a 10,000-task
batch costs what fits in the window, not what it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import DataTable, Static

from tui import render
from tui.model import Model

# (key, label, width, kept on a narrow screen)
Column = tuple[str, str, int, bool]
WORKER_COLUMNS: Sequence[Column] = (
    ("name", "WORKER", 10, True),
    ("gpus", "GPU", 3, False),
    ("role", "ROLE", 6, False),
    ("state", "STATE", 11, True),
    ("model", "MODEL", 14, True),
    ("temp", "TEMP", 4, True),
    ("vram", "VRAM", 16, True),
    ("power", "POWER", 5, False),
    ("util", "UTIL", 4, False),
    ("tok_s", "TOK/S", 5, True),
    ("history", "TOK/S HISTORY", 14, True),
)
BATCH_COLUMNS: Sequence[Column] = (
    ("id", "BATCH", 16, True),
    ("plan", "PLAN", 14, True),
    ("prio", "PRIO", 6, False),
    ("state", "STATE", 9, True),
    ("progress", "PROGRESS done/run/fail", 30, True),
    ("running", "RUN", 4, False),
    ("failed", "FAIL", 4, False),
    ("elapsed", "ELAPSED", 7, True),
    ("eta", "LEFT", 7, True),
)
SPARK_WIDTH = 14
BAR_WIDTH = 20


class KeyedTable(DataTable):
    """A row-cursor table kept in step with ``(key, cells)`` lists.

    Rows are given with a cell for every column; on a screen too narrow for
    all of them, the columns not marked as kept are left out.
    """

    def __init__(self, columns: Sequence[Column], **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self._columns = columns
        self._visible = list(range(len(columns)))
        self._rows: Sequence[tuple[str, list[Text]]] = ()
        self._shown: dict[str, list[Text]] = {}
        self._order: list[str] = []

    @property
    def full_width(self) -> int:
        return sum(width + 2 * self.cell_padding for _, _, width, _ in self._columns)

    def on_mount(self) -> None:
        self._add_columns()

    def _add_columns(self) -> None:
        for i in self._visible:
            key, label, width, _ = self._columns[i]
            self.add_column(label, key=key, width=width)

    def on_resize(self) -> None:
        wide = self.size.width >= self.full_width
        visible = [i for i, c in enumerate(self._columns) if wide or c[3]]
        if visible != self._visible:
            self._visible = visible
            self.clear(columns=True)
            self._add_columns()
            self._order = []
            self.sync(self._rows)

    @property
    def selected_key(self) -> str | None:
        if not self._order or self.cursor_row < 0:
            return None
        return self._order[min(self.cursor_row, len(self._order) - 1)]

    def cell(self, row: str, column: str) -> Text:
        """The cell as last given (shown or not): for tests and tools."""
        index = next(i for i, c in enumerate(self._columns) if c[0] == column)
        return dict(self._rows)[row][index]

    def sync(self, rows: Sequence[tuple[str, list[Text]]]) -> None:
        self._rows = rows
        visible = self._visible
        keys = [key for key, _ in rows]
        if keys != self._order:
            selected = self.selected_key
            self.clear()
            for key, cells in rows:
                self.add_row(*(cells[i] for i in visible), key=key)
            self._order = keys
            self._shown = {key: cells for key, cells in rows}
            if selected in keys:
                self.move_cursor(row=keys.index(selected), animate=False)
            return
        for key, cells in rows:
            old = self._shown.get(key)
            for i in visible:
                if old is None or cells[i] != old[i]:
                    self.update_cell(key, self._columns[i][0], cells[i])
            self._shown[key] = cells


class WorkersTable(KeyedTable):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(WORKER_COLUMNS, **kwargs)

    def show(self, model: Model, now: float) -> None:
        rows = sorted(model.workers.values(), key=lambda w: w.name)
        # One scale for every sparkline, so a slow worker looks slow beside a fast one.
        top = max((max(w.history, default=0.0) for w in rows), default=0.0)
        self.sync([(w.name, render.worker_cells(w, now, SPARK_WIDTH, top)) for w in rows])


class BatchesTable(KeyedTable):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(BATCH_COLUMNS, **kwargs)

    def show(self, model: Model, now: float) -> None:
        self.sync([(b.id, render.batch_cells(b, now, BAR_WIDTH)) for b in model.batch_order()])


class VirtualList(ScrollView, can_focus=True):
    """Rows drawn on demand from a list; an optional cursor; Enter selects."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Open", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {"virtual-list--cursor"}
    DEFAULT_CSS = """
    VirtualList { overflow-x: hidden; scrollbar-gutter: stable; }
    VirtualList > .virtual-list--cursor { background: $surface-lighten-2; }
    VirtualList:focus > .virtual-list--cursor { background: $accent 60%; }
    """

    class Selected(Message):
        def __init__(self, source: VirtualList, row: Any) -> None:
            super().__init__()
            self.source = source
            self.row = row

    def __init__(
        self,
        render_row: Callable[[Any], Text],
        *,
        cursor: bool = True,
        key: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.render_row = render_row
        self.rows: Sequence[Any] = ()
        self.cursor = 0
        self.show_cursor = cursor
        self.key = key

    def set_rows(self, rows: Sequence[Any]) -> None:
        """Show ``rows``; the cursor stays on the same row (by ``key``) if it is still there."""
        current = self.current if self.cursor > 0 else None  # at the top: stay at the top
        self.rows = rows
        if self.key is not None and current is not None:
            wanted = self.key(current)
            if not (0 <= self.cursor < len(rows) and self.key(rows[self.cursor]) == wanted):
                found = next((i for i, row in enumerate(rows) if self.key(row) == wanted), None)
                if found is not None:
                    self._move_to(found)
        if self.cursor >= len(rows):
            self.cursor = max(0, len(rows) - 1)
        self.virtual_size = Size(0, len(rows))
        self.refresh()

    @property
    def current(self) -> Any:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def render_line(self, y: int) -> Strip:
        index = self.scroll_offset.y + y
        width = self.size.width
        base = self.rich_style
        if index >= len(self.rows):
            return Strip.blank(width, base)
        text = self.render_row(self.rows[index])
        text.end = ""
        if self.show_cursor and index == self.cursor:
            cursor_style = self.get_component_rich_style("virtual-list--cursor")
            text.stylize(cursor_style)
            text.pad_right(max(0, width - text.cell_len))
        strip = Strip(list(text.render(self.app.console)), text.cell_len)
        return strip.crop_extend(0, width, base).apply_style(base)

    def _move_to(self, index: int) -> None:
        if not self.rows:
            return
        if self.size.height == 0:  # not laid out yet
            self.cursor = max(0, min(len(self.rows) - 1, index))
            return
        old = self.cursor
        self.cursor = max(0, min(len(self.rows) - 1, index))
        if old != self.cursor:
            self.refresh()
        height = max(1, self.scrollable_content_region.height)
        top = round(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False)

    def action_cursor(self, step: int) -> None:
        if self.show_cursor:
            self._move_to(self.cursor + step)
        else:
            self.scroll_relative(y=step, animate=False)

    def action_page(self, direction: int) -> None:
        height = max(1, self.scrollable_content_region.height - 1)
        if self.show_cursor:
            self._move_to(self.cursor + direction * height)
        else:
            self.scroll_relative(y=direction * height, animate=False)

    def action_jump(self, where: int) -> None:
        target = len(self.rows) - 1 if where < 0 else where
        if self.show_cursor:
            self._move_to(target)
        else:
            self.scroll_to(y=max(0, target), animate=False)

    def action_select(self) -> None:
        if self.show_cursor and self.current is not None:
            self.post_message(self.Selected(self, self.current))

    def on_click(self, event: Any) -> None:
        if self.show_cursor:
            self._move_to(round(self.scroll_y) + event.y)


class EventList(VirtualList):
    """The events pane: newest first, long lines wrapped under their text."""

    INDENT = 9  # "HH:MM:SS "

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(lambda line: line.copy(), cursor=False, **kwargs)
        self.items: Sequence[Any] = ()
        self._width = 0

    def show(self, items: Sequence[Any]) -> None:
        self.items = items
        self._wrap()

    def on_resize(self) -> None:
        if self.scrollable_content_region.width != self._width:
            self._wrap()

    def _wrap(self) -> None:
        width = self.scrollable_content_region.width or 60
        self._width = width
        body_width = max(10, width - self.INDENT)
        lines: list[Text] = []
        console = self.app.console
        for item in self.items:
            body = Text(item.text, style=render.LEVEL_STYLES.get(item.level, ""))
            for i, part in enumerate(body.wrap(console, body_width, overflow="fold")):
                line = Text(no_wrap=True)
                line.append(render.clock(item.ts) + " " if i == 0 else " " * self.INDENT, "dim")
                line.append_text(part)
                lines.append(line)
        self.set_rows(lines)


class StatusBar(Static):
    """One line: the link (live, or disconnected since when), the rig's tok/s, counts."""

    plain = ""

    def show(self, model: Model, endpoint: str) -> None:
        link = model.link
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append(" llmo ", "bold reverse")
        out.append(" ")
        if link.state == "live":
            out.append("● live", "bold green")
        elif link.state == "connecting":
            out.append("◌ connecting to " + endpoint, "bold yellow")
        elif link.state == "no_brain":
            out.append(f"▲ brain unreachable since {render.clock(link.since)}", "bold yellow")
        else:
            out.append(f"✖ disconnected since {render.clock(link.since)}", "bold white on red")
        if link.state in ("down", "no_brain") and link.retry_at:
            out.append(f"  retry {render.clock(link.retry_at)}", "yellow")
        if link.state == "no_brain" and model.snapshot_at:
            out.append(f"  data as of {render.clock(model.last_heard or model.snapshot_at)}", "dim")
        workers = list(model.workers.values())
        up = sum(1 for w in workers if w.shown_state != "down")
        running = sum(1 for b in model.batches.values() if not b.finished)
        out.append(f"   rig {model.rig_tok_s():.1f} tok/s", "bold cyan" if model.live else "dim")
        out.append(f"   workers {up}/{len(workers)} up", "" if up == len(workers) else "yellow")
        out.append(f"   batches {running} running")
        if out.plain != self.plain:
            self.plain = out.plain
            self.update(out)
