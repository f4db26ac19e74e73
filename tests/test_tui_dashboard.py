"""The monitor's batch screen, sorting, searches and help, driven by the pilot on a
hand-seeded model (no rig: these read the model and send nothing)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from textual.containers import VerticalScroll
from textual.pilot import Pilot
from textual.widgets import Log

from llmo.proto.messages import BatchEvent, GoalInfo, SnapshotReply
from llmo.tui.app import MonitorApp
from llmo.tui.batch_screen import BatchScreen
from llmo.tui.feed import Feed
from llmo.tui.model import Model
from llmo.tui.screens import HelpScreen, LogScreen, PromptScreen
from llmo.tui.updates import LinkStatus
from llmo.tui.widgets import BatchesTable, EventList, VirtualList, WorkersTable
from tests.test_tui_app import Rig, until
from tests.test_tui_support import batch_view, task_view, worker_view

pytestmark = pytest.mark.timeout(60)

NOW = 1_800_000_000.0


def seeded(history: str = "/srv/plans/digest/history/D") -> Model:
    model = Model()
    items = [
        task_view("D", f"summarise_item-{n:05d}", state, template="summarise")
        for n, state in enumerate(["done"] * 6 + ["failed", "running", "cancelled", "ready"])
    ]
    model.seed(
        SnapshotReply(
            reply_to="r",
            rev=10,
            workers=(worker_view("gpu-1"), worker_view("gpu-2", "cold"), worker_view("cpu-1")),
            batches=(
                batch_view(
                    "D",
                    "digest",
                    {"done": 7, "failed": 1, "running": 1, "cancelled": 1, "ready": 1},
                    history_path=history,
                    created_at=NOW - 300,
                    goal=GoalInfo(state="running", target=8, tolerance=2, succeeded=6, tried=9),
                ),
                batch_view(
                    "E",
                    "older",
                    {"done": 3, "failed": 1, "cancelled": 2},
                    state="failed",
                    created_at=NOW - 9000,
                    finished_at=NOW - 8000,
                ),
            ),
            tasks=(
                task_view("D", "discover", "done"),
                task_view("D", "summarise", "expanded", deps=("discover",)),
                *items,
                task_view("D", "merge", "pending", deps=("summarise",)),
                task_view("D", "report", "pending", deps=("#goal",)),
            ),
        ),
        NOW - 10,
    )
    model.set_link(LinkStatus("live", NOW - 10))
    for i, worker in enumerate(["gpu-1", "cpu-1", "gpu-1"]):
        model.apply_event(
            BatchEvent(
                rev=11 + i, batch_id="", event="worker_drain", worker=worker, ts=NOW - 5 + i
            ),
            NOW,
        )
    model.take_changes()
    return model


def run(app: MonitorApp, script: Callable[[Pilot], Awaitable[None]], size=(140, 40)) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await script(pilot)

    asyncio.run(main())


def make_app(model: Model | None = None, **kw) -> MonitorApp:
    return MonitorApp(None, model=model or seeded(), clock=lambda: NOW, tick_s=3600, **kw)


def test_enter_on_a_batch_opens_its_graph_and_escape_goes_back():
    app = make_app()

    async def script(pilot: Pilot) -> None:
        app.query_one(BatchesTable).focus()
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, BatchScreen), what="the batch screen")
        screen = app.screen
        shown = screen.query_one("#graph", VirtualList)
        graph = [shown.render_row(row).plain for row in shown.rows]
        text = "\n".join(graph)
        assert "level 0" in text and "level 1" in text and "level 2" in text
        assert any("summarise[*] 6/10 done, 1 failed, 1 cancelled, 1 running" in g for g in graph)
        assert text.index("discover") < text.index("summarise[*]") < text.index("merge")
        assert text.index("merge") < text.index("the goal") < text.index("report")
        info = str(screen.query_one("#batch-info").render())
        assert "6 of 8 succeeded" in info and "9 tried" in info  # the goal
        assert "1 failed" in info and "1 cancelled" in info
        assert "/srv/plans/digest/history/D" in info
        assert "ESCALATION.md" not in info  # it has not failed
        assert shown.key(shown.current) == "discover"  # the cursor skips the headings
        await pilot.press("down")
        assert shown.key(shown.current) == "summarise"
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, BatchScreen))

    run(app, script)


def test_a_failed_batch_shows_its_escalation_and_counts_cancelled_apart():
    app = make_app()

    async def script(pilot: Pilot) -> None:
        batches = app.query_one(BatchesTable)
        assert batches.cell("E", "failed").plain == "1✗ 2⊘"
        assert batches.cell("D", "failed").plain == "1✗ 1⊘"
        batches.focus()
        await pilot.press("down", "enter")
        await until(pilot, lambda: isinstance(app.screen, BatchScreen))
        info = str(app.screen.query_one("#batch-info").render())
        assert "ESCALATION.md" in info and "E" in info
        await pilot.press("q")
        await until(pilot, lambda: not isinstance(app.screen, BatchScreen))

    run(app, script)


def test_enter_on_a_task_line_of_the_graph_opens_its_log(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "merge.log").write_text("merging\n")
    app = make_app(seeded(str(tmp_path)))

    async def script(pilot: Pilot) -> None:
        app.query_one(BatchesTable).focus()
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, BatchScreen))
        graph = app.screen.query_one("#graph", VirtualList)
        graph.move_cursor_to(next(i for i, r in enumerate(graph.rows) if graph.key(r) == "merge"))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, LogScreen), what="the log screen")
        assert app.screen.task_row.id == "merge"
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, BatchScreen))

    run(app, script)


def test_s_cycles_the_sort_column_of_the_focused_table_and_S_reverses_it():
    app = make_app()

    async def script(pilot: Pilot) -> None:
        workers = app.query_one(WorkersTable)
        workers.focus()
        assert [r[0] for r in workers.rows] == ["cpu-1", "gpu-1", "gpu-2"]
        await pilot.press("s")  # WORKER
        assert workers.sort_column == 0
        await pilot.press("S")
        assert [r[0] for r in workers.rows] == ["gpu-2", "gpu-1", "cpu-1"]
        assert "WORKER▼" in workers.header_text().plain
        await pilot.press("s")  # the next column shown: at 80 columns, STATE
        assert workers.sort_column == 3 and "STATE▲" in workers.header_text().plain
        batches = app.query_one(BatchesTable)
        batches.focus()
        await pilot.press("s", "s")  # PLAN
        assert batches.sort_column == 1
        assert [r[0] for r in batches.rows] == ["D", "E"]  # digest, older
        await pilot.press("S")
        assert [r[0] for r in batches.rows] == ["E", "D"]
        assert "PLAN▼" in batches.header_text().plain
        tasks = app.query_one("#tasks", VirtualList)
        tasks.focus()
        first = [row.id for row in tasks.rows]
        assert first[0] == "summarise_item-00007"  # live first: the running one
        await pilot.press("s")  # TASK: plan order
        assert tasks.rows[0].id == "discover"
        assert "TASK▲" in app.query_one("#task-header").render().plain
        await pilot.press("s", "s")  # CLASS, STATE
        assert "STATE▲" in app.query_one("#task-header").render().plain
        assert tasks.rows[0].id == "summarise_item-00007"  # running first
        await pilot.press("S")
        assert "STATE▼" in app.query_one("#task-header").render().plain
        assert [row.id for row in tasks.rows][-1] == "summarise_item-00007"

    run(app, script)


def test_search_in_the_events_highlights_and_jumps():
    app = make_app()

    async def script(pilot: Pilot) -> None:
        events = app.query_one(EventList)
        events.focus()
        await pilot.press("slash")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        await pilot.press(*"GPU-1", "enter")
        await until(pilot, lambda: not isinstance(app.screen, PromptScreen))
        assert events.term == "gpu-1"
        assert len(events.matches) == 2
        assert "1 of 2" in str(events.border_title)
        first = events.current_item
        assert "gpu-1" in first.text.lower()
        highlighted = [line for line in events.rows if any(s.style for s in line.spans)]
        assert highlighted
        await pilot.press("n")
        assert "2 of 2" in str(events.border_title) and events.current_item is not first
        await pilot.press("n")
        assert events.current_item is first  # wraps round
        await pilot.press("N")
        assert "2 of 2" in str(events.border_title)
        await pilot.press("escape")
        assert events.term == "" and "of 2" not in str(events.border_title)

    run(app, script)


def test_search_in_a_task_log_jumps_between_matches(tmp_path):
    (tmp_path / "logs").mkdir()
    lines = [f"step {n}" + (" ERROR disk" if n in (20, 300) else "") for n in range(400)]
    (tmp_path / "logs" / "merge.log").write_text("\n".join(lines) + "\n")
    app = make_app(seeded(str(tmp_path)))

    async def script(pilot: Pilot) -> None:
        tasks = app.query_one("#tasks", VirtualList)
        tasks.focus()
        tasks.move_cursor_to(next(i for i, r in enumerate(tasks.rows) if r.id == "merge"))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        screen = app.screen
        log = screen.query_one(Log)
        await until(pilot, lambda: log.line_count >= 400, what="the log")
        await pilot.press("slash")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        await pilot.press(*"error", "enter")
        await until(pilot, lambda: app.screen is screen)
        assert screen.matches == [20, 300]
        assert not screen.follow  # a search stops following, so the match stays put
        await until(pilot, lambda: round(log.scroll_y) <= 20 < round(log.scroll_y) + 20)
        assert "match 1 of 2" in str(log.border_subtitle)
        await pilot.press("n")
        await until(pilot, lambda: round(log.scroll_y) <= 300 < round(log.scroll_y) + 30)
        assert "match 2 of 2" in str(log.border_subtitle)
        await pilot.press("N")
        assert "match 1 of 2" in str(log.border_subtitle)

    run(app, script)


def test_the_help_scrolls_to_its_last_key_at_80_by_24():
    app = make_app()

    async def script(pilot: Pilot) -> None:
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        scroller = app.screen.query_one(VerticalScroll)
        assert scroller.max_scroll_y > 0  # more keys than fit
        await pilot.press("end")
        await until(pilot, lambda: scroller.scroll_y == scroller.max_scroll_y)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))

    run(app, script, size=(80, 24))


def test_enter_on_a_foreach_group_shows_its_items_in_the_task_table():
    app = make_app()

    async def script(pilot: Pilot) -> None:
        app.query_one(BatchesTable).focus()
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, BatchScreen))
        graph = app.screen.query_one("#graph", VirtualList)
        graph.move_cursor_to(
            next(i for i, r in enumerate(graph.rows) if graph.key(r) == "summarise")
        )
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, BatchScreen))
        tasks = app.query_one("#tasks", VirtualList)
        await until(pilot, lambda: len(tasks.rows) == 10, what="the group's items")
        assert all(row.template == "summarise" for row in tasks.rows)
        assert app.focused is tasks

    run(app, script)


def test_the_batch_screen_asks_the_brain_for_dependencies_it_lacks(broker_factory):
    """Tasks learnt from events carry no dependencies: the screen takes a snapshot of
    the batch, and the graph is drawn by level once it arrives."""
    rig = Rig(broker_factory)
    try:
        endpoints = rig.endpoints

        def feed(post):  # no resync for silence: only the screen's request brings deps
            return Feed(endpoints, post, flush_s=0.05, silence_s=60.0, snapshot_timeout_s=0.5)

        app = MonitorApp(feed, endpoint=endpoints.broker, tick_s=0.2)

        async def script(pilot: Pilot) -> None:
            await until(pilot, lambda: app.model.live and app.feed.settled, what="a settled feed")
            rig.fake.set_state(
                batches=[*rig.fake.batches, batch_view("N", "new", {"ready": 1, "pending": 1})],
                tasks=[
                    *rig.fake.tasks,
                    task_view("N", "x", "ready"),
                    task_view("N", "y", "pending", deps=("x",)),
                ],
            )
            rig.fake.event("N", "batch_accepted", detail={"plan": "new", "tasks": 2})
            rig.fake.event("N", "task_ready", "x", "ready")
            rig.fake.event("N", "task_pending", "y", "pending")
            await until(pilot, lambda: len(app.model.tasks.get("N", {})) == 2, what="N's tasks")
            assert app.model.tasks["N"]["y"].deps is None
            batches = app.query_one(BatchesTable)
            batches.focus()
            batches.move_cursor_to(next(i for i, r in enumerate(batches.rows) if r[0] == "N"))
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, BatchScreen))
            await until(
                pilot,
                lambda: any(r.batch_id == "N" for r in rig.fake.snapshot_requests),
                what="a snapshot of batch N",
            )
            await until(pilot, lambda: app.model.tasks["N"]["y"].deps == ("x",))
            graph = app.screen.query_one("#graph", VirtualList)
            await until(pilot, lambda: graph.key(graph.rows[-1]) == "y" and len(graph.rows) == 4)
            assert [graph.key(r) for r in graph.rows] == ["level 0", "x", "level 1", "y"]

        async def main() -> None:
            async with app.run_test(size=(140, 40)) as pilot:
                await script(pilot)

        asyncio.run(main())
    finally:
        rig.close()


def test_the_task_column_follows_each_resize_of_the_terminal():
    app = make_app()

    async def script(pilot: Pilot) -> None:
        from llmo.tui import render

        await until(pilot, lambda: app._task_width == render.TASK_WIDTH_MAX, what="wide")
        await pilot.resize_terminal(80, 24)
        await until(pilot, lambda: app._task_width < render.TASK_WIDTH_MAX, what="narrow")
        await pilot.resize_terminal(200, 50)
        await until(pilot, lambda: app._task_width == render.TASK_WIDTH_MAX, what="wide again")
        row = next(r for r in app.task_list.rows if r.id == "summarise_item-00007")
        assert "summarise_item-00007" in app._task_line(row).plain

    run(app, script, size=(200, 50))
