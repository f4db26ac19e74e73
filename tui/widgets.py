"""The monitor's widgets: virtual lists and tables that redraw only what changed.

``VirtualList`` is a Line API widget: it draws only the rows on screen from a
plain list, so a 10,000-task batch costs what fits in the window, not what it
holds. ``RowTable`` is a ``VirtualList`` of ``(key, cells)`` rows under a
fixed header line; each row's rendered line is kept until its cells change,
so a heartbeat that changes one figure redraws one line. (Textual's
``DataTable`` drops its whole cell cache on any update, which at several
updates a second was most of the monitor's CPU time.) The cursor follows
its row by key when rows come and go.

A ``RowTable`` sorts by one of its shown columns when asked (``cycle_sort``,
``reverse_sort``; the keys are in ``tui.sorting``) and marks that column's
header with ▲ or ▼. The ``EventList`` searches its events: matches are
highlighted and ``n`` / ``N`` bring the next or previous one to the top.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from llmo.tui import render, sorting
from llmo.tui.model import Model

T = TypeVar("T")

# (key, label, width, kept on a narrow screen)
Column = tuple[str, str, int, bool]
# The workers table: (key, label, width, min width, drop rank, flexible). Where the
# screen is too narrow, columns go by drop rank, highest first (0: never), and
# the rest shrink to their min width; spare room goes to the first flexible
# column shown (1: the limit's reason, 2: what it holds, 3: the endpoint).
_WORKER_FIT: dict[str, tuple[str, int, int, int, int]] = {
    "name": ("WORKER", 10, 8, 0, 0),
    "gpus": ("GPU", 3, 3, 8, 0),
    "role": ("ROLE", 6, 6, 10, 0),
    "state": ("STATE", 11, 11, 0, 0),
    "limit": ("LIMIT", 16, 8, 5, 1),  # hidden: the state says the kind of limit
    "seen": ("HEARD", 5, 5, 0, 0),
    "holding": ("HOLDING", 14, 10, 1, 2),
    "model": ("MODEL", 14, 9, 1, 0),
    "temp": ("TEMP", 4, 4, 2, 0),
    "vram": ("VRAM", 14, 6, 4, 0),
    "power": ("POWER", 5, 5, 8, 0),
    "util": ("UTIL", 4, 4, 8, 0),
    "cpu": ("CPU", 9, 9, 3, 0),
    "tok_s": ("TOK/S", 5, 5, 1, 0),
    "history": ("TOK/S HISTORY", 14, 14, 6, 0),  # a narrower one would cut the newest
    "host": ("HOST", 10, 8, 7, 0),
    "endpoint": ("ENDPOINT", 20, 12, 7, 3),
}
WORKER_COLUMNS: Sequence[Column] = tuple(
    (key, _WORKER_FIT[key][0], _WORKER_FIT[key][1], _WORKER_FIT[key][3] <= 2)
    for key in render.WORKER_KEYS
)
WORKER_FIT: dict[str, tuple[int, int, int]] = {
    key: (fit[2], fit[3], fit[4]) for key, fit in _WORKER_FIT.items()
}
LUXURY_RANK = 7  # such columns make way where the more important ones lack their width
WIDE_GAP_FROM = 120  # a table this wide keeps two cells between columns; narrower, one


@dataclass(frozen=True, slots=True)
class ColumnLayout:
    """The columns shown, as (index, width), the gap between them and the line's width."""

    columns: tuple[tuple[int, int], ...]
    gap: int
    width: int

    def shown(self, key: str, columns: Sequence[Column]) -> bool:
        return any(columns[i][0] == key for i, _ in self.columns)


