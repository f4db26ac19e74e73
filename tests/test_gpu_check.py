"""The GPU check (``bench/gpu_check.sh``): everything but the CUDA build, on CPU.

The end-to-end test runs the real script with ``--cpu-only --quick``: a real
broker and ``llmo worker`` on loopback, the embedded model, requests through
the worker's OpenAI endpoint. The others drive the script's refusals and the
helper's report (telemetry lines, offload evidence, the table) directly.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmo.proto.messages import GpuReading, Heartbeat, ProcessVram, Telemetry
from tests.worker_fixtures import model_path  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def helper():
    """``bench/gpu_check.py`` as a module (``bench`` is not a package)."""
    if "gpu_check" in sys.modules:
        return sys.modules["gpu_check"]
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses resolve their annotations here
    spec.loader.exec_module(module)
    return module


def run_script(
    *args: str, tmp: Path, path: str | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    env = dict(os.environ, LLMO_PYTHON=sys.executable, TMPDIR=str(tmp))  # the workers' logs
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cpu_only_quick_prints_the_table_and_no_gpu_telemetry(model_path, tmp_path):  # noqa: F811
    done = run_script(
        "--cpu-only", "--quick", "--threads", "2", "--model", str(model_path), tmp=tmp_path
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "no GPU telemetry" in done.stdout, out
    assert "Traceback" not in out
    rows = {
        m.group(1): m.groups()[1:]
        for m in re.finditer(
            r"^(1 \(single stream\)|2)\s+(\S+)\s+(\S+)\s+(\S+)$", done.stdout, re.M
        )
    }
    assert set(rows) == {"1 (single stream)", "2"}, done.stdout
    for gpu, cpu, ratio in rows.values():
        assert gpu == "-" and ratio == "-"
        assert float(cpu) > 0
    assert not re.search(r"^(4|8|16)\s", done.stdout, re.M), "quick runs levels 1 and 2 only"
    assert re.search(r"^load to hot, s\s+-\s+\d+\.\d+", done.stdout, re.M), done.stdout


def nvml_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(nvml_present(), reason="NVML answers here: the GPU side really runs")
def test_a_gpu_worker_without_nvml_reports_no_gpu_telemetry_and_fails_the_check(
    model_path,  # noqa: F811
    tmp_path,
):
    done = subprocess.run(
        # 4 tokens a request: the figures do not matter here, the report does
        [sys.executable, "bench/gpu_check.py", "--quick", "--threads", "2", "--max-tokens", "4"],
        cwd=ROOT,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "after load: no GPU telemetry: NVML unavailable" in done.stdout
    assert "FAILED: GPU 0: cannot confirm offload: no GPU telemetry" in done.stderr
    rows = re.findall(r"^(1 \(single stream\)|2)\s+(\d+\.\d)\s+(\d+\.\d)\s", done.stdout, re.M)
    assert [label for label, _, _ in rows] == ["1 (single stream)", "2"], done.stdout


def test_without_a_working_nvidia_smi_it_says_what_is_missing(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate "
        'with the NVIDIA driver."\nexit 9\n'
    )
    fake.chmod(0o755)
    done = run_script(
        "--skip-build", tmp=tmp_path, path=f"{tmp_path}:{os.environ['PATH']}", timeout=60
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "nvidia-smi failed" in done.stderr
    assert "couldn't communicate with the NVIDIA driver" in done.stderr
    assert "--cpu-only" in done.stderr


def test_an_unknown_flag_is_named(tmp_path):
    done = run_script("--gpu-layers", "3", tmp=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "unknown option --gpu-layers" in done.stderr


def test_nvml_absence_is_reported_as_no_gpu_telemetry():
    check = helper()
    absent = Telemetry(
        gpu_available=False,
        note="no GPU telemetry: NVML unavailable (NVML Shared Library Not Found)",
    )
    assert check.telemetry_lines(absent) == [
        "no GPU telemetry: NVML unavailable (NVML Shared Library Not Found)"
    ]
    none = Telemetry(gpu_available=False, note="no GPUs assigned to this worker")
    assert check.telemetry_lines(none) == ["no GPU telemetry: no GPUs assigned to this worker"]
    assert check.telemetry_lines(None) == ["no GPU telemetry: the worker sent none"]


def test_gpu_readings_and_offload_evidence():
    check = helper()
    reading = GpuReading(
        index=0,
        name="NVIDIA H200",
        temperature_c=41.0,
        vram_used_mb=1890,
        vram_total_mb=143771,
        power_w=120.5,
        power_limit_w=700.0,
        util_percent=35.0,
        processes=(ProcessVram(pid=4242, vram_mb=812),),
    )
    telemetry = Telemetry(gpu_available=True, gpus=(reading,))
    (line,) = check.telemetry_lines(telemetry)
    assert line == "GPU 0 NVIDIA H200: 41 C, VRAM 1890/143771 MB, power 120.5/700 W, util 35%"
    after = Heartbeat(src="gpu", telemetry=telemetry)
    assert check.offload_evidence(after, None, pid=4242, model_mb=240) == (
        True,
        "the worker (pid 4242) holds 812 MB on GPU 0",
    )
    # Seen from another PID namespace: the card's VRAM grew by more than the model.
    idle = Telemetry(gpu_available=True, gpus=(GpuReading(index=0, vram_used_mb=500),))
    before = Heartbeat(src="gpu", telemetry=idle)
    ok, why = check.offload_evidence(after, before, pid=1, model_mb=240)
    assert ok and "VRAM used on GPU 0 grew by 1390 MB" in why
    ok, why = check.offload_evidence(before, before, pid=1, model_mb=240)
    assert not ok and "not offloaded" in why
    ok, why = check.offload_evidence(Heartbeat(src="gpu"), None, pid=1, model_mb=240)
    assert not ok and "no GPU telemetry" in why


def test_the_table_lines_up_both_sides():
    check = helper()
    table = check.table(
        [1, 2, 4],
        {"gpu": {1: 400.0, 2: 700.0, 4: 1200.0}, "cpu": {1: 50.0, 2: 80.0, 4: 100.0}},
        {"gpu": 2.5, "cpu": 1.25},
    )
    lines = table.splitlines()
    assert lines[0].split() == ["requests", "at", "once", "GPU", "tok/s", "CPU", "tok/s", "GPU/CPU"]
    assert lines[1].split() == ["1", "(single", "stream)", "400.0", "50.0", "8.00"]
    assert lines[3].split() == ["4", "1200.0", "100.0", "12.00"]
    assert lines[4].split() == ["load", "to", "hot,", "s", "2.50", "1.25"]
    cpu_only = check.table([1], {"cpu": {1: 50.0}}, {"cpu": 1.0}).splitlines()
    assert cpu_only[1].split() == ["1", "(single", "stream)", "-", "50.0", "-"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_the_script_is_shellcheck_clean():
    done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def fake_tools(tmp_path: Path) -> dict[str, str]:
    """A card of compute capability 9.0, an nvcc, a compiler, and a Python whose pip
    records how it was called and fails the way a build does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "nvidia-smi": (
            'case "$*" in *compute_cap*) echo "9.0";; *) echo "NVIDIA H200, 143771 MiB";; esac'
        ),
        "nvcc": 'echo "Build cuda_12.8.r12.8/compiler.35404655_0"',
        "c++": "exit 0",
        "python": (
            'if [ "$1 $2" = "-m pip" ]; then\n'
            '  echo "CMAKE_ARGS=$CMAKE_ARGS" > "$PIP_CALL"\n'
            '  echo "CMAKE_BUILD_PARALLEL_LEVEL=$CMAKE_BUILD_PARALLEL_LEVEL" >> "$PIP_CALL"\n'
            '  echo "argv=$*" >> "$PIP_CALL"\n'
            '  echo "compiling ggml-cuda..."; echo "nvcc fatal: Unsupported gpu architecture"\n'
            "  exit 1\n"
            "fi\n"
            f'exec {sys.executable} "$@"'
        ),
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "LLMO_PYTHON": str(bin_dir / "python"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PIP_CALL": str(tmp_path / "pip-call"),
        "CUDA_HOME": str(tmp_path / "no-cuda"),
    }


def test_the_build_targets_the_card_and_shows_the_tail_of_a_failure(tmp_path):
    from importlib.metadata import version

    env = dict(os.environ, **fake_tools(tmp_path))
    done = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "compute capability 9.0 (CUDA architecture 90)" in done.stdout
    call = (tmp_path / "pip-call").read_text()
    assert "CMAKE_ARGS=-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90\n" in call
    assert f"CMAKE_BUILD_PARALLEL_LEVEL={os.cpu_count()}\n" in call
    pinned = f"llama-cpp-python=={version('llama-cpp-python')}"
    assert "--no-binary llama-cpp-python" in call and call.rstrip().endswith(pinned)
    site = tmp_path / "cache" / "llmo" / "gpu-check"
    assert f"--target {site}/" in call, "a separate site folder, not the project's venv"
    assert "nvcc fatal: Unsupported gpu architecture" in done.stderr, "the log's tail"
    assert "the build failed" in done.stderr and ".build.log" in done.stderr
