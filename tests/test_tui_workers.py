"""The workers panel's columns and the worker detail screen's data, without a terminal.

The model keeps, per worker, a bounded ring of telemetry samples (one a
second) and a short list of its recent attempts; the table's cells say what
it holds, its CPU, host, why it is constrained and its endpoint.
"""

from __future__ import annotations

import asyncio

import pytest
from textual.widgets import Log, Static

from llmo.proto.messages import BatchEvent, Heartbeat, SnapshotReply, Telemetry
from llmo.tui import render
from llmo.tui.app import MonitorApp
from llmo.tui.model import Model
from llmo.tui.rows import TELEMETRY_SAMPLES, WORKER_ATTEMPTS_KEPT
from llmo.tui.updates import LinkStatus
from llmo.tui.widgets import WORKER_COLUMNS, layout_columns
from llmo.tui.worker_screen import WorkerScreen
from tests.test_tui_app import until
from tests.test_tui_support import batch_view, gpu_telemetry, task_view, worker_view

pytestmark = pytest.mark.timeout(30)

NOW = 5000.0


def seeded(**worker_extra) -> Model:
    model = Model()
    model.seed(
        SnapshotReply(
            reply_to="r",
            rev=10,
            workers=(worker_view("gpu-1", **worker_extra), worker_view("gpu-2", "cold")),
            batches=(batch_view("B", "hello", {"done": 1, "running": 1}),),
            tasks=(
                task_view(
                    "B",
                    "a",
                    "done",
                    worker="gpu-1",
                    attempt_id="B:a:1",
                    started_at=NOW - 50,
                    finished_at=NOW - 20,
                    exit_code=0,
                ),
                task_view("B", "b", "running", worker="gpu-1", attempt_id="B:b:1", started_at=NOW),
            ),
        ),
        NOW,
    )
    return model


def cells_of(model: Model, name: str, now: float = NOW, **kw) -> dict[str, str]:
    cells = render.worker_cells(model.workers[name], now, **kw)
    return {key: cell.plain for (key, *_), cell in zip(WORKER_COLUMNS, cells, strict=True)}


def beat(name: str = "gpu-1", **fields) -> Heartbeat:
    fields.setdefault("state", "hot")
    return Heartbeat(src=name, role="worker", **fields)


# --- telemetry history -------------------------------------------------------------------


def test_heartbeats_become_one_sample_a_second_with_every_figure():
    model = seeded()
    tele = gpu_telemetry(1, temp=70.0, used=4000)
    tele = Telemetry(gpu_available=True, gpus=tele.gpus, cpu_percent=35.0, cpu_temperature_c=58.0)
    model.heartbeat(beat(tok_s=20.0, telemetry=tele), NOW)
    model.heartbeat(beat(tok_s=99.0, telemetry=tele), NOW + 0.3)  # within the second: not sampled
    model.heartbeat(beat(tok_s=22.0, telemetry=None), NOW + 1.0)
    samples = list(model.workers["gpu-1"].samples)
    assert [s.tok_s for s in samples] == [20.0, 22.0]
    first = samples[0]
    assert (first.gpu_temp_c, first.vram_used_mb, first.power_w) == (70.0, 4000, 96.0)
    assert (first.cpu_percent, first.cpu_temp_c) == (35.0, 58.0)
    assert samples[1].gpu_temp_c is None and samples[1].cpu_percent is None  # no telemetry


def test_the_history_is_a_bounded_ring_and_silence_leaves_gaps():
    model = seeded()
    for i in range(TELEMETRY_SAMPLES + 50):
        model.heartbeat(beat(tok_s=float(i), telemetry=gpu_telemetry(1)), NOW + i)
    row = model.workers["gpu-1"]
    assert len(row.samples) == TELEMETRY_SAMPLES
    assert row.samples[-1].tok_s == TELEMETRY_SAMPLES + 49.0
    assert row.samples[0].tok_s == 50.0
    last = NOW + TELEMETRY_SAMPLES + 49
    model.tick(last + 10)  # silent for 10 s: a gap, not a repeat of the last figures
    assert row.samples[-1].ts == last + 10 and row.samples[-1].gpu_temp_c is None
    assert row.samples[-1].tok_s is None