def layout_columns(
    columns: Sequence[Column],
    available: int,
    fit: dict[str, tuple[int, int, int]] = WORKER_FIT,
) -> ColumnLayout:
    """Which columns fit in ``available`` cells, and how wide each is.

    Columns are dropped by rank until every shown one fits at its min width,
    then grow toward their width, the most important first; a column of rank
    ``LUXURY_RANK`` or above is dropped where the more important ones could
    not all have their width beside it. What is left over goes to the first
    flexible column shown.
    """
    gap = 2 if available >= WIDE_GAP_FROM else 1

    def info(i: int) -> tuple[int, int, int]:
        return fit.get(columns[i][0], (columns[i][2], 0, 0))

    shown = list(range(len(columns)))
    order = sorted(shown, key=lambda i: (info(i)[1], i), reverse=True)  # dropped first
    droppable = [i for i in order if info(i)[1] > 0]

    def total(widths: dict[int, int]) -> int:
        return sum(w + gap for w in widths.values()) + 1

    widths = {i: info(i)[0] for i in shown}
    for i in droppable:
        if total(widths) <= available:
            break
        del widths[i]
    for i in droppable:
        rank = info(i)[1]
        if i not in widths or rank < LUXURY_RANK:
            continue
        ahead = {j: columns[j][2] for j in widths if info(j)[1] < rank}
        if total(ahead) + widths[i] + gap > available:
            del widths[i]  # the more important columns could not all have their width
    spare = available - total(widths)
    for i in sorted(widths, key=lambda i: (info(i)[1], i)):  # most important first
        grow = min(spare, max(0, columns[i][2] - widths[i]))
        widths[i] += grow
        spare -= grow
    flexible = sorted((info(i)[2], i) for i in widths if info(i)[2])
    if flexible:
        widths[flexible[0][1]] += spare
    placed = tuple((i, widths[i]) for i in sorted(widths))
    return ColumnLayout(placed, gap, total(widths))


