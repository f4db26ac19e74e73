"""The monitor's run controls (retry, resume, re-run, cancel all, start a plan) and
the command palette, driven by Textual's pilot against a real broker and a scripted brain."""

from __future__ import annotations

import os

import pytest
from textual.command import CommandPalette
from textual.pilot import Pilot

from llmo.proto.messages import BatchCancel, PlanRejected, PlanSubmit, TaskRetry
from llmo.tui.app import MonitorApp
from llmo.tui.controls import parse_start
from llmo.tui.screens import ConfirmScreen, HelpScreen, PromptScreen
from llmo.tui.widgets import VirtualList
from tests.test_tui_app import Rig, run, until
from tests.test_tui_support import batch_view, task_view, worker_view

pytestmark = pytest.mark.timeout(60)

CONFIG = {"TARGET_COUNT": 3, "RUN_MODE": "fresh", "BATCH_ID": "F", "TAG": "[/x]"}


@pytest.fixture
def rig(broker_factory):
    made = Rig(broker_factory)
    made.fake.set_state(
        workers=[worker_view("gpu-1")],
        batches=[
            batch_view(
                "F",
                "hello",
                {"done": 1, "failed": 1, "skipped": 1},
                state="failed",
                config=CONFIG,
                finished_at=2000.0,
            ),
            batch_view("B", "other", {"running": 1}, plan_path="/srv/plans/other"),
            batch_view("B2", "third", {"ready": 1}, plan_path="/srv/plans/third"),
        ],
        tasks=[
            task_view("F", "a", "done"),
            task_view("F", "b", "failed", error="exit 2"),
            task_view("F", "c", "skipped"),
            task_view("B", "x", "running", worker="gpu-1", attempt_id="B:x:1"),
            task_view("B2", "y", "ready"),
        ],
        rev=5,
    )
    yield made
    made.close()


def events_text(app: MonitorApp) -> str:
    """The events pane's lines in full (the pane itself cuts them to its width)."""
    return "\n".join(line.text for line in app.model.events)


async def select_batch(pilot: Pilot, app: MonitorApp, batch_id: str) -> None:
    table = app.batches_table
    table.focus()
    for _ in range(len(table.rows) + 1):
        if table.selected_key == batch_id:
            break
        await pilot.press("down")
    await until(pilot, lambda: app.model.selected_batch == batch_id, what=f"batch {batch_id}")
    await until(pilot, lambda: batch_id in app.model.tasks, what=f"the tasks of {batch_id}")


async def select_task(pilot: Pilot, app: MonitorApp, task_id: str) -> None:
    tasks = app.query_one("#tasks", VirtualList)
    await until(pilot, lambda: any(r.id == task_id for r in tasks.rows), what=task_id)
    tasks.focus()
    index = next(i for i, r in enumerate(tasks.rows) if r.id == task_id)
    key = "down" if index > tasks.cursor else "up"
    for _ in range(abs(index - tasks.cursor)):
        await pilot.press(key)
    assert tasks.current.id == task_id


async def confirm(pilot: Pilot, app: MonitorApp, key: str, answer: str) -> str:
    await pilot.press(key)
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
    question = str(app.screen.query_one("#question").render())  # as shown, markup read
    await pilot.press(answer)
    await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
    return question


