"""What the worker measures of its machine: NVML for the GPUs, /proc for the rest.

Theory of operation
-------------------
``SystemTelemetry.read()`` returns one ``proto.messages.Telemetry`` record.
GPU figures come from NVML (the ``pynvml`` module of nvidia-ml-py), for the
worker's own GPUs only. NVML ignores ``CUDA_VISIBLE_DEVICES`` and numbers the
cards itself; the worker sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that CUDA's
numbering and NVML's agree and ``--gpus 1`` means the same card to both.

Where there is no driver (CI, these development machines) NVML fails to
initialise: the failure is logged once, ``gpu_available`` is false, ``note``
carries the reason and the CPU and memory figures are still reported. Every
NVML call is guarded on its own: a card that does not report its power gives
``None`` for that figure and all the others.

The NVML module is injectable so tests can drive the GPU path without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
from collections.abc import Callable
from typing import Any

from llmo.proto.messages import GpuReading, ProcessVram, Telemetry

log = logging.getLogger("llmo.worker.telemetry")

MB = 1024 * 1024

# NVML's clock-event (throttle) reason bits; stable across driver versions.
THROTTLE_REASONS = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal"),
    (0x40, "hw_thermal"),
    (0x80, "hw_power_brake"),
    (0x100, "display_clocks"),
)

CPU_SENSORS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "soc_thermal")


def throttle_names(mask: int) -> tuple[str, ...]:
    return tuple(name for bit, name in THROTTLE_REASONS if mask & bit)


class SystemTelemetry:
    """Readings of the worker's GPUs (by NVML index) and of the host."""

    def __init__(self, gpus: tuple[int, ...], *, nvml: Any = None, proc: str = "/proc") -> None:
        self.gpus = gpus
        self.proc = proc
        self.gpu_available = False
        self.note = ""
        self._nvml = nvml
        self._handles: list[tuple[int, Any]] = []
        self._cpu_prev: tuple[int, int] | None = None
        self._cpu_temp_files = _cpu_temperature_files()
        self._open()

    # --- NVML -------------------------------------------------------------------

    def _open(self) -> None:
        if not self.gpus:
            self.note = "no GPUs assigned to this worker"
            return
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._handles = [(i, self._nvml.nvmlDeviceGetHandleByIndex(i)) for i in self.gpus]
        except Exception as exc:  # NVMLError subclasses, ImportError, OSError
            self.note = f"no GPU telemetry: NVML unavailable ({exc})"
            log.warning("%s; reporting CPU and memory only", self.note)
            self._handles = []
            return
        self.gpu_available = True

    def close(self) -> None:
        if self.gpu_available:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self.gpu_available = False

    def vram_total_mb(self) -> int:
        total = 0
        for _, handle in self._handles:
            info = self._call(functools.partial(self._nvml.nvmlDeviceGetMemoryInfo, handle))
            if info is not None:
                total += int(info.total // MB)
        return total

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:
            return None

    def _gpu(self, index: int, handle: Any) -> GpuReading:
        nv = self._nvml
        call = self._call
        name = call(lambda: nv.nvmlDeviceGetName(handle))
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        temp = call(lambda: nv.nvmlDeviceGetTemperature(handle, 0))  # NVML_TEMPERATURE_GPU
        mem = call(lambda: nv.nvmlDeviceGetMemoryInfo(handle))
        power = call(lambda: nv.nvmlDeviceGetPowerUsage(handle))
        limit = call(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(handle))
        util = call(lambda: nv.nvmlDeviceGetUtilizationRates(handle))
        clock = call(lambda: nv.nvmlDeviceGetClockInfo(handle, 1))  # NVML_CLOCK_SM
        reasons = call(lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(handle))
        if reasons is None:
            reasons = call(lambda: nv.nvmlDeviceGetCurrentClocksThrottleReasons(handle))
        procs = call(lambda: nv.nvmlDeviceGetComputeRunningProcesses(handle)) or []
        return GpuReading(
            index=index,
            name=name or "",
            temperature_c=float(temp) if temp is not None else None,
            vram_used_mb=int(mem.used // MB) if mem is not None else None,
            vram_total_mb=int(mem.total // MB) if mem is not None else None,
            power_w=power / 1000.0 if power is not None else None,
            power_limit_w=limit / 1000.0 if limit is not None else None,
            util_percent=float(util.gpu) if util is not None else None,
            sm_clock_mhz=int(clock) if clock is not None else None,
            throttle_reasons=throttle_names(int(reasons)) if reasons is not None else (),
            processes=tuple(
                ProcessVram(pid=int(p.pid), vram_mb=int((p.usedGpuMemory or 0) // MB))
                for p in procs
            ),
        )

    # --- the host -------------------------------------------------------------------

    def _cpu_percent(self) -> float:
        try:
            with open(f"{self.proc}/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return 0.0
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        total = sum(fields[:8])
        prev, self._cpu_prev = self._cpu_prev, (idle, total)
        if prev is None or total <= prev[1]:
            return 0.0
        return round(100.0 * (1 - (idle - prev[0]) / (total - prev[1])), 1)

    def _memory(self) -> tuple[int, int]:
        values: dict[str, int] = {}
        try:
            with open(f"{self.proc}/meminfo") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in ("MemTotal", "MemAvailable"):
                        values[key] = int(rest.split()[0])
        except (OSError, ValueError):
            return 0, 0
        total = values.get("MemTotal", 0) // 1024
        return total - values.get("MemAvailable", 0) // 1024, total

    def _cpu_temperature(self) -> float | None:
        best = None
        for path in self._cpu_temp_files:
            try:
                with open(path) as f:
                    value = int(f.read().strip()) / 1000.0
            except (OSError, ValueError):
                continue
            best = value if best is None else max(best, value)
        return best

    def read(self) -> Telemetry:
        used, total = self._memory()
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
        return Telemetry(
            gpu_available=self.gpu_available,
            note=self.note,
            gpus=tuple(self._gpu(i, h) for i, h in self._handles),
            cpu_percent=self._cpu_percent(),
            load_avg=round(load, 2),
            mem_used_mb=used,
            mem_total_mb=total,
            cpu_temperature_c=self._cpu_temperature(),
        )


def _cpu_temperature_files() -> list[str]:
    """The hwmon (or thermal zone) inputs of the CPU package, where the kernel has them."""
    files = []
    for hwmon in glob.glob("/sys/class/hwmon/hwmon*"):
        try:
            with open(f"{hwmon}/name") as f:
                name = f.read().strip()
        except OSError:
            continue
        if name in CPU_SENSORS:
            files.extend(sorted(glob.glob(f"{hwmon}/temp*_input")))
    if files:
        return files
    for zone in glob.glob("/sys/class/thermal/thermal_zone*"):
        try:
            with open(f"{zone}/type") as f:
                kind = f.read().strip()
        except OSError:
            continue
        if kind in ("x86_pkg_temp", *CPU_SENSORS):
            files.append(f"{zone}/temp")
    return files