BATCH_COLUMNS: Sequence[Column] = (
    ("id", "BATCH", 16, True),
    ("plan", "PLAN", 14, True),
    ("prio", "PRIO", 6, False),
    ("state", "STATE", 9, True),
    ("progress", "PROGRESS done/run/fail", 30, True),
    ("running", "RUN", 4, False),
    ("failed", "FAIL", 7, False),
    ("elapsed", "ELAPSED", 7, True),
    ("eta", "LEFT", 7, True),
)
SPARK_WIDTH = 14
BAR_WIDTH = 20
HEIGHT_STEP = 64  # a virtual list's scrollable height grows in steps of this many lines


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
    COMPONENT_CLASSES: ClassVar[set[str]] = {"virtual-list--cursor", "virtual-list--header"}
    DEFAULT_CSS = """
    VirtualList { overflow-x: hidden; scrollbar-gutter: stable; }
    VirtualList > .virtual-list--cursor { background: $surface-lighten-2; }
    VirtualList:focus > .virtual-list--cursor { background: $accent 60%; }
    VirtualList > .virtual-list--header { text-style: bold; color: $text-accent; }
    """
    HEADER_LINES = 0
    EXACT_HEIGHT = False  # True where the widget's height follows its rows

    class Selected(Message):
        """Enter on a row."""

        def __init__(self, source: VirtualList, row: Any) -> None:
            super().__init__()
            self.source = source
            self.row = row

    class Resized(Message):
        """Its size changed: lines that depend on its width are due again."""

        def __init__(self, source: VirtualList) -> None:
            super().__init__()
            self.source = source

    class Highlighted(Message):
        """The operator moved the cursor to a row."""

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
        self.base_style = Style()
        self.cursor_rich_style = Style()

    def on_resize(self) -> None:
        self.post_message(self.Resized(self))

    def set_rows(self, rows: Sequence[Any]) -> None:
        """Show ``rows``; the cursor stays on the same row (by ``key``) if it is still there."""
        current = self.current if self.cursor > 0 else None  # at the top: stay at the top
        self.rows = rows
        if self.key is not None and current is not None:
            wanted = self.key(current)
            if not (0 <= self.cursor < len(rows) and self.key(rows[self.cursor]) == wanted):
                found = next((i for i, row in enumerate(rows) if self.key(row) == wanted), None)
                if found is not None:
                    self.move_cursor_to(found, quiet=True)
        if self.cursor >= len(rows):
            self.cursor = max(0, len(rows) - 1)
        lines = len(rows) + self.HEADER_LINES
        if not self.EXACT_HEIGHT and lines > self.size.height:
            # A new virtual size means a new layout of the whole screen (tens of
            # milliseconds); growing in steps keeps that rare while rows come in.
            # (Rows that fit the window are counted exactly: no idle scrollbar.)
            lines = -(-lines // HEIGHT_STEP) * HEIGHT_STEP
        if self.virtual_size.height != lines:
            self.virtual_size = Size(0, lines)
        self.refresh()

    @property
    def current(self) -> Any:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    # --- drawing -----------------------------------------------------------------------

    def render_lines(self, crop: Region) -> list[Strip]:
        # Styles are looked up once per redraw, not once per line.
        self.base_style = self.rich_style
        self.cursor_rich_style = self.get_component_rich_style("virtual-list--cursor")
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y < self.HEADER_LINES:
            return self.header_strip(width)
        index = self.scroll_offset.y + y - self.HEADER_LINES
        if index >= len(self.rows):
            return Strip.blank(width, self.base_style)
        return self.row_strip(index, width)

    def row_strip(self, index: int, width: int) -> Strip:
        return self.to_strip(self.render_row(self.rows[index]), width, self.is_cursor_row(index))

    def header_strip(self, width: int) -> Strip:
        return Strip.blank(width, self.base_style)

    def is_cursor_row(self, index: int) -> bool:
        return self.show_cursor and index == self.cursor

    def to_strip(self, text: Text, width: int, cursor: bool = False) -> Strip:
        text.end = ""
        if cursor:  # under the cells' own colours, so a red "failed" stays red
            text.stylize_before(self.cursor_rich_style)
            text.pad_right(max(0, width - text.cell_len))
        strip = Strip(list(text.render(self.app.console)), text.cell_len)
        return strip.crop_extend(0, width, self.base_style).apply_style(self.base_style)

    # --- the cursor --------------------------------------------------------------------

    def move_cursor_to(self, index: int, quiet: bool = False) -> None:
        if not self.rows:
            return
        old = self.cursor
        self.cursor = max(0, min(len(self.rows) - 1, index))
        if old != self.cursor:
            self.cursor_moved(old)
            if not quiet:
                self.post_message(self.Highlighted(self, self.current))
        if self.size.height == 0:  # not laid out yet
            return
        height = max(1, self.scrollable_content_region.height - self.HEADER_LINES)
        top = round(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False)

    def cursor_moved(self, old: int) -> None:
        self.refresh()

    def action_cursor(self, step: int) -> None:
        if self.show_cursor:
            self.move_cursor_to(self.cursor + step)
        else:
            self.scroll_relative(y=step, animate=False)

    def action_page(self, direction: int) -> None:
        height = max(1, self.scrollable_content_region.height - 1 - self.HEADER_LINES)
        if self.show_cursor:
            self.move_cursor_to(self.cursor + direction * height)
        else:
            self.scroll_relative(y=direction * height, animate=False)

    def action_jump(self, where: int) -> None:
        target = len(self.rows) - 1 if where < 0 else where
        if self.show_cursor:
            self.move_cursor_to(target)
        else:
            self.scroll_to(y=max(0, target), animate=False)

    def action_select(self) -> None:
        if self.show_cursor and self.current is not None:
            self.post_message(self.Selected(self, self.current))

    def on_click(self, event: Any) -> None:
        if self.show_cursor and event.y >= self.HEADER_LINES:
            self.move_cursor_to(round(self.scroll_y) + event.y - self.HEADER_LINES)


class RowTable(VirtualList):
    """Keyed rows of cells under a header; a row's line is redrawn when its cells change.

    Rows are given with a cell for every column; on a screen too narrow for
    all of them, the columns not marked as kept are left out.
    """

    DEFAULT_CSS = "RowTable { scrollbar-gutter: auto; height: auto; }"
    HEADER_LINES = 1
    EXACT_HEIGHT = True
    GAP = 2

    SORT_KEYS: Sequence[sorting.Key] = ()

    def __init__(self, columns: Sequence[Column], **kwargs: Any) -> None:
        super().__init__(self.line_of, key=lambda row: row[0], **kwargs)
        self.columns = columns
        self.shown_columns = list(range(len(columns)))
        self.cells_by_key: dict[str, list[Text]] = {}
        self.line_cache: dict[str, Strip] = {}
        self.sort_column: int | None = None  # None: the table's own order
        self.sort_reverse = False
        self.shown_args: tuple[Any, ...] | None = None

    # --- sorting -----------------------------------------------------------------------

    def cycle_sort(self) -> str:
        """Sort by the next shown column (after the last: the table's own order)."""
        shown = self.shown_columns
        if self.sort_column is None or self.sort_column not in shown:
            self.sort_column = shown[0] if shown else None
        else:
            at = shown.index(self.sort_column)
            self.sort_column = shown[at + 1] if at + 1 < len(shown) else None
        self.sort_reverse = False
        return self.resort()

    def reverse_sort(self) -> str:
        if self.sort_column is None:
            self.sort_column = self.shown_columns[0] if self.shown_columns else None
        else:
            self.sort_reverse = not self.sort_reverse
        return self.resort()

    def resort(self) -> str:
        """Show the rows again in the new order; says what the order is."""
        if self.shown_args is not None:
            self.show(*self.shown_args)
        self.refresh()
        if self.sort_column is None:
            return "the usual order"
        way = "descending" if self.sort_reverse else "ascending"
        return f"by {self.columns[self.sort_column][1]}, {way}"

    def sorted_rows(self, rows: Sequence[T], now: float) -> list[T]:
        if self.sort_column is None or self.sort_column >= len(self.SORT_KEYS):
            return list(rows)
        key = self.SORT_KEYS[self.sort_column]
        return sorting.ordered(rows, key, now, self.sort_reverse)

    def show(self, model: Model, now: float) -> None:
        raise NotImplementedError

    @property
    def full_width(self) -> int:
        return sum(width + self.GAP for _, _, width, _ in self.columns) + 1

    @property
    def selected_key(self) -> str | None:
        row = self.current
        return row[0] if row is not None else None

    def cell(self, row: str, column: str) -> Text:
        """The cell as last given (shown or not): for tests and tools."""
        index = next(i for i, c in enumerate(self.columns) if c[0] == column)
        return self.cells_by_key[row][index]

    def sync(self, rows: Sequence[tuple[str, list[Text]]]) -> None:
        cells = dict(rows)
        for key, new in rows:
            old = self.cells_by_key.get(key)
            if old is None or old != new:
                self.line_cache.pop(key, None)
        for key in self.cells_by_key.keys() - cells.keys():
            self.line_cache.pop(key, None)
        self.cells_by_key = cells
        self.set_rows(list(rows))

    def on_resize(self) -> None:
        wide = self.size.width >= self.full_width
        visible = [i for i, c in enumerate(self.columns) if wide or c[3]]
        if visible != self.shown_columns:
            self.shown_columns = visible
        self.line_cache.clear()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self.line_cache.clear()

    def on_focus(self) -> None:
        self.line_cache.clear()

    def on_blur(self) -> None:
        self.line_cache.clear()

    def cursor_moved(self, old: int) -> None:
        for index in (old, self.cursor):
            if 0 <= index < len(self.rows):
                self.line_cache.pop(self.rows[index][0], None)
        self.refresh()

    def join_cells(self, cells: Sequence[Text]) -> Text:
        line = Text(" ", no_wrap=True)
        for i in self.shown_columns:
            cell = cells[i].copy()
            cell.truncate(self.columns[i][2], overflow="ellipsis", pad=True)
            line.append_text(cell)
            line.append(" " * self.GAP)
        return line

    def line_of(self, row: tuple[str, list[Text]]) -> Text:
        return self.join_cells(row[1])

    def header_text(self) -> Text:
        """The header line; the sort column's label ends in ▲ (ascending) or ▼."""
        labels = []
        for i, (_, label, width, _) in enumerate(self.columns):
            if i == self.sort_column:
                mark = "▼" if self.sort_reverse else "▲"
                label = (label if len(label) < width else label[: width - 1]) + mark
            labels.append(Text(label))
        return self.join_cells(labels)

    def header_strip(self, width: int) -> Strip:
        header = self.header_text()
        header.stylize(self.get_component_rich_style("virtual-list--header"))
        return self.to_strip(header, width)

    def row_strip(self, index: int, width: int) -> Strip:
        key = self.rows[index][0]
        strip = self.line_cache.get(key)
        if strip is None or strip.cell_length != width:
            strip = super().row_strip(index, width)
            self.line_cache[key] = strip
        return strip


class WorkersTable(RowTable):
    """The workers, with as many columns as the width takes (``layout_columns``):
    at 80 cells what each holds, its temperatures, VRAM, CPU and rate; from
    about 200, also its GPUs, limit, history, host and endpoint."""

    SORT_KEYS = tuple(sorting.WORKER_BY_COLUMN[key] for key, *_ in WORKER_COLUMNS)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(WORKER_COLUMNS, **kwargs)
        self.column_layout = layout_columns(WORKER_COLUMNS, 80)

    def show(self, model: Model, now: float) -> None:
        self.shown_args = (model, now)
        rows = self.sorted_rows(sorted(model.workers.values(), key=lambda w: w.name), now)
        # One scale for every sparkline, so a slow worker looks slow beside a fast one.
        top = max((max(w.history, default=0.0) for w in rows), default=0.0)
        live = model.live
        merge = not self.column_layout.shown("limit", WORKER_COLUMNS)
        widths = {WORKER_COLUMNS[i][0]: width for i, width in self.column_layout.columns}
        self.sync(
            [
                (
                    w.name,
                    render.worker_cells(
                        w, now, SPARK_WIDTH, top, live, merge_limit=merge, widths=widths
                    ),
                )
                for w in rows
            ]
        )

    def on_resize(self) -> None:
        width = self.scrollable_content_region.width or self.size.width
        layout = layout_columns(WORKER_COLUMNS, width)
        self.line_cache.clear()
        if layout != self.column_layout:
            self.column_layout = layout
            self.shown_columns = [i for i, _ in layout.columns]
            if self.shown_args is not None:
                self.show(*self.shown_args)  # holding and state cells depend on the widths
        self.refresh()

    def join_cells(self, cells: Sequence[Text]) -> Text:
        line = Text(" ", no_wrap=True)
        gap = " " * self.column_layout.gap
        for i, width in self.column_layout.columns:
            cell = cells[i].copy()
            cell.truncate(width, overflow="ellipsis", pad=True)
            line.append_text(cell)
            line.append(gap)
        return line


class BatchesTable(RowTable):
    SORT_KEYS = sorting.BATCH_KEYS

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(BATCH_COLUMNS, **kwargs)

    def show(self, model: Model, now: float) -> None:
        self.shown_args = (model, now)
        batches = self.sorted_rows(model.batch_order(), now)
        self.sync([(b.id, render.batch_cells(b, now, BAR_WIDTH)) for b in batches])


class EventList(VirtualList):
    """The events pane: newest first, long lines wrapped under their text.

    Each event is wrapped once for the pane's width and kept, so a new event
    costs its own lines, not a rewrap of the whole ring. ``search`` marks the
    events whose text holds a term (any case) and brings the first to the
    top; ``n`` / ``N`` step through them, the current one under the cursor's
    colour. The search follows its event as newer ones push it down.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "next_match(1)", "Next match", show=False),
        Binding("N", "next_match(-1)", "Previous match", show=False),
    ]
    INDENT = 9  # "HH:MM:SS "
    TITLE = "events (newest first)"
    MATCH_STYLE = "black on yellow"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(lambda line: line.copy(), cursor=False, **kwargs)
        self.items: Sequence[Any] = ()
        self.wrapped_width = 0
        self.wrapped: dict[Any, list[Text]] = {}
        self.term = ""
        self.matches: list[tuple[int, int]] = []  # (first line, lines) of each matching event
        self.match_items: list[Any] = []
        self.current_item: Any = None
        self.current_lines = (0, 0)  # the current match's (first line, lines)

    def show(self, items: Sequence[Any]) -> None:
        self.items = items
        self.wrap_items()

    def on_resize(self) -> None:
        if self.scrollable_content_region.width != self.wrapped_width:
            self.wrap_items()

    def wrap_items(self) -> None:
        width = self.scrollable_content_region.width or 60
        if width != self.wrapped_width:
            self.wrapped_width = width
            self.wrapped = {}
        cache, self.wrapped = self.wrapped, {}
        lines: list[Text] = []
        matches: list[tuple[int, int]] = []
        match_items: list[Any] = []
        term = self.term
        for item in self.items:
            item_lines = cache.get(item)
            if item_lines is None:
                item_lines = self.wrap_one(item, width)
            self.wrapped[item] = item_lines
            if term and term in item.text.lower():
                matches.append((len(lines), len(item_lines)))
                match_items.append(item)
            lines.extend(item_lines)
        self.matches, self.match_items = matches, match_items
        if self.current_item is not None and self.current_item not in match_items:
            self.current_item = match_items[0] if match_items else None
        self.current_lines = (0, 0)
        if self.current_item is not None:
            self.current_lines = matches[match_items.index(self.current_item)]
        self.set_rows(lines)
        self.show_title()

    def wrap_one(self, item: Any, width: int) -> list[Text]:
        body = Text(item.text, style=render.LEVEL_STYLES.get(item.level, ""))
        if self.term:
            body.highlight_regex(re.compile(re.escape(self.term), re.IGNORECASE), self.MATCH_STYLE)
        out = []
        parts = body.wrap(self.app.console, max(10, width - self.INDENT), overflow="fold")
        for i, part in enumerate(parts):
            line = Text(no_wrap=True)
            line.append(render.clock(item.ts) + " " if i == 0 else " " * self.INDENT, "dim")
            line.append_text(part)
            out.append(line)
        return out

    # --- search ------------------------------------------------------------------------

    def search(self, term: str) -> int:
        """Mark the events holding ``term`` (any case; "" ends the search); how many do."""
        self.term = term.strip().lower()
        self.wrapped = {}  # the highlights are part of the wrapped lines
        self.current_item = None
        self.wrap_items()
        if self.match_items:
            self.current_item = self.match_items[0]
            self.bring_current()
        return len(self.match_items)

    def action_next_match(self, step: int) -> None:
        if not self.match_items:
            if self.term:
                self.app.notify(f"no event holds {self.term!r}", severity="warning")
            return
        items = self.match_items
        at = items.index(self.current_item) if self.current_item in items else -1
        self.current_item = self.match_items[(at + step) % len(self.match_items)]
        self.bring_current()

    def bring_current(self) -> None:
        self.current_lines = self.matches[self.match_items.index(self.current_item)]
        self.scroll_to(y=self.current_lines[0], animate=False)
        self.show_title()
        self.refresh()

    def is_cursor_row(self, index: int) -> bool:
        first, count = self.current_lines
        return first <= index < first + count

    def show_title(self) -> None:
        if not self.term:
            self.border_title = self.TITLE
            return
        found = len(self.match_items)
        # The count first: on a narrow pane the title's end is cut.
        if not found:
            self.border_title = f"events: no match · {self.term!r}"
            return
        at = self.match_items.index(self.current_item) + 1 if self.current_item else 0
        self.border_title = f"events {at} of {found} · {self.term!r} · n/N"


class StatusBar(Widget):
    """One line: which rig, the link (live, or disconnected since when), its tok/s, counts.

    It draws its own line (no ``Static.update``, which asks for a new layout
    of the whole screen every time the text changes).
    """

    DEFAULT_CSS = "StatusBar { height: 1; }"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text = Text()
        self.plain = ""
        self.shown: tuple[Model, str, str] | None = None

    def render(self) -> Text:
        return self.text

    def on_resize(self) -> None:
        if self.shown is not None:
            self.show(*self.shown)

    def show(self, model: Model, endpoint: str, rig: str = "") -> None:
        self.shown = (model, endpoint, rig)
        width = self.size.width
        # Narrower terminals get compact task cards, then the rig's short name.
        for compact, short in ((False, False), (True, False), (True, True)):
            out = self.line(model, endpoint, rig, compact=compact, short=short)
            if not width or out.cell_len <= width:
                break
        if out.plain != self.plain:
            self.plain = out.plain
            self.text = out
            self.refresh()

    @classmethod
    def line(
        cls, model: Model, endpoint: str, rig: str, *, compact: bool, short: bool = False
    ) -> Text:
        """The header; ``compact`` shortens the task cards, ``short`` the rig's name."""
        link = model.link
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append(" llmo ", "bold reverse")
        out.append(" ")
        if rig:
            out.append(short_rig(rig) if short else rig, "bold")
            out.append("  ")
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
        if model.snapshot_at:
            cls.show_figures(out, model, compact)
        return out

    @staticmethod
    def show_figures(out: Text, model: Model, compact: bool = False) -> None:
        """The task cards, tok/s and workers up; while the link is down, the last
        known task counts under a stale mark and no claim about rates or liveness."""
        workers = list(model.workers.values())
        running = sum(1 for b in model.batches.values() if not b.finished)
        gap = "  " if compact else "   "
        cards = render.rig_counts(model.rig_counts(), compact=compact)
        if model.live:
            out.append(gap)
            out.append_text(cards)
            out.append(
                f"{gap}{'' if compact else 'rig '}{model.rig_tok_s():.1f} tok/s", "bold cyan"
            )
            up = sum(1 for w in workers if w.shown_state not in ("down", "given up"))
            out.append(
                f"{gap}workers {up}/{len(workers)} up", "" if up == len(workers) else "yellow"
            )
            out.append(f"{gap}batches {running} running")
            return
        out.append(f"{gap}stale: ", "bold yellow")
        cards.stylize("dim")
        out.append_text(cards)
        out.append(f"{gap}workers {len(workers)} · batches {running} running", "dim")


def short_rig(rig: str) -> str:
    """``rig attic at tcp://h:5555`` as ``rig attic``; ``broker tcp://h:5555`` as ``h:5555``."""
    name, sep, _ = rig.partition(" at ")
    if sep:
        return name
    return rig.removeprefix("broker ").removeprefix("tcp://")