def test_retry_key_asks_then_sends_task_retry_for_the_failed_task(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        await select_batch(pilot, app, "F")
        await select_task(pilot, app, "a")
        await pilot.press("R")  # a done task: refused here, nothing asked
        await pilot.pause(0.1)
        assert not isinstance(app.screen, ConfirmScreen)
        await select_task(pilot, app, "b")
        question = await confirm(pilot, app, "R", "n")
        assert "Retry task b of batch F" in question
        await pilot.pause(0.2)
        assert not any(isinstance(m, TaskRetry) for m in rig.fake.requests)
        await confirm(pilot, app, "R", "y")
        sent = rig.fake.wait_for(TaskRetry)
        assert (sent.batch_id, sent.task_id) == ("F", "b")
        await until(pilot, lambda: "retry F/b: ok" in events_text(app), what="the answer")

    run(app, script)


def test_a_refused_retry_lands_in_the_events(rig):
    rig.fake.ack = lambda msg: (False, "task b of batch F is pending, not failed")
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        await select_batch(pilot, app, "F")
        await select_task(pilot, app, "b")
        await confirm(pilot, app, "R", "y")
        await until(
            pilot,
            lambda: "retry F/b: task b of batch F is pending, not failed" in events_text(app),
            what="the refusal",
        )

    run(app, script)


def test_resume_and_rerun_submit_the_batch_plan_with_its_config(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        await select_batch(pilot, app, "F")
        question = await confirm(pilot, app, "E", "y")
        assert "Resume batch F" in question
        sent = rig.fake.wait_for(PlanSubmit)
        assert sent.plan_path == "/srv/plans/hello"
        assert sent.config == {
            "TARGET_COUNT": 3,
            "TAG": "[/x]",
            "RUN_MODE": "resume",
            "RESUME_BATCH_ID": "F",
        }
        await until(pilot, lambda: "resume F: accepted: batch N1 (2 tasks)" in events_text(app))
        rig.fake.requests.clear()
        rig.fake.plan_answer = lambda msg: PlanRejected(
            reply_to="",
            errors=("plan.md:12: task x: unknown dependency 'y'", "second [/b] problem"),
        )
        question = await confirm(pilot, app, "N", "y")
        assert "TARGET_COUNT=3, TAG=[/x]" in question and "RUN_MODE" not in question
        sent = rig.fake.wait_for(PlanSubmit)
        assert sent.plan_path == "/srv/plans/hello" and sent.config == {
            "TARGET_COUNT": 3,
            "TAG": "[/x]",
        }
        await until(
            pilot,
            lambda: (
                "re-run F: rejected: plan.md:12: task x: unknown dependency 'y'; "
                "second [/b] problem" in events_text(app)
            ),
            what="every error of the rejection",
        )

    run(app, script)


def test_resume_of_a_running_batch_is_refused_here(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        await select_batch(pilot, app, "B")
        await pilot.press("E")
        await pilot.press("N")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen)
        assert not any(isinstance(m, PlanSubmit) for m in rig.fake.requests)

    run(app, script)


def test_cancel_all_names_the_count_and_cancels_every_running_batch(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        question = await confirm(pilot, app, "C", "y")
        assert "Cancel all 2 running batch(es)" in question
        await until(
            pilot,
            lambda: (
                {m.batch_id for m in rig.fake.requests if isinstance(m, BatchCancel)} == {"B", "B2"}
            ),
            what="two cancels",
        )
        await until(pilot, lambda: "cancel B2: ok" in events_text(app))

    run(app, script)


def test_start_plan_prompts_for_a_path_and_settings(rig, tmp_path):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        await pilot.press(*"/srv/plans/hello/plan.md N=3 NAME=x", "enter")
        sent = rig.fake.wait_for(PlanSubmit)
        assert sent.plan_path == "/srv/plans/hello" and sent.config == {"N": 3, "NAME": "x"}
        await until(pilot, lambda: "start /srv/plans/hello: accepted: batch N1" in events_text(app))
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        await pilot.press(*"/srv/plans/hello oops", "enter")
        await until(pilot, lambda: "start plan: 'oops' is not a KEY=VALUE" in events_text(app))

    run(app, script)


def test_controls_are_refused_while_the_link_is_down(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        await select_batch(pilot, app, "F")
        await select_task(pilot, app, "b")
        rig.drop()
        await until(pilot, lambda: not app.model.live, timeout=8, what="the link to drop")
        for key in ("R", "E", "N", "C", "p"):
            await pilot.press(key)
            await pilot.pause(0.05)
            assert not isinstance(app.screen, ConfirmScreen | PromptScreen), key

    run(app, script)


def test_the_palette_lists_llmos_actions_and_runs_them(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), what="the palette")
        await pilot.press(*"cancel all")
        palette = app.screen

        def listed() -> str:
            options = palette.query_one("CommandList")
            return " ".join(
                str(options.get_option_at_index(i).prompt) for i in range(options.option_count)
            )

        await until(pilot, lambda: "Cancel all batches" in listed(), what="the command")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        assert "Cancel all 2 running" in str(app.screen.query_one("#question").render())
        await pilot.press("n")
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"help", "enter")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")

    run(app, script)


def test_parse_start_reads_a_path_and_settings():
    assert parse_start("/p/x/plan.md A=1 B=two C=true") == ("/p/x", {"A": 1, "B": "two", "C": True})
    assert parse_start("rel/plan", cwd="/home/op") == ("/home/op/rel/plan", {})
    assert parse_start("'/p/with space' K='a b'") == ("/p/with space", {"K": "a b"})
    assert parse_start("/p K=[1,2]") == ("/p", {"K": "[1,2]"})
    for bad, says in (
        ("", "give the plan's folder"),
        ("A=1", "looks like a setting"),
        ("/p nokey", "'nokey' is not a KEY=VALUE"),
        ("/p =3", "'=3' is not a KEY=VALUE"),
        ("/p 'unclosed", "cannot split"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_start(bad)
    assert os.path.isabs(parse_start("x")[0])


def test_the_model_follows_a_retry_of_a_failed_batch():
    from llmo.proto.messages import BatchEvent, SnapshotReply
    from llmo.tui.model import Model
    from llmo.tui.wording import describe

    model = Model()
    reply = SnapshotReply(
        reply_to="",
        rev=5,
        batches=(
            batch_view("F", "hello", {"failed": 1, "skipped": 1}, state="failed", finished_at=90.0),
        ),
        tasks=(
            task_view("F", "b", "failed", attempts=3, error="exit 2", exit_code=2),
            task_view("F", "c", "skipped"),
        ),
    )
    model.seed(reply, 100.0, batch_id="F")
    model.select_batch("F")

    def event(rev: int, name: str, task: str = "", state: str = "", **detail) -> BatchEvent:
        return BatchEvent(
            rev=rev, batch_id="F", event=name, task_id=task, state=state, detail=detail
        )

    reopened = event(6, "batch_reopened", state="running", retried="b", reason="from tui")
    assert describe(reopened, "hello") == "batch F (hello) re-opened: task b retried"
    model.apply_event(reopened, 101.0)
    model.apply_event(event(7, "task_reopened", "b", "pending", reason="from tui"), 101.0)
    model.apply_event(event(8, "task_reopened", "c", "pending", because="b"), 101.0)
    batch = model.batches["F"]
    assert batch.state == "running" and not batch.finished and batch.finished_at is None
    row = model.tasks["F"]["b"]
    assert (row.state, row.attempts, row.error, row.exit_code) == ("pending", 0, "", None)
    assert any("reopened" in line for line in row.history or ())
    assert batch.counts["failed"] == 0 and batch.counts["pending"] == 2
    assert "batch F (hello) re-opened: task b retried" in [e.text for e in model.events]
