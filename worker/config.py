"""A worker's configuration, and the models it may load."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from llmo.proto.messages import ModelLoad
from llmo.proto.vocab import HEARTBEAT_INTERVAL_S, model_alias, model_names
from llmo.worker.cache import DEFAULT_MAX_MB
from llmo.worker.limits import LimitsConfig
from llmo.worker.llm import LoadSpec
from llmo.worker.output import DEFAULT_CAP_MB
from llmo.worker.rules import Policy

VRAM_SHARE = 0.8  # of the card's VRAM, the budget the brain may assign against
CPU_SLOT_MB = 1024  # a GPU-less worker's budget per slot: a concurrency limit


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerConfig:
    name: str
    role: Literal["worker", "brain"] = "worker"
    gpus: tuple[int, ...] = ()
    slots: int = 1
    vram_mb: int | None = None  # the budget; None = 80 % of the VRAM, or slots x 1 GiB without
    models: tuple[str, ...] = ()  # model files it may load; the first is the default
    threads: int = 0
    n_ctx: int = 4096  # per LLM sequence
    parallel: int = 4  # LLM sequences generated at once (``worker.batching``)
    n_gpu_layers: int = -1
    tensor_split: tuple[float, ...] = ()  # shares of a split model per GPU; () = even
    extra_bufts: Literal["auto", "on", "off"] = "auto"
    heartbeat_s: float = HEARTBEAT_INTERVAL_S
    progress_s: float = 0.25  # at most this often per attempt
    sample_s: float = 0.5  # memory sampling of running attempts
    stop_deadline_s: float = 30.0  # SIGTERM: drain this long, then abort what is left
    stop_grace_s: float = 5.0  # then SIGKILL after this
    exit_when_idle_s: float | None = None
    hold_s: float = 3600.0
    confirm_s: float = 2.0
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    policy: Policy = field(default_factory=Policy)  # what shell tasks may do
    # The Landlock ABI to confine tasks with: None asks the kernel, 0 confines by
    # no_new_privs only (a lower number than the kernel's uses fewer rights).
    landlock_abi: int | None = None
    # A task's output past this many MB is dropped (the log says where it was
    # cut and how much went); 0: no cap.
    max_output_mb: float = DEFAULT_CAP_MB
    # Run shell tasks as this user (``worker.taskuser``); empty: as the worker's user.
    task_user: str = ""
    # The result cache (``worker.cache``): its folder (empty: no cache) and its bound.
    cache_dir: str = ""
    cache_mb: int = DEFAULT_MAX_MB

    def budget(self, vram_total_mb: int) -> int:
        if self.vram_mb is not None:
            return self.vram_mb
        if vram_total_mb > 0:
            return int(vram_total_mb * VRAM_SHARE)
        return self.slots * CPU_SLOT_MB

    def aliases(self) -> tuple[str, ...]:
        return tuple(model_alias(path) for path in self.models)

    def model_names(self) -> tuple[str, ...]:
        """What ``Register.models`` announces: each model by alias and by path,
        since a ``ModelLoad`` may name it either way."""
        names: list[str] = []
        for path in self.models:
            for name in model_names(path):
                if name not in names:
                    names.append(name)
        return tuple(names)

    def spec_for(self, model: str, load: ModelLoad | None = None) -> LoadSpec | str:
        """The load spec for a requested model, or why there is none.

        ``model`` is the alias of a configured model, a path, or empty for the
        default (the first configured). The spec keeps the name the request
        used, so heartbeats report the model by the name the brain knows.
        """
        if not model:
            if not self.models:
                return "no model given and none configured (--model)"
            path, name = self.models[0], model_alias(self.models[0])
        else:
            by_alias = dict(zip(self.aliases(), self.models, strict=True))
            path = by_alias.get(model, model)
            name = model
            if path == model and not os.path.isabs(path) and not os.path.exists(path):
                known = ", ".join(by_alias) or "none"
                return f"unknown model {model!r} (this worker can load: {known})"
        even = (1.0,) * len(self.gpus) if len(self.gpus) > 1 else ()
        split: tuple[float, ...] = self.tensor_split or even
        return LoadSpec(
            path=path,
            alias=(load.alias if load is not None and load.alias else name),
            n_gpu_layers=load.n_gpu_layers if load is not None else self.n_gpu_layers,
            tensor_split=(load.tensor_split if load is not None and load.tensor_split else split),
            n_ctx=load.n_ctx if load is not None else self.n_ctx,
            parallel=self.parallel,
            threads=(load.threads if load is not None and load.threads else self.threads),
            extra_bufts=self.extra_bufts,
        )