def test_history_sparkline_squeezes_the_ring_into_its_width_and_shows_gaps():
    values = [10.0, 10.0, 20.0, 20.0, None, None, 30.0, 30.0]
    line = render.history_spark(values, 4, lo=0.0, hi=30.0)
    assert len(line) == 4
    assert line[2] == " "  # a silent stretch is blank, not zero
    assert line[0] < line[1] < line[3]
    assert render.history_spark([], 6, lo=0, hi=1) == " " * 6
    assert len(render.history_spark([1.0, 2.0], 10, lo=0, hi=2)) == 10  # short: right-aligned


# --- recent attempts ---------------------------------------------------------------------


def test_recent_attempts_come_from_the_snapshot_and_follow_events():
    model = seeded()
    row = model.workers["gpu-1"]
    assert [(a.task_id, a.state) for a in row.attempts] == [("a", "done"), ("b", "running")]
    model.apply_event(
        BatchEvent(
            rev=11,
            batch_id="B",
            event="task_failed",
            task_id="b",
            state="failed",
            worker="gpu-1",
            attempt_id="B:b:1",
            detail={"exit_code": 3, "error": "exit 3: boom", "duration_s": 12.5},
            ts=NOW + 5,
        ),
        NOW + 5,
    )
    model.apply_event(
        BatchEvent(
            rev=12,
            batch_id="B",
            event="task_started",
            task_id="b",
            state="running",
            worker="gpu-1",
            attempt_id="B:b:2",
            ts=NOW + 6,
        ),
        NOW + 6,
    )
    got = [(a.task_id, a.attempt_id, a.state, a.exit_code) for a in row.attempts]
    assert got == [
        ("a", "B:a:1", "done", 0),
        ("b", "B:b:1", "failed", 3),
        ("b", "B:b:2", "running", None),
    ]
    failed = row.attempts[1]
    assert failed.why == "exit 3: boom" and failed.duration(NOW + 99) == 12.5
    assert row.attempts[-1].duration(NOW + 10) == 4.0


def test_recent_attempts_are_bounded():
    model = seeded()
    for i in range(WORKER_ATTEMPTS_KEPT + 5):
        model.apply_event(
            BatchEvent(
                rev=11 + i,
                batch_id="B",
                event="task_started",
                task_id=f"t{i}",
                state="running",
                worker="gpu-2",
                attempt_id=f"B:t{i}:1",
            ),
            NOW,
        )
    attempts = model.workers["gpu-2"].attempts
    assert len(attempts) == WORKER_ATTEMPTS_KEPT
    assert attempts[-1].task_id == f"t{WORKER_ATTEMPTS_KEPT + 4}"


# --- the table's cells ---------------------------------------------------------------------


def test_holding_shows_the_task_ids_of_its_active_attempts():
    model = seeded(attempts=("B:b:1",))
    assert cells_of(model, "gpu-1")["holding"] == "b"  # the snapshot's attempts
    active = tuple(f"b-7f3a@17.2:summarise_{n:03d}:1" for n in (40, 41, 42))
    model.heartbeat(beat(active=active), NOW)
    assert cells_of(model, "gpu-1", widths={"holding": 30})["holding"] == "summarise_040 041 042"
    assert cells_of(model, "gpu-1", widths={"holding": 12})["holding"] == "…040 041 042"
    assert cells_of(model, "gpu-2")["holding"] == render.DASH


def test_holding_keeps_the_distinguishing_end_when_narrow():
    ids = [f"summarise_{n:03d}" for n in (40, 41, 42)]
    assert render.holding_text(ids, 40) == "summarise_040 041 042"
    assert render.holding_text(ids, 12) == "…040 041 042"
    assert render.holding_text(ids, 9) == "…040 +2"
    assert render.holding_text(["a-very-long-task-name_17"], 10) == "…k-name_17"


