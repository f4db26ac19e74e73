"""Screenshots of a worker's detail screen at 80x24 and 200x50 (pytest-textual-snapshot).

The main screen's fixed state (``test_tui_snapshots.fixed_model``) with five
minutes of telemetry for gpu-1, a constraint and a few attempts, a frozen
clock and UTC, so every figure is the same on every run. Review and accept a
deliberate change of the look with ``--snapshot-update``.
"""

from __future__ import annotations

import pytest

from llmo.proto.messages import BatchEvent, Heartbeat, Telemetry
from llmo.tui.app import MonitorApp
from llmo.tui.model import Model
from llmo.tui.updates import LinkStatus
from llmo.tui.worker_screen import WorkerScreen
from tests.test_tui_snapshots import NOW, fixed_app, fixed_model, utc  # noqa: F401  (autouse)
from tests.test_tui_support import gpu_telemetry

pytestmark = pytest.mark.timeout(60)


def worker_model() -> Model:
    model = fixed_model()
    row = model.workers["gpu-1"]
    row.host, row.pid, row.endpoint = "rig-a", 4242, "http://rig-a:8081/v1"
    row.samples.clear()
    row.last_sample = 0.0
    running = tuple(f"b-7f3a:summarise_{n:03d}:1" for n in (40, 41, 42))
    for i in range(300):
        if 180 <= i < 200:
            continue  # twenty silent seconds
        base = gpu_telemetry(1, temp=62.0 + (i % 40) / 4, used=3600 + 2 * i)
        tele = Telemetry(
            gpu_available=True,
            gpus=base.gpus,
            cpu_percent=float(15 + (i * 7) % 60),
            cpu_temperature_c=52.0 + (i % 24) / 2,
        )
        model.heartbeat(
            Heartbeat(
                src="gpu-1",
                role="worker",
                state="hot",
                model="qwen2.5-7b-instruct-q4",
                tok_s=16.0 + (i * 3) % 11,
                telemetry=tele,
                active=running,
            ),
            NOW - 300 + i,
        )
    model.heartbeat(
        Heartbeat(
            src="gpu-1",
            role="worker",
            state="constrained",
            model="qwen2.5-7b-instruct-q4",
            constraint="constrained: GPU 1 at 84 °C (limit 83 °C)",
            tok_s=14.0,
            telemetry=gpu_telemetry(1, temp=84.0, used=4200),
            active=running,
        ),
        NOW,
    )
    rev = 600
    for n, (event, state, detail) in enumerate(
        (
            ("task_failed", "running", {"exit_code": 1, "error": "CUDA error: out of memory"}),
            ("task_retried", "delayed", {"reason": "exit 1: CUDA error: out of memory"}),
        )
    ):
        rev += 1
        model.apply_event(
            BatchEvent(
                rev=rev,
                batch_id="b-7f3a",
                event=event,
                task_id="summarise_040",
                state=state,
                worker="gpu-1",
                attempt_id="b-7f3a:summarise_040:1" if n == 0 else "",
                detail=detail,
                ts=NOW - 20 + n,
            ),
            NOW,
        )
    model.set_link(LinkStatus("live", NOW - 400))
    model.take_changes()
    return model


def worker_app(model: Model | None = None) -> MonitorApp:
    app = fixed_app(model or worker_model())

    def open_it() -> None:
        app.open_worker("gpu-1")

    app.call_later(open_it)
    return app


async def shown(pilot) -> None:
    for _ in range(100):
        screen = pilot.app.screen
        if isinstance(screen, WorkerScreen) and screen.query("#worker-facts"):
            break
        await pilot.pause(0.02)
    await pilot.pause(0.2)  # the log tail's read (a file that is not there) lands


def test_worker_screen_at_80_by_24(snap_compare):
    assert snap_compare(worker_app(), terminal_size=(80, 24), run_before=shown)


def test_worker_screen_at_200_by_50(snap_compare):
    assert snap_compare(worker_app(), terminal_size=(200, 50), run_before=shown)


def test_worker_screen_while_disconnected(snap_compare):
    model = worker_model()
    model.set_link(LinkStatus("down", NOW - 42, "nothing from tcp://rig:5555", retry_at=NOW + 4))
    model.last_heard = NOW - 42
    assert snap_compare(worker_app(model), terminal_size=(120, 36), run_before=shown)
