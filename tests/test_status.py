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