def test_cpu_host_limit_and_endpoint_cells():
    model = seeded(host="rig-a", pid=4242, endpoint="http://rig-a:8081/v1")
    tele = Telemetry(gpu_available=False, note="no NVML", cpu_percent=42.0, cpu_temperature_c=61.0)
    why = "constrained: GPU 1 at 86 °C (limit 83 °C); GPU 1 drawing 130 W (limit 120 W)"
    model.heartbeat(beat(state="constrained", constraint=why, telemetry=tele), NOW)
    cells = cells_of(model, "gpu-1")
    assert cells["cpu"].split() == ["42%", "61°C"]
    assert cells["host"] == "rig-a"
    assert cells["endpoint"] == "http://rig-a:8081/v1"
    assert cells["limit"] == "thermal+power · " + why.removeprefix("constrained: ")
    assert render.constraint_kind(why) == "thermal+power"
    one = "constrained: GPU 1 at 86 °C (limit 83 °C)"
    assert render.limit_text(one, 30) == "GPU 1 at 86 °C (limit 83 °C)"  # it fits: the readings
    assert render.limit_text(one, 12) == "thermal · GPU 1 at 86 °C (limit 83 °C)"
    assert render.limit_text("critical: CPU at 96 °C (limit 90 °C)", 40).startswith("critical:")
    assert render.constraint_kind("critical: CPU at 96 °C (limit 90 °C)") == "CRIT cpu heat"
    assert render.constraint_kind("constrained: GPU 0 VRAM at 97 % (limit 95 %)") == "VRAM"
    model.heartbeat(beat(name="gpu-2", state="cold", telemetry=Telemetry()), NOW)
    two = cells_of(model, "gpu-2")
    assert two["cpu"].split() == ["0%", render.DASH]
    assert (two["host"], two["limit"], two["endpoint"]) == (render.DASH,) * 3


def test_model_keeps_host_and_pid_from_the_snapshot():
    model = seeded(host="rig-a", pid=4242)
    row = model.workers["gpu-1"]
    assert (row.host, row.pid) == ("rig-a", 4242)


# --- the columns at 80 and 200 cells --------------------------------------------------------


def test_columns_fit_80_and_use_200():
    narrow = layout_columns(WORKER_COLUMNS, 78)
    keys = [WORKER_COLUMNS[i][0] for i, _ in narrow.columns]
    assert {"name", "state", "seen", "holding", "model", "temp", "cpu", "tok_s"} <= set(keys)
    assert "limit" not in keys  # merged into the state cell instead
    assert narrow.width <= 78
    wide = layout_columns(WORKER_COLUMNS, 198)
    wide_keys = [WORKER_COLUMNS[i][0] for i, _ in wide.columns]
    assert {"limit", "host", "endpoint", "vram", "history", "cpu", "gpus"} <= set(wide_keys)
    assert wide.width <= 198 and wide.width >= 190  # the spare room goes to the flexible columns
    limit = dict((WORKER_COLUMNS[i][0], w) for i, w in wide.columns)["limit"]
    assert limit > 16


def test_a_narrow_state_cell_says_why_it_is_constrained():
    model = seeded()
    why = "constrained: GPU 1 at 86 °C (limit 83 °C)"
    model.heartbeat(beat(state="constrained", constraint=why), NOW)
    row = model.workers["gpu-1"]
    assert cells_of(model, "gpu-1", merge_limit=True)["state"].startswith("thermal")
    assert cells_of(model, "gpu-1")["state"].startswith("constrained")
    assert row.shown_state == "constrained"


# --- the detail screen, driven by the pilot ------------------------------------------------


def detail_model(now: float = NOW) -> Model:
    """gpu-1 with five minutes of telemetry, a finished and a running attempt."""
    model = seeded(host="rig-a", pid=4242, endpoint="http://rig-a:8081/v1", attempts=("B:b:1",))
    for i in range(300):
        tele = gpu_telemetry(1, temp=60.0 + (i % 30) / 3, used=3000 + 4 * i)
        tele = Telemetry(
            gpu_available=True,
            gpus=tele.gpus,
            cpu_percent=float(10 + i % 50),
            cpu_temperature_c=50.0 + (i % 20) / 2,
        )
        if 100 <= i < 120:
            continue  # twenty silent seconds
        model.heartbeat(
            beat(tok_s=15.0 + (i % 10), telemetry=tele, active=("B:b:1",)), now - 300 + i
        )
    model.heartbeat(
        beat(
            state="constrained",
            constraint="constrained: GPU 1 at 86 °C (limit 83 °C)",
            telemetry=gpu_telemetry(1, temp=86.0),
            active=("B:b:1",),
            tok_s=12.0,
        ),
        now,
    )
    model.set_link(LinkStatus("live", now - 400))
    model.take_changes()
    return model


