"""Resource limits: when a worker stops taking GPU work, and when it resumes.

Theory of operation
-------------------
``Limits.update(telemetry, now)`` is a pure step over the worker's readings;
time is an argument, so tests drive it with any readings and any clock.

- A *warning* is any GPU at or over ``gpu_warn_c`` (75 °C), the CPU at or
  over ``cpu_warn_c`` (78 °C), a GPU's VRAM at or over ``vram_percent``
  (95 %), or its power draw at or over ``power_w`` (140 W). A warning puts
  the worker in ``CONSTRAINED`` for a pause: it takes only ``cpu`` work
  (and model unloads) and lets what runs finish.
- A pause lasts the current back-off, which starts at ``backoff_s`` (30 s)
  and grows by ``backoff_factor`` (1.8) with every pause, up to
  ``backoff_max_s`` (300 s). When a pause ends the readings must be *clear*
  (temperatures ``resume_margin_c`` (4 °C) below their warning, VRAM and
  power under their limits); otherwise another, longer pause begins. This is
  the hysteresis: a GPU hovering at 75 °C does not flap in and out.
- After ``backoff_max_s`` of clear running the back-off starts over at
  ``backoff_s``.
- ``CRITICAL`` (any GPU at or over ``gpu_critical_c``, 90 °C) overrides the
  rest: all work on the GPU stops (the worker aborts its GPU attempts). When
  the temperature falls under the critical mark the worker is still paused
  as ``CONSTRAINED`` until the readings are clear.

A reading the driver does not give (``None``) never counts as a breach.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from llmo.proto.messages import Telemetry


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitsConfig:
    gpu_warn_c: float = 75.0
    cpu_warn_c: float = 78.0
    gpu_critical_c: float = 90.0
    vram_percent: float = 95.0
    power_w: float = 140.0
    resume_margin_c: float = 4.0
    backoff_s: float = 30.0
    backoff_factor: float = 1.8
    backoff_max_s: float = 300.0


class Level(enum.IntEnum):
    OK = 0
    CONSTRAINED = 1
    CRITICAL = 2


@dataclass(frozen=True, slots=True)
class Assessment:
    """What one set of readings says, before any memory of the past."""

    warnings: tuple[str, ...]
    critical: tuple[str, ...]
    clear: bool


def assess(config: LimitsConfig, t: Telemetry) -> Assessment:
    warnings: list[str] = []
    critical: list[str] = []
    clear = True
    cool_gpu = config.gpu_warn_c - config.resume_margin_c
    for gpu in t.gpus:
        where = f"GPU {gpu.index}"
        temp = gpu.temperature_c
        if temp is not None:
            if temp >= config.gpu_critical_c:
                mark = config.gpu_critical_c
                critical.append(f"{where} at {temp:.0f} °C (critical {mark:.0f} °C)")
            if temp >= config.gpu_warn_c:
                warnings.append(f"{where} at {temp:.0f} °C (limit {config.gpu_warn_c:.0f} °C)")
            if temp > cool_gpu:
                clear = False
        if gpu.vram_used_mb is not None and gpu.vram_total_mb:
            percent = 100.0 * gpu.vram_used_mb / gpu.vram_total_mb
            if percent >= config.vram_percent:
                warnings.append(
                    f"{where} VRAM at {percent:.0f} % (limit {config.vram_percent:.0f} %)"
                )
                clear = False
        if gpu.power_w is not None and gpu.power_w >= config.power_w:
            warnings.append(f"{where} drawing {gpu.power_w:.0f} W (limit {config.power_w:.0f} W)")
            clear = False
    cpu = t.cpu_temperature_c
    if cpu is not None:
        if cpu >= config.cpu_warn_c:
            warnings.append(f"CPU at {cpu:.0f} °C (limit {config.cpu_warn_c:.0f} °C)")
        if cpu > config.cpu_warn_c - config.resume_margin_c:
            clear = False
    return Assessment(tuple(warnings), tuple(critical), clear and not warnings)


class Limits:
    """The constrained-state machine of one worker."""

    def __init__(self, config: LimitsConfig | None = None) -> None:
        self.config = config or LimitsConfig()
        self.level = Level.OK
        self.reasons: tuple[str, ...] = ()
        self.until = 0.0  # end of the current pause
        self.backoff = self.config.backoff_s  # length of the next pause
        self._ok_since = 0.0

    def update(self, t: Telemetry, now: float) -> Level:
        c = self.config
        seen = assess(c, t)
        if seen.critical:
            if self.level is Level.OK:
                self._pause(now)
            self.level = Level.CRITICAL
            self.reasons = seen.critical
            return self.level
        if self.level is Level.OK:
            if seen.warnings:
                self.level = Level.CONSTRAINED
                self.reasons = seen.warnings
                self._pause(now)
            elif now - self._ok_since >= c.backoff_max_s:
                self.backoff = c.backoff_s
            return self.level
        # Paused (constrained, or just out of critical).
        self.level = Level.CONSTRAINED
        if seen.warnings:
            self.reasons = seen.warnings
        if now < self.until:
            return self.level
        if seen.clear:
            self.level = Level.OK
            self.reasons = ()
            self._ok_since = now
        else:
            self._pause(now)
        return self.level

    def _pause(self, now: float) -> None:
        c = self.config
        self.until = now + self.backoff
        self.backoff = min(self.backoff * c.backoff_factor, c.backoff_max_s)

    def describe(self) -> str:
        """One line for a heartbeat's ``constraint`` field ("" when OK)."""
        if self.level is Level.OK:
            return ""
        what = "critical" if self.level is Level.CRITICAL else "constrained"
        detail = "; ".join(self.reasons) or "readings not yet clear"
        return f"{what}: {detail}"
