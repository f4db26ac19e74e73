"""Telemetry: the no-driver path with the real pynvml, the GPU path with a fake NVML."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from llmo.worker.telemetry import SystemTelemetry, throttle_names

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024


def test_without_a_driver_gpu_telemetry_is_absent_and_said_once(caplog):
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    with caplog.at_level(logging.INFO, logger="llmo.worker.telemetry"):
        telemetry = SystemTelemetry((0,))
        first = telemetry.read()
        second = telemetry.read()
    assert not first.gpu_available and first.gpus == ()
    assert "NVML" in first.note
    assert first.mem_total_mb > 0 and 0 < first.mem_used_mb <= first.mem_total_mb
    assert 0.0 <= second.cpu_percent <= 100.0
    assert telemetry.vram_total_mb() == 0
    warnings = [r for r in caplog.records if "NVML" in r.getMessage()]
    assert len(warnings) == 1
    telemetry.close()


def test_a_worker_without_gpus_says_so():
    telemetry = SystemTelemetry(())
    reading = telemetry.read()
    assert not reading.gpu_available
    assert reading.note == "no GPUs assigned to this worker"


class FakeNvml:
    """The few pynvml calls the worker makes, for two cards; card 1 gives no power."""

    class NVMLError(Exception):
        pass

    def __init__(self):
        self.shut = False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA GeForce GTX 1060 6GB"

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 61 + h

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=1500 * MiB, total=6144 * MiB)

    def nvmlDeviceGetPowerUsage(self, h):
        if h == 1:
            raise self.NVMLError("not supported")
        return 95_500

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 120_000

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetClockInfo(self, h, clock):
        return 1708

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return 0x4 | 0x20

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=4242, usedGpuMemory=1200 * MiB)]


def test_gpu_readings_through_nvml():
    nvml = FakeNvml()
    telemetry = SystemTelemetry((0, 1), nvml=nvml)
    reading = telemetry.read()
    assert reading.gpu_available and reading.note == ""
    first, second = reading.gpus
    assert first.index == 0 and first.name == "NVIDIA GeForce GTX 1060 6GB"
    assert first.temperature_c == 61.0 and second.temperature_c == 62.0
    assert (first.vram_used_mb, first.vram_total_mb) == (1500, 6144)
    assert first.power_w == 95.5 and first.power_limit_w == 120.0
    assert second.power_w is None  # one figure missing leaves the others
    assert first.util_percent == 87.0 and first.sm_clock_mhz == 1708
    assert first.throttle_reasons == ("sw_power_cap", "sw_thermal")
    assert first.processes[0].pid == 4242 and first.processes[0].vram_mb == 1200
    assert telemetry.vram_total_mb() == 2 * 6144
    telemetry.close()
    assert nvml.shut


def test_throttle_reason_names():
    assert throttle_names(0) == ()
    assert throttle_names(0x1 | 0x40) == ("gpu_idle", "hw_thermal")
