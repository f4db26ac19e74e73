"""The brain's settings: limits, timeouts and model policy, with their defaults.

The shell reads them (``llmo brain --config FILE``, a JSON map of the field
names below) and hands them to the core in a ``Configure`` event, so the
journal records which settings every later decision was made under.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TIMEOUT_S = 1800.0  # a class without its own limit (brain)
# No-progress limits per task class, the original system's: seconds from an
# attempt's start to the abort. A settings file naming some classes keeps these
# for the others.
CLASS_TIMEOUTS_S: dict[str, float] = {"script": 600.0, "llm": 420.0, "cpu": 900.0, "meta": 180.0}


@dataclass(frozen=True, kw_only=True, slots=True)
class BrainConfig:
    max_attempts: int = 3  # attempts per task, counted when an attempt starts
    backoff_base_s: float = 5.0  # delay before retry n is base * 2**(n-1) ...
    backoff_max_s: float = 300.0  # ... capped here
    retry_later_s: float = 10.0  # delay before a task that exited 75 is tried again
    class_timeouts: dict[str, float] = field(default_factory=lambda: dict(CLASS_TIMEOUTS_S))
    default_timeout_s: float = DEFAULT_TIMEOUT_S
    grace_s: float = 120.0  # abort -> kill
    kill_grace_s: float = 30.0  # kill -> the attempt is written off as lost
    stall_s: float = 120.0  # an llm attempt with no new token this long is stuck
    assign_timeout_s: float = 60.0  # assigned but never started: written off
    lost_grace_s: float = 5.0  # an attempt missing from a worker's heartbeat this long is lost
    max_lost_workers: int = 3  # a task that took down this many workers is poison
    max_refusals: int = 5  # refusals by workers before a task fails
    script_vram_mb: int = 1024  # a script task's VRAM when the plan gives no estimate
    default_model: str = ""  # llm tasks that name no model
    # Every model the rig serves (paths or aliases; ``llmo up`` lists its workers'). With
    # these, or once a worker has registered, an llm task naming a model that neither
    # a worker nor this list offers fails at once instead of waiting (``brain.models``).
    models: tuple[str, ...] = ()
    brain_model: str = ""  # what a cold brain-role worker is told to load
    max_hot: int = 0  # most workers hot at once (0 = no limit)
    load_timeout_s: float = 600.0
    load_retry_s: float = 120.0  # a worker that failed to load a model is not asked again sooner
    max_load_failures: int = 3  # failed loads of one model before its waiting tasks fail
    unload_idle_s: float = 90.0  # hot, idle and no LLM demand this long: unload
    split_unload_idle_s: float = 120.0  # the same for a worker spanning several GPUs
    default_hot: tuple[str, ...] = ()  # models kept hot when the rig is idle
    default_idle_s: float = 90.0  # no batches this long: return to the default
    summary_interval_s: float = 1.0  # RUN_SUMMARY refresh, at most this often (+n/1000 s)
    history_dir: str = "history"
    # Folders (besides a run's plan and batch folders) that plan files and foreach
    # sources may lie in; empty: a plan's own folder is its only root.
    plan_roots: tuple[str, ...] = ()
    keep_finished: int = 50  # finished batches kept in memory (and snapshots) at least ...
    forget_after_s: float = 3600.0  # ... and any finished longer ago than this is dropped

    def timeout_for(self, task_class: str, task_timeout: float | None) -> float:
        if task_timeout:
            return float(task_timeout)
        return float(self.class_timeouts.get(task_class, self.default_timeout_s))

    def backoff(self, failures: int) -> float:
        """Delay before the next attempt after ``failures`` failed ones."""
        return min(self.backoff_max_s, self.backoff_base_s * (1 << max(0, failures - 1)))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["default_hot"] = list(self.default_hot)
        out["models"] = list(self.models)
        out["plan_roots"] = list(self.plan_roots)
        return out

    @classmethod
    def from_settings(cls, data: dict[str, Any]) -> BrainConfig:
        """Build from an operator's settings file: as ``from_dict``, but a
        ``class_timeouts`` naming some classes keeps the defaults of the others.
        (``from_dict`` reads a journaled ``Configure`` exactly as it was.)"""
        values = dict(data)
        given = values.get("class_timeouts")
        if isinstance(given, dict):
            values["class_timeouts"] = {**CLASS_TIMEOUTS_S, **given}
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrainConfig:
        """Build from a JSON map; unknown keys raise ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown brain settings: {', '.join(unknown)}")
        values = dict(data)
        if "default_hot" in values:
            values["default_hot"] = tuple(values["default_hot"])
        if "models" in values:
            values["models"] = tuple(str(m) for m in values["models"])
        if "plan_roots" in values:
            values["plan_roots"] = tuple(str(r) for r in values["plan_roots"])
        if "class_timeouts" in values:
            values["class_timeouts"] = {k: float(v) for k, v in values["class_timeouts"].items()}
        return cls(**values)
