"""The monitor driven by Textual's pilot, against a real broker and a scripted brain."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
from textual.pilot import Pilot
from textual.widgets import Log

from llmo.broker.service import Broker
from llmo.proto.endpoints import Endpoints
from llmo.proto.messages import BatchCancel, ModelLoad, ModelUnload, WorkerDrain
from llmo.tui.app import MonitorApp
from llmo.tui.feed import Feed
from llmo.tui.render import DASH
from llmo.tui.screens import ConfirmScreen, LogScreen, PromptScreen
from llmo.tui.widgets import BatchesTable, EventList, StatusBar, VirtualList, WorkersTable
from tests.test_tui_support import (
    FakeRig,
    batch_view,
    gpu_telemetry,
    no_gpu,
    task_view,
    worker_view,
)

pytestmark = pytest.mark.timeout(60)

HISTORY = "/srv/plans/hello/history/B"


def rig_state(rig: FakeRig) -> None:
    rig.set_state(
        workers=[worker_view("gpu-1"), worker_view("gpu-2", "cold")],
        batches=[
            batch_view(
                "B", "hello", {"done": 1, "running": 1, "ready": 1}, created_at=time.time() - 30
            )
        ],
        tasks=[
            task_view("B", "a", "done"),
            task_view("B", "b", "running", worker="gpu-1", attempt_id="B:b:1", attempts=1),
            task_view("B", "c", "ready"),
        ],
        rev=10,
    )


class Rig:
    """A broker and a fake rig; the broker can be dropped and brought back."""

    def __init__(self, broker_factory) -> None:
        self.broker = broker_factory(interval=0.2)
        self.endpoints = Endpoints(self.broker.endpoint, self.broker.pub_endpoint)
        self.fake = FakeRig(self.broker.endpoint, workers=("gpu-1", "gpu-2"))
        rig_state(self.fake)
        self.revived: tuple[Broker, threading.Thread] | None = None

    def app(self, **kw) -> MonitorApp:
        endpoints = self.endpoints

        def feed(post):
            return Feed(
                endpoints,
                post,
                flush_s=0.05,
                silence_s=1.0,
                snapshot_timeout_s=0.5,
                backoff_s=(0.2, 0.4),
                resync_min_s=0.2,
            )

        return MonitorApp(feed, endpoint=endpoints.broker, tick_s=0.2, **kw)

    def drop(self) -> None:
        self.broker.stop()

    def revive(self) -> None:
        broker = Broker(self.endpoints.broker, self.endpoints.pub, interval=0.2)
        thread = threading.Thread(target=broker.run, daemon=True)
        thread.start()
        self.revived = (broker, thread)

    def close(self) -> None:
        self.fake.close()
        if self.revived is not None:
            self.revived[0].stop()
            self.revived[1].join(timeout=5)


@pytest.fixture
def rig(broker_factory):
    made = Rig(broker_factory)
    yield made
    made.close()


def run(app: MonitorApp, script: Callable[[Pilot], Awaitable[None]]) -> None:
    async def main() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.model.live and app.feed.settled, what="a settled feed")
            await script(pilot)

    asyncio.run(main())


async def until(pilot: Pilot, check: Callable[[], object], timeout: float = 5.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


def cell(app: MonitorApp, table: type, row: str, column: str) -> str:
    return app.query_one(table).cell(row, column).plain


def status(app: MonitorApp) -> str:
    return app.query_one(StatusBar).plain


def events_text(app: MonitorApp) -> str:
    return "\n".join(line.plain for line in app.query_one(EventList).rows)


def task_ids(app: MonitorApp) -> list[str]:
    return [row.id for row in app.query_one("#tasks", VirtualList).rows]


def test_the_snapshot_fills_the_panels(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        assert "live" in status(app)
        assert len(app.query_one(WorkersTable).rows) == 2
        assert cell(app, WorkersTable, "gpu-1", "state") == "hot"
        assert cell(app, WorkersTable, "gpu-2", "state") == "cold"
        assert cell(app, BatchesTable, "B", "state") == "running"
        assert cell(app, BatchesTable, "B", "progress").endswith("1/3")
        await until(pilot, lambda: sorted(task_ids(app)) == ["a", "b", "c"], what="tasks")
        assert task_ids(app)[0] == "b"  # live first
        assert "tasks of hello B" in str(app.query_one("#tasks-pane").border_title)

    run(app, script)


def test_heartbeats_update_the_rows_and_the_sparkline(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        for rate in (1.0, 1.0, 10.0, 10.0, 23.0, 23.0):  # sampled once a second
            rig.fake.heartbeat(
                "gpu-1", state="hot", model="qwen", tok_s=rate, telemetry=gpu_telemetry(1)
            )
            rig.fake.heartbeat("gpu-2", state="cold", telemetry=no_gpu())
            await pilot.pause(0.5)
        await until(pilot, lambda: cell(app, WorkersTable, "gpu-1", "tok_s").strip() == "23.0")
        assert cell(app, WorkersTable, "gpu-1", "temp") == "61°C"
        assert cell(app, WorkersTable, "gpu-1", "vram").startswith("4.1/6G")
        spark = cell(app, WorkersTable, "gpu-1", "history").strip()
        assert len(spark) >= 2 and spark[-1] == "█" and spark[0] != "█"
        assert cell(app, WorkersTable, "gpu-2", "vram").startswith("no GPU")  # as wide as it fits
        assert "rig 23.0 tok/s" in status(app)

    run(app, script)


def test_a_worker_going_down_changes_its_row(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        rig.fake.event("", "worker_down", worker="gpu-1", detail={"reason": "silent 3.1s"})
        await until(pilot, lambda: cell(app, WorkersTable, "gpu-1", "state") == "down")
        assert cell(app, WorkersTable, "gpu-1", "tok_s") == DASH
        await until(pilot, lambda: "gpu-1 worker down: silent 3.1s" in events_text(app))
        assert "workers 1/2 up" in status(app)

    run(app, script)


def test_a_batch_finishes(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        rig.fake.event("B", "task_succeeded", "b", "done", detail={"duration_s": 12.0})
        rig.fake.event("B", "task_started", "c", "running", worker="gpu-2", attempt_id="B:c:1")
        rig.fake.event("B", "task_succeeded", "c", "done")
        await until(pilot, lambda: cell(app, BatchesTable, "B", "progress").endswith("3/3"))
        rig.fake.event("B", "batch_completed", state="complete", detail={"counts": {"done": 3}})
        await until(pilot, lambda: cell(app, BatchesTable, "B", "state") == "complete")
        assert cell(app, BatchesTable, "B", "eta") == DASH  # no time left to estimate
        assert "batch B (hello) complete (done 3)" in events_text(app)
        assert "batches 0 running" in status(app)
        assert sorted(task_ids(app)) == ["a", "b", "c"]  # still shown: it is selected

    run(app, script)


def test_the_cancel_key_asks_then_sends_the_cancel_message(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        await pilot.pause(0.3)
        assert not any(isinstance(m, BatchCancel) for m in rig.fake.requests)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        sent = rig.fake.wait_for(BatchCancel)
        assert sent.batch_id == "B" and "tui" in sent.reason
        await until(pilot, lambda: "cancel B: ok" in events_text(app), what="the brain's answer")

    run(app, script)


def test_drain_load_and_unload_keys_name_the_selected_worker(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        app.query_one(WorkersTable).focus()
        await pilot.press("down")  # gpu-2
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        drain = rig.fake.wait_for(WorkerDrain)
        assert (drain.worker, drain.drain) == ("gpu-2", True)
        await pilot.press("up", "l")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        app.screen.query_one("#answer").value = ""
        await pilot.press(*"gemma.gguf", "enter")
        load = rig.fake.wait_for(ModelLoad)
        assert (load.worker, load.model) == ("gpu-1", "gemma.gguf")
        await pilot.press("u")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        assert rig.fake.wait_for(ModelUnload).worker == "gpu-1"

    run(app, script)


def test_a_dropped_link_shows_disconnected_and_recovers(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        main = app.query_one("#main")
        assert not main.has_class("-stale")
        rig.drop()
        await until(pilot, lambda: "disconnected since" in status(app), timeout=8)
        assert main.has_class("-stale")
        assert "retry" in status(app)
        await pilot.press("c")  # refused: nothing may be queued on a dead link
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen)
        rig.fake.event("B", "task_succeeded", "b", "done")  # missed while down
        rig.revive()
        await until(pilot, lambda: "live" in status(app), timeout=10, what="the link back")
        assert not main.has_class("-stale")
        await until(pilot, lambda: app.model.tasks["B"]["b"].state == "done")
        assert "link back" in events_text(app)

    run(app, script)


def test_enter_on_a_task_shows_its_log_tail_and_attempts(rig, tmp_path):
    logs = tmp_path / "hello" / "history" / "B" / "logs"
    logs.mkdir(parents=True)
    (logs / "b.log").write_text("".join(f"line {i}\n" for i in range(5000)))
    events = [
        {
            "ts": 100.0,
            "event": "task_started",
            "task_id": "b",
            "attempt": 1,
            "attempt_id": "B:b:1",
            "worker": "gpu-1",
        },
        {
            "ts": 104.0,
            "event": "task_failed",
            "task_id": "b",
            "attempt": 1,
            "attempt_id": "B:b:1",
            "worker": "gpu-1",
            "reason": "exit",
            "exit_code": 1,
        },
        {"ts": 104.0, "event": "task_retried", "task_id": "b", "reason": "exit 1: oom"},
        {
            "ts": 110.0,
            "event": "task_started",
            "task_id": "b",
            "attempt": 2,
            "attempt_id": "B:b:2",
            "worker": "gpu-2",
        },
    ]
    (logs.parent / "batch_events.jsonl").write_text(
        "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
    )
    app = rig.app(path_map=[("/srv/plans", str(tmp_path))])

    async def script(pilot: Pilot) -> None:
        rig.fake.event("B", "task_retried", "b", "delayed", detail={"reason": "exit 1: oom"})
        rig.fake.event("B", "task_started", "b", "running", worker="gpu-2", attempt_id="B:b:2")
        await until(pilot, lambda: app.model.tasks["B"]["b"].attempts == 2)
        tasks = app.query_one("#tasks", VirtualList)
        tasks.focus()
        await until(pilot, lambda: task_ids(app)[:1] == ["b"])
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        log = app.screen.query_one(Log)
        await until(pilot, lambda: log.line_count > 0, what="the log tail")
        assert log.lines[-1] == "line 4999" and log.line_count < 5000
        info = str(app.screen.query_one("#task-info").render())
        assert "attempts 2" in info and "retried: exit 1: oom" in info
        tried = app.screen.query_one("#attempts")
        await until(pilot, lambda: "#2" in str(tried.render()), what="the attempts")
        assert "#1  gpu-1" in str(tried.render()) and "failed, retried" in str(tried.render())
        await pilot.press("c")  # the main screen's keys do nothing here
        assert isinstance(app.screen, LogScreen)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, LogScreen))

    run(app, script)


def test_the_filter_narrows_the_tasks(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        await until(pilot, lambda: len(task_ids(app)) == 3)
        await pilot.press("slash", *"state:ready")
        await until(pilot, lambda: task_ids(app) == ["c"])
        assert "1 of 3 match" in str(app.query_one("#tasks-pane").border_title)
        await pilot.press("escape")
        await until(pilot, lambda: len(task_ids(app)) == 3)

    run(app, script)


def test_help_and_quit(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        await pilot.press("question_mark")
        await until(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        await pilot.press("escape")
        await until(pilot, lambda: type(app.screen).__name__ != "HelpScreen")
        await pilot.press("q")
        await until(pilot, lambda: app.feed.stopped)

    run(app, script)


def test_selecting_a_finished_batch_fetches_its_tasks(rig):
    old = batch_view("A", "older", {"done": 2}, state="complete", created_at=time.time() - 900)
    rig.fake.set_state(
        batches=[*rig.fake.batches, old],
        tasks=[*rig.fake.tasks, task_view("A", "x", "done"), task_view("A", "y", "done")],
    )
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        assert "A" not in app.model.tasks  # a full snapshot lists running batches' tasks
        app.query_one(BatchesTable).focus()
        await pilot.press("down")  # running batches first: B, then A
        await until(pilot, lambda: sorted(task_ids(app)) == ["x", "y"], what="A's tasks")
        assert any(r.batch_id == "A" for r in rig.fake.snapshot_requests)
        await pilot.press("up")
        await until(pilot, lambda: sorted(task_ids(app)) == ["a", "b", "c"])
        assert "A" not in app.model.tasks  # a finished batch's tasks are dropped once left

    run(app, script)


def test_the_selected_worker_shows_its_endpoint(rig):
    url = "http://127.0.0.1:40111/v1"
    rig.fake.set_state(
        workers=[worker_view("gpu-1", endpoint=url), worker_view("gpu-2", "cold")],
        batches=[],
        tasks=[],
        rev=11,
    )
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        table = app.query_one(WorkersTable)
        table.focus()
        await until(pilot, lambda: app.selected_worker() == "gpu-1", what="gpu-1 selected")
        await until(pilot, lambda: url in str(table.border_subtitle), what="the endpoint")
        await pilot.press("down")  # gpu-2 reports no endpoint
        await until(pilot, lambda: app.selected_worker() == "gpu-2", what="gpu-2 selected")
        assert url not in str(table.border_subtitle)

    run(app, script)


def test_the_header_names_the_rig_it_watches(rig):
    app = rig.app(rig="rig attic at tcp://10.0.0.2:5555")

    async def script(pilot: Pilot) -> None:
        assert "rig attic at tcp://10.0.0.2:5555" in status(app)
        assert "live" in status(app)

    run(app, script)


def test_the_header_counts_the_rigs_tasks(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        line = status(app)
        assert "tasks 1 running · 1 queued · 1 done · 0 failed" in line
        assert "workers 2/2 up" in line and "tok/s" in line
        rig.fake.event("B", "task_failed", "b", "failed", detail={"error": "boom"})
        await until(pilot, lambda: "1 failed" in status(app), what="the failure counted")
        assert "tasks 0 running" in status(app)

    run(app, script)


def test_a_disconnected_header_says_stale_and_claims_no_liveness(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        rig.fake.heartbeat("gpu-1", state="hot", model="qwen", tok_s=23.0)
        await until(pilot, lambda: "rig 23.0 tok/s" in status(app), what="a rate")
        rig.drop()
        await until(pilot, lambda: "disconnected since" in status(app), timeout=8)
        line = status(app)
        assert "stale" in line
        assert "up" not in line.split("disconnected")[1]  # no "workers 2/2 up"
        assert "23.0" not in line  # no rate it cannot see
        assert "tasks 1 running" in line  # the last known counts, under the stale mark
        assert app.query_one(WorkersTable).border_title == "workers · stale"
        assert cell(app, WorkersTable, "gpu-1", "seen") != DASH
        assert cell(app, WorkersTable, "gpu-1", "tok_s") == DASH

    run(app, script)


def test_each_worker_shows_its_heartbeat_age(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        rig.fake.heartbeat("gpu-1", state="hot", model="qwen", tok_s=1.0)
        await until(pilot, lambda: cell(app, WorkersTable, "gpu-1", "seen").endswith("s"))
        assert cell(app, WorkersTable, "gpu-1", "seen") in ("0s", "1s", "2s")
        assert cell(app, WorkersTable, "gpu-2", "seen") == DASH  # never heard yet

    run(app, script)


def test_at_80_columns_the_header_keeps_every_card(rig):
    app = rig.app(rig=f"broker {rig.endpoints.broker}")

    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.model.live and app.feed.settled, what="a settled feed")
            await until(pilot, lambda: "1 run 1 queued 1 done 0 failed" in status(app))
            line = status(app)
            assert line.startswith(" llmo  127.0.0.1:") and "tok/s" in line
            assert "1 failed" not in line

    asyncio.run(main())


# --- a worker llmo up gave up on ---------------------------------------------------------


def logged(app: MonitorApp) -> str:
    """The events pane's lines in full (the pane cuts long ones at its width)."""
    return "\n".join(line.text for line in app.model.events)


