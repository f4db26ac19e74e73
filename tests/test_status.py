"""llmo status: the table an operator reads."""

from __future__ import annotations

from llmo.cli.status_cmd import render
from llmo.proto.messages import BatchInfo, GpuGauges, SnapshotReply, WorkerInfo


def test_render_shows_state_temperature_rate_and_progress():
    reply = SnapshotReply(
        reply_to="r",
        rev=3,
        workers=(
            WorkerInfo(
                name="gpu-1",
                role="worker",
                state="hot",
                model="/m/qwen-7b.gguf",
                slots=2,
                slots_free=1,
                tok_s=22.6,
                gpu=GpuGauges(
                    available=True, temperature_c=66.0, vram_used_mb=4800, vram_total_mb=6144
                ),
            ),
            WorkerInfo(
                name="cpu-1",
                role="worker",
                state="constrained",
                model="",
                slots=2,
                slots_free=2,
                constraint="CPU 80C >= 78C",
                gpu=GpuGauges(available=False, note="no NVML"),
            ),
        ),
        batches=(
            BatchInfo(
                id="20261129_050547",
                plan="summarize",
                state="running",
                priority_name="high",
                tasks=7,
                counts={"done": 3, "running": 2, "ready": 2},
            ),
        ),
    )
    text = render(reply)
    gpu_line = next(line for line in text.splitlines() if line.startswith("gpu-1"))
    assert "hot" in gpu_line and "66C" in gpu_line and "4800/6144" in gpu_line
    assert "22.6" in gpu_line and "qwen-7b.gguf" in gpu_line and "1/2" in gpu_line
    cpu_line = next(line for line in text.splitlines() if line.startswith("cpu-1"))
    assert "no GPU" in cpu_line and "(CPU 80C >= 78C)" in cpu_line
    assert "3/7 done (ready 2, running 2)" in text


def test_render_empty_rig():
    text = render(SnapshotReply(reply_to="r", rev=0))
    assert "(no workers registered)" in text and "(no batches)" in text


def test_json_names_each_workers_endpoint():
    from llmo.brain.view import worker_view
    from llmo.cli.status_cmd import worker_json
    from llmo.proto.messages import Register
    from tests.brain_fixtures import Rig

    rig = Rig()
    url = "http://127.0.0.1:40111/v1"
    rig.msg(Register(role="worker", slots=1, pid=1, endpoint=url), src="gpu-1")
    assert worker_json(worker_view(rig.state.workers["gpu-1"]))["endpoint"] == url


def test_running_batches_come_first_then_the_newest():
    def batch(bid: str, state: str, created: float) -> BatchInfo:
        return BatchInfo(id=bid, plan="p", state=state, created_at=created, tasks=1)

    reply = SnapshotReply(
        reply_to="r",
        rev=1,
        batches=(
            batch("old_done", "complete", 1.0),
            batch("old_running", "running", 2.0),
            batch("new_failed", "failed", 3.0),
            batch("new_running", "running", 4.0),
        ),
    )
    lines = render(reply, "broker tcp://rig:5555").splitlines()
    assert lines[0] == "broker tcp://rig:5555"
    order = [line.split()[0] for line in lines if line.startswith(("old_", "new_"))]
    assert order == ["old_running", "new_running", "new_failed", "old_done"]


def test_status_names_the_rig_it_talks_to(broker_factory, tmp_path, monkeypatch):
    import subprocess
    import sys

    from tests.test_tui_support import FakeRig

    broker = broker_factory()
    rig = FakeRig(broker.endpoint, workers=("gpu-1",))
    try:
        config = tmp_path / "llmo.toml"
        config.write_text(f'[rig]\nname = "attic"\n[endpoints]\nbroker = "{broker.endpoint}"\n')
        done = subprocess.run(
            [sys.executable, "-P", "-m", "llmo.cli.main", "status", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=50,
        )
    finally:
        rig.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"rig attic at {broker.endpoint}"