def run_app(app: MonitorApp, script, size=(120, 40)) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await script(pilot)

    asyncio.run(main())


def text_of(screen, selector: str) -> str:
    return str(screen.query_one(selector, Static).content)


def worker_screen_shown(app: MonitorApp) -> bool:
    screen = app.screen
    return isinstance(screen, WorkerScreen) and bool(screen.query("#worker-facts"))


def test_enter_on_a_worker_opens_its_detail_with_facts_attempts_and_log(tmp_path):
    logs = tmp_path / "hello" / "history" / "B" / "logs"
    logs.mkdir(parents=True)
    (logs / "b.log").write_text("loading the model\ngenerated 400 tokens\n")
    app = MonitorApp(
        None,
        model=detail_model(),
        clock=lambda: NOW,
        tick_s=3600,
        path_map=[("/srv/plans", str(tmp_path))],
    )

    async def script(pilot) -> None:
        app.workers_table.focus()
        app.workers_table.move_cursor_to(0)
        await pilot.press("enter")
        await until(pilot, lambda: worker_screen_shown(app), what="the worker screen")
        screen = app.screen
        facts = text_of(screen, "#worker-facts")
        assert "gpu-1" in facts and "constrained" in facts
        assert "host rig-a" in facts and "pid 4242" in facts
        assert "endpoint http://rig-a:8081/v1" in facts
        assert "holding b" in facts
        assert "thermal · GPU 1 at 86 °C" in facts
        tele = text_of(screen, "#worker-telemetry")
        for label in ("GPU temp", "VRAM used", "GPU power", "CPU", "CPU temp", "tok/s"):
            assert label in tele
        assert "now   86°C" in tele
        attempts = text_of(screen, "#worker-attempts").splitlines()
        assert attempts[2].split()[:3] == ["b", "B", "running"]
        assert attempts[3].split()[:4] == ["a", "B", "done", "0"]
        log = screen.query_one(Log)
        await until(pilot, lambda: "generated 400 tokens" in log.lines, what="the log tail")
        assert "b.log" in str(log.border_title)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, WorkerScreen), what="back")

    run_app(app, script)


def test_the_worker_rows_show_holding_cpu_host_and_limit():
    app = MonitorApp(None, model=detail_model(), clock=lambda: NOW, tick_s=3600)

    async def script(pilot) -> None:
        table = app.workers_table
        assert table.cell("gpu-1", "holding").plain == "b"
        assert table.cell("gpu-1", "host").plain == "rig-a"
        assert table.cell("gpu-1", "limit").plain.startswith("thermal · GPU 1")
        assert table.cell("gpu-1", "cpu").plain.split() == ["20%", render.DASH]
        line = table.render_line(1).text
        assert "rig-a" in line and "thermal" in line

    run_app(app, script, size=(200, 40))


def test_the_detail_screen_says_when_its_figures_are_stale():
    model = detail_model()
    model.set_link(LinkStatus("down", NOW - 42, "nothing from tcp://rig:5555"))
    model.last_heard = NOW - 42
    app = MonitorApp(None, model=model, clock=lambda: NOW, tick_s=3600)

    async def script(pilot) -> None:
        app.open_worker("gpu-1")
        await until(pilot, lambda: worker_screen_shown(app), what="the worker screen")
        facts = text_of(app.screen, "#worker-facts")
        assert "stale: the link is down since" in facts
        tele = text_of(app.screen, "#worker-telemetry")
        assert "last   86°C" in tele and "now" not in tele  # the last figures heard

    run_app(app, script)
