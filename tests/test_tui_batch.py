"""The batch detail's pure parts: the dependency graph by level, group progress, short ids."""

from __future__ import annotations

import collections

from llmo.brain.tasks import GOAL_KEY
from llmo.proto.messages import BatchEvent, SnapshotReply
from llmo.tui.levels import GOAL_DEP, graph_levels, group_text
from llmo.tui.model import Model
from llmo.tui.render import middle_ellipsis, task_line, task_width
from llmo.tui.rows import TaskRow
from tests.test_tui_support import batch_view, task_view


def rows(*specs: tuple[str, str, tuple[str, ...] | None, str]) -> dict[str, TaskRow]:
    """(id, state, deps, template) -> the model's task rows, in plan order."""
    return {
        task_id: TaskRow(id=task_id, state=state, deps=deps, template=template)
        for task_id, state, deps, template in specs
    }


def test_levels_follow_the_longest_dependency_chain():
    tasks = rows(
        ("fetch", "done", (), ""),
        ("index", "done", (), ""),
        ("parse", "running", ("fetch",), ""),
        ("report", "pending", ("parse", "index", "fetch"), ""),
    )
    levels = graph_levels(tasks)
    assert [[node.id for node in level] for level in levels] == [
        ["fetch", "index"],
        ["parse"],
        ["report"],
    ]
    assert levels[2][0].deps == ("parse", "index", "fetch")


def test_a_foreach_group_is_one_node_with_its_items_counted():
    tasks = rows(
        ("discover", "done", (), ""),
        ("summarise", "expanded", ("discover",), ""),
        ("summarise_a", "done", ("discover",), "summarise"),
        ("summarise_b", "failed", ("discover",), "summarise"),
        ("summarise_c", "running", ("discover",), "summarise"),
        ("summarise_d", "cancelled", ("discover",), "summarise"),
        ("summarise_e", "ready", ("discover",), "summarise"),
        ("merge", "pending", ("summarise",), ""),
    )
    levels = graph_levels(tasks)
    assert [[node.id for node in level] for level in levels] == [
        ["discover"],
        ["summarise"],
        ["merge"],
    ]
    group = levels[1][0]
    assert group.group and group.items == 5
    assert group.counts == collections.Counter(
        {"done": 1, "failed": 1, "running": 1, "cancelled": 1, "ready": 1}
    )
    assert group_text(group) == (
        "summarise[*] 1/5 done, 1 failed, 1 cancelled, 1 running, 1 waiting"
    )


def test_a_template_not_expanded_yet_and_a_cycle_do_not_break_the_levels():
    tasks = rows(
        ("summarise", "expanding", (), ""),
        ("x", "pending", ("y",), ""),
        ("y", "pending", ("x",), ""),
        ("z", "pending", ("gone",), ""),  # a dependency the monitor does not hold
    )
    levels = graph_levels(tasks)
    ids = [node.id for level in levels for node in level]
    assert sorted(ids) == ["summarise", "x", "y", "z"]
    assert levels[0][0].id == "summarise"
    assert not levels[0][0].group
    assert group_text(levels[0][0]) == "summarise expanding"


def test_items_whose_template_is_missing_are_still_grouped():
    tasks = rows(("score_1", "done", (), "score"), ("score_2", "failed", (), "score"))
    (level,) = graph_levels(tasks)
    (group,) = level
    assert group.id == "score" and group.group and group.items == 2
    assert group_text(group) == "score[*] 1/2 done, 1 failed"


def test_tasks_waiting_for_a_goal_come_after_the_whole_pipeline():
    tasks = rows(
        ("discover", "done", (), ""),
        ("validate", "expanded", ("discover",), ""),
        ("validate_a", "done", (), "validate"),
        ("discover_round_0002", "running", (), ""),
        ("report", "pending", ("#goal",), ""),
        ("publish", "pending", ("report",), ""),
    )
    levels = graph_levels(tasks)
    names = [[node.id for node in level] for level in levels]
    assert names == [
        ["discover", "discover_round_0002"],
        ["validate"],
        ["#goal"],
        ["report"],
        ["publish"],
    ]
    assert GOAL_DEP == GOAL_KEY
    assert group_text(levels[2][0]).startswith("the goal")


def test_middle_ellipsis_keeps_the_distinguishing_end():
    assert middle_ellipsis("summarise_item-00042", 15) == "summ…item-00042"
    assert middle_ellipsis("summarise_item-00042", 40) == "summarise_item-00042"
    assert middle_ellipsis("abcdef", 1) == "…"
    assert len(middle_ellipsis("summarise_item-00042", 12)) == 12


def test_task_lines_at_80_columns_keep_the_item_number():
    width = task_width(50)  # the task pane's inside at 80 columns
    line = task_line(TaskRow(id="summarise_item-00042", state="running"), 0.0, width).plain
    assert "item-00042" in line
    line = task_line(TaskRow(id="summarise_item-00043", state="running"), 0.0, width).plain
    assert "item-00043" in line


def test_the_reason_gets_the_width_of_a_wide_table():
    error = "exit 1: " + "the model returned text that is not JSON " * 4
    row = TaskRow(id="parse", state="failed", error=error)
    width = task_width(200)
    wide = task_line(row, 0.0, width, line_width=200).plain
    assert len(wide) == 200
    assert wide.endswith("…")
    assert len(wide.split("exit 1: ", 1)[1]) > 80  # more than the old 80 characters
    assert width <= 32  # the id column does not take the extra space
    short = task_line(TaskRow(id="p", state="failed", error="boom"), 0.0, width, line_width=200)
    assert short.plain.rstrip().endswith("boom")


def test_snapshot_tasks_carry_dependencies_and_events_do_not_invent_them():
    model = Model()
    model.seed(
        SnapshotReply(
            reply_to="r",
            rev=5,
            batches=(batch_view("B", "p", {"done": 1, "pending": 1}),),
            tasks=(
                task_view("B", "a", "done"),
                task_view("B", "b", "pending", deps=("a",)),
            ),
        ),
        100.0,
    )
    assert model.tasks["B"]["b"].deps == ("a",)
    assert model.tasks["B"]["a"].deps == ()
    model.apply_event(
        BatchEvent(rev=6, batch_id="B", event="task_ready", task_id="c", state="ready"), 101.0
    )
    assert model.tasks["B"]["c"].deps is None  # not known from an event
