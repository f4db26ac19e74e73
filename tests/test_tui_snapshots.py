"""Screenshots of the monitor in a fixed state (pytest-textual-snapshot).

The app runs with no feed, a model seeded by hand and a frozen clock, in UTC,
so every figure on screen is the same on every run. After a deliberate change
of the look, review the new pictures and accept them with
``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from llmo.proto.messages import BatchEvent, Heartbeat, PeerDown, SnapshotReply, TaskProgress
from llmo.tui.app import MonitorApp
from llmo.tui.model import Model
from llmo.tui.updates import LinkStatus
from tests.test_tui_support import batch_view, gpu_telemetry, no_gpu, task_view, worker_view

pytestmark = pytest.mark.timeout(60)

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def fixed_model() -> Model:
    model = Model()
    workers = [
        worker_view("brain-llm", role="brain", gpus=(0, 3), model="qwen2.5-14b-instruct-q4"),
        worker_view("gpu-1", host="rig-a", pid=4242, endpoint="http://rig-a:8081/v1"),
        worker_view("gpu-2", host="rig-a", pid=4243),
        worker_view("gpu-4", "cold"),
        worker_view("cpu-1", "cold", gpus=()),
    ]
    states = ["done"] * 40 + ["running"] * 3 + ["delayed"] + ["failed"] + ["ready"] * 15
    tasks = []
    for i, s in enumerate(states):
        task_id = f"summarise_{i:03d}"
        extra: dict[str, Any] = {"worker": "gpu-1" if s == "running" else ""}
        if s in ("done", "running"):
            extra.update(started_at=NOW - 40, attempt_id=f"b-7f3a:{task_id}:1", attempts=1)
        if s == "done":
            extra.update(finished_at=NOW - 17, exit_code=0)
        if i == 43:
            extra.update(attempts=2, error="CUDA error: out of memory")
        if i == 44:
            extra.update(attempts=3, error="exit 1: parse error in output", exit_code=1)
        tasks.append(task_view("b-7f3a", task_id, s, **extra))
    counts: dict[str, int] = {}
    for s in states:
        counts[s] = counts.get(s, 0) + 1
    batches = [
        batch_view("b-7f3a", "summarise-docs", counts, created_at=NOW - 754),
        batch_view(
            "b-11c0",
            "nightly-eval",
            {"done": 40, "failed": 2},
            state="failed",
            created_at=NOW - 9000,
            finished_at=NOW - 5400,
        ),
    ]
    model.seed(
        SnapshotReply(
            reply_to="r",
            rev=500,
            workers=tuple(workers),
            batches=tuple(batches),
            tasks=tuple(tasks),
        ),
        NOW - 120,
    )
    # gpu-4 went quiet 75 s ago (amber), cpu-1 130 s ago (red).
    model.heartbeat(
        Heartbeat(
            src="gpu-4",
            role="worker",
            state="cold",
            telemetry=gpu_telemetry(4, temp=38.0, used=300),
        ),
        NOW - 75,
    )
    model.heartbeat(
        Heartbeat(src="cpu-1", role="worker", state="cold", telemetry=no_gpu()), NOW - 130
    )
    running = tuple(f"b-7f3a:summarise_{n:03d}:1" for n in (40, 41, 42))
    for i in range(40):
        t = NOW - 40 + i
        for k, name in enumerate(("brain-llm", "gpu-1", "gpu-2")):
            rate = 12.4 if name == "brain-llm" else 18.0 + ((i * (k + 3)) % 9)
            limited = name == "gpu-1" and i >= 30  # over its VRAM limit for the last ten seconds
            model.heartbeat(
                Heartbeat(
                    src=name,
                    role="brain" if k == 0 else "worker",
                    state="constrained" if limited else "hot",
                    model="qwen2.5-7b-instruct-q4",
                    tok_s=rate,
                    telemetry=gpu_telemetry(k, temp=64.0 + 5 * k, used=3900 + 600 * k),
                    active=running if name == "gpu-1" else (),
                    constraint="constrained: GPU 1 VRAM at 73 % (limit 70 %)" if limited else "",
                ),
                t,
            )
        model.batches["b-7f3a"].samples.append((t, 40 + i // 20))
    for n in range(40, 43):
        model.progress(
            TaskProgress(
                batch_id="b-7f3a",
                task_id=f"summarise_{n:03d}",
                attempt_id=f"b-7f3a:summarise_{n:03d}:1",
                tokens=400,
                tok_s=21.5,
            ),
            NOW - 1,
        )
    events = [
        ("b-7f3a", "batch_accepted", "", "", {"plan": "summarise-docs", "tasks": 60}),
        ("", "model_hot", "", "", {"model": "qwen2.5-7b-instruct-q4"}),
        (
            "b-7f3a",
            "task_retried",
            "summarise_043",
            "delayed",
            {"reason": "exit 1: CUDA error: out of memory"},
        ),
        (
            "b-7f3a",
            "task_abandoned",
            "summarise_044",
            "failed",
            {"error": "exit 1: parse error in output"},
        ),
    ]
    for i, (batch, name, task, state, detail) in enumerate(events):
        model.apply_event(
            BatchEvent(
                rev=501 + i,
                batch_id=batch,
                event=name,
                task_id=task,
                state=state,
                worker="gpu-2" if not batch else "",
                detail=detail,
                ts=NOW - 60 + i * 10,
            ),
            NOW,
        )
    model.peer(PeerDown(peer="gpu-3", silent_s=3.2, ts=NOW - 5), NOW)
    model.set_link(LinkStatus("live", NOW - 120))
    model.take_changes()
    return model


def fixed_app(model: Model) -> MonitorApp:
    return MonitorApp(None, model=model, clock=lambda: NOW, endpoint="tcp://rig:5555", tick_s=3600)


def test_main_screen(snap_compare):
    assert snap_compare(fixed_app(fixed_model()), terminal_size=(140, 42))


def test_main_screen_on_a_small_terminal(snap_compare):
    assert snap_compare(fixed_app(fixed_model()), terminal_size=(100, 30))


def test_main_screen_at_80_by_24(snap_compare):
    assert snap_compare(fixed_app(fixed_model()), terminal_size=(80, 24))


def test_disconnected_greys_the_panels(snap_compare):
    model = fixed_model()
    model.set_link(LinkStatus("down", NOW - 42, "nothing from tcp://rig:5555", retry_at=NOW + 4))
    model.last_heard = NOW - 42
    assert snap_compare(fixed_app(model), terminal_size=(140, 42))


def test_help_screen(snap_compare):
    assert snap_compare(fixed_app(fixed_model()), press=["question_mark"], terminal_size=(140, 42))


class _Feed:
    """Stands in for the link, so that the run controls ask their question."""

    def act(self, label: str, msg: object) -> None:
        pass

    def stop(self) -> None:
        pass


async def _ask_retry(pilot) -> None:
    app = pilot.app
    app.feed = _Feed()
    tasks = app.task_list
    tasks.move_cursor_to(next(i for i, r in enumerate(tasks.rows) if r.id == "summarise_044"))
    await pilot.press("R")


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_retry_question(snap_compare, size):
    assert snap_compare(fixed_app(fixed_model()), run_before=_ask_retry, terminal_size=size)


def test_start_plan_prompt_at_80_by_24(snap_compare):
    async def ask(pilot) -> None:
        pilot.app.feed = _Feed()
        await pilot.press("p", *"/srv/plans/hello N=3")

    assert snap_compare(fixed_app(fixed_model()), run_before=ask, terminal_size=(80, 24))


def given_up_model() -> Model:
    """The fixed rig, with gpu-4 given up on by llmo up and selected."""
    from llmo.proto.messages import ChildInfo, SupervisorReport

    model = fixed_model()
    report = SupervisorReport(
        host="rig",
        pid=4242,
        max_restarts=6,
        window_s=300.0,
        children=(
            ChildInfo(name="gpu-1", state="running", pid=101),
            ChildInfo(
                name="gpu-4",
                state="given_up",
                restarts=6,
                exit_code=1,
                reason="RuntimeError: CUDA error: no CUDA-capable device is detected",
            ),
        ),
    )
    model.supervise(report, NOW - 3)
    model.take_changes()
    return model


async def _select_gpu_4(pilot) -> None:
    from llmo.tui.widgets import WorkersTable

    pilot.app.query_one(WorkersTable).focus()
    await pilot.press("down", "down", "down", "down")


def test_a_worker_given_up_on_at_80_by_24(snap_compare):
    app = fixed_app(given_up_model())
    assert snap_compare(app, run_before=_select_gpu_4, terminal_size=(80, 24))


def test_a_worker_given_up_on_at_200_by_50(snap_compare):
    app = fixed_app(given_up_model())
    assert snap_compare(app, run_before=_select_gpu_4, terminal_size=(200, 50))


def test_main_screen_at_200_by_50(snap_compare):
    assert snap_compare(fixed_app(fixed_model()), terminal_size=(200, 50))


def test_help_screen_at_80_by_24(snap_compare):
    assert snap_compare(fixed_app(fixed_model()), press=["question_mark"], terminal_size=(80, 24))


def batch_screen_app() -> MonitorApp:
    """The monitor on a goal-driven batch with a foreach group, its batch screen open."""
    from tests.test_tui_dashboard import make_app, seeded

    return make_app(seeded())


def test_batch_screen_at_80_by_24(snap_compare):
    assert snap_compare(batch_screen_app(), press=["enter"], terminal_size=(80, 24))


def test_batch_screen_at_200_by_50(snap_compare):
    assert snap_compare(batch_screen_app(), press=["enter"], terminal_size=(200, 50))