class UpSupervisor:
    """``llmo up``'s supervisor on the test's broker: real child processes, its real link,
    served from a thread. ``gpu-2`` crashes until it is given up on."""

    def __init__(self, endpoint: str, tmp_path) -> None:
        import sys

        from llmo.cli.supervisor import RestartPolicy, Supervisor
        from llmo.cli.up_link import UpLink

        self.sup = Supervisor(RestartPolicy(max_restarts=0, window_s=600), say=lambda _: None)
        self.sup.add(
            "gpu-2",
            [sys.executable, "-c", "print('CUDA error: out of memory'); raise SystemExit(1)"],
            tmp_path / "gpu-2.log",
        )
        self.link = UpLink(self.sup, endpoint, keys=None, interval=0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.sup.poll()
            self.link.serve(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.link.close()
        self.sup.stop(timeout=2.0)


def test_x_restarts_a_worker_llmo_up_gave_up_on(rig, tmp_path):
    up = UpSupervisor(rig.broker.endpoint, tmp_path)
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        rig.fake.set_state(workers=[worker_view("gpu-1"), worker_view("gpu-2", "down")])
        app.feed.resync()
        shown = lambda: cell(app, WorkersTable, "gpu-2", "state")  # noqa: E731
        await until(pilot, lambda: shown() == "given up", timeout=10, what="gpu-2 given up")
        assert "gpu-2 given up by llmo up" in logged(app)
        assert "CUDA error: out of memory" in logged(app)
        app.query_one(WorkersTable).focus()
        await pilot.press("down")  # gpu-2
        assert "given up" in str(app.query_one(WorkersTable).border_subtitle)
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await pilot.pause(0.3)
        assert up.sup.children["gpu-2"].given_up, "restarted without a yes"
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(
            pilot,
            lambda: "restart gpu-2: gpu-2 restarted (pid" in logged(app),
            what="the supervisor's answer",
        )
        assert any("gpu-2 restarted" in n.message for n in app._notifications)
        # A worker that is up is not restarted: refused here, nothing sent.
        await pilot.press("up", "x")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen)
        assert any("gpu-1 is up" in n.message for n in app._notifications)

    try:
        run(app, script)
    finally:
        up.close()


def test_x_without_llmo_up_says_how_systemd_restarts_it(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        rig.fake.set_state(workers=[worker_view("gpu-1"), worker_view("gpu-2", "down")])
        app.feed.resync()
        await until(pilot, lambda: cell(app, WorkersTable, "gpu-2", "state") == "down")
        app.query_one(WorkersTable).focus()
        await pilot.press("down", "x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(
            pilot,
            lambda: "no `llmo up` supervisor is connected" in logged(app),
            what="the answer for a rig without llmo up",
        )
        assert "systemctl restart llmo-worker@NAME" in logged(app)

    run(app, script)


def test_x_is_refused_while_the_link_is_down(rig):
    app = rig.app()

    async def script(pilot: Pilot) -> None:
        app.query_one(WorkersTable).focus()
        rig.drop()
        await until(pilot, lambda: not app.model.live, timeout=8, what="the link down")
        await pilot.press("down", "x")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen)
        assert any("not live" in n.message for n in app._notifications)

    run(app, script)
