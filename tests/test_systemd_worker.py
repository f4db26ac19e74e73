"""What ``llmo-worker@NAME`` runs: ``llmo worker --config FILE --name NAME``.

A real worker process, started as the unit starts it, must take its GPUs,
slots and VRAM budget from its ``[[workers]]`` entry, pin
``CUDA_VISIBLE_DEVICES`` to its GPUs, and reach a CurveZMQ broker with the
key pair named after it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmo.proto.messages import Register, TaskAssign, TaskDone
from llmo.proto.security import ClientKeys, ServerKeys, curve_available, generate, use_keys
from tests.worker_fixtures import FakeBrain

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not curve_available(), reason="libzmq built without CURVE"),
]

ROOT = Path(__file__).resolve().parent.parent


def write_config(path: Path, broker: str, pub: str) -> None:
    path.write_text(
        f"""
[endpoints]
broker = "{broker}"
pub = "{pub}"

[broker]
interval_s = 0.2

[security]
keys_dir = "keys"
require_curve = true

[limits]
gpu_warn_c = 70.0

[[workers]]
name = "gpu-3"
gpus = [3]
slots = 3
vram_mb = 1234

[[workers]]
name = "gpu-5"
gpus = [5]
"""
    )


def worker_command(config: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llmo.cli.main",
        "worker",
        "--config",
        str(config),
        "--name",
        name,
        "--log-level",
        "WARNING",
        *extra,
    ]


@pytest.fixture
def curve_rig(tmp_path, broker_factory, zmq_context):
    keys = tmp_path / "keys"
    generate(keys, ["brain", "gpu-3"])
    broker = broker_factory(keys=ServerKeys.load(keys), liveness=100)
    config = tmp_path / "llmo.toml"
    write_config(config, broker.endpoint, broker.pub_endpoint)
    use_keys(ClientKeys.load(keys, "brain"))
    try:
        brain = FakeBrain(broker.endpoint, zmq_context)
    finally:
        use_keys(None)
    yield config, brain
    brain.close()


def test_a_worker_takes_its_entry_and_keys_from_the_config(curve_rig, tmp_path):
    config, brain = curve_rig
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMO_")}
    env["CUDA_VISIBLE_DEVICES"] = "should-be-replaced"
    proc = subprocess.Popen(worker_command(config, "gpu-3"), env=env, cwd=ROOT)
    try:
        register = brain.expect(Register, src="gpu-3", timeout=30)
        assert register.pid == proc.pid
        assert register.gpus == (3,) and register.slots == 3 and register.vram_budget_mb == 1234
        assign = brain.send(
            TaskAssign(
                dst="gpu-3",
                batch_id="b",
                task_id="pin",
                attempt_id="b:pin:1",
                task_class="cpu",
                command="echo gpus=$CUDA_VISIBLE_DEVICES",
                batch_path=str(tmp_path),
            )
        )
        done = brain.expect(TaskDone, attempt_id=assign.attempt_id, timeout=30)
        assert "gpus=3" in done.log_tail
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_worker_without_its_key_or_entry_stops_with_the_reason(curve_rig):
    config, _ = curve_rig
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMO_")}
    # gpu-5 is in the config but has no key pair: exit 2, which systemd does not retry.
    no_key = subprocess.run(
        worker_command(config, "gpu-5"), env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert no_key.returncode == 2
    assert "no key pair for 'gpu-5'" in no_key.stderr
    unknown = subprocess.run(
        worker_command(config, "gpu-9"), env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert unknown.returncode == 2
    assert "no [[workers]] entry named 'gpu-9'" in unknown.stderr
    assert "gpu-3, gpu-5" in unknown.stderr
