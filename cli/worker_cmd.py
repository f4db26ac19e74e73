"""``llmo worker``: run one GPU-pinned worker in the foreground.

With ``--config llmo.toml`` the worker takes its ``[[workers]]`` entry (the
one named ``--name``: GPUs, role, model, slots, VRAM budget, threads,
context), the ``[limits]``, the endpoints, the heartbeat interval and its
CurveZMQ keys from the file; a flag given as well wins. This is how the
systemd unit ``llmo-worker@NAME`` runs it, with ``--task-user llmo-task``:
shell tasks then run as that user (``worker.taskuser``), and a user that
does not exist, or a worker without the privilege to switch to it, stops
the start with exit code 2 and the reason. The GPUs are pinned with
``CUDA_VISIBLE_DEVICES`` before anything can load CUDA.
"""

from __future__ import annotations

import argparse
import os
import sys

from llmo.cli.common import add_endpoint_flags, add_log_flags, set_title, setup_logging
from llmo.cli.config import add_key_flags
from llmo.proto.vocab import HEARTBEAT_INTERVAL_S, MAX_PARALLEL

# [limits] keys of llmo.toml -> the flags that override them.
LIMIT_FLAGS = {
    "gpu_warn_c": "max_temp",
    "gpu_critical_c": "critical_temp",
    "cpu_warn_c": "max_cpu_temp",
    "vram_percent": "max_vram_pct",
    "power_w": "max_power",
}


def _gpus(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none", "cpu"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0,3, not {text!r}") from None


def configure(parser: argparse.ArgumentParser) -> None:
    add_endpoint_flags(parser, connect=False)
    add_log_flags(parser)
    parser.add_argument("--name", required=True, help="actor name, e.g. gpu-1")
    parser.add_argument(
        "--config",
        help="llmo.toml: take this worker's [[workers]] entry, [limits], endpoints and keys",
    )
    add_key_flags(parser)
    parser.add_argument(
        "--gpus", type=_gpus, default=None, help="GPU indices this worker owns, e.g. 1 or 0,3"
    )
    parser.add_argument("--role", choices=["worker", "brain"], default=None)
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="a GGUF file this worker may load (repeat for more; the first is the default)",
    )
    parser.add_argument("--slots", type=int, default=None, help="attempts at once (default 1)")
    parser.add_argument(
        "--vram-mb",
        type=int,
        default=None,
        help="VRAM budget (default: 80%% of the GPUs' VRAM, or slots x 1024 without a GPU)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="llama.cpp threads (default 0: its own)"
    )
    parser.add_argument(
        "--ctx",
        type=int,
        default=None,
        help="context of each sequence of a loaded model (default 4096)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="LLM sequences generated at once, in one batch (default 4; context parallel x ctx)",
    )
    parser.add_argument(
        "--extra-bufts",
        choices=["auto", "on", "off"],
        default="auto",
        help="llama.cpp CPU extra buffer types (auto: off where the CPU advertises AMX)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help=f"heartbeat interval (s, default {HEARTBEAT_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--stop-deadline",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds to let attempts finish before aborting them",
    )
    parser.add_argument(
        "--exit-when-idle",
        type=float,
        default=None,
        metavar="S",
        help="exit after S seconds with nothing running",
    )
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help="command policy for shell tasks as JSON, the keys of llmo.toml's [policy] "
        "(default: [policy] of --config, with the config and keys protected; the keys "
        "folder is secret from tasks either way)",
    )
    parser.add_argument(
        "--task-user",
        metavar="NAME",
        default=None,
        help="run shell tasks as this user (needs root, or CAP_SETUID, CAP_SETGID and "
        "CAP_KILL); default: [[workers]] task_user, else the worker's own user; "
        "'' for the worker's user",
    )
    parser.add_argument(
        "--max-output-mb",
        type=float,
        default=None,
        metavar="MB",
        help="a task's output past this many MB is dropped, the log saying where it was "
        "cut (default: [[workers]] max_output_mb, else 100; 0: no cap)",
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=None,
        help="the result cache of deterministic completions, shared by the rig's workers "
        "(default: [cache] dir, else <rig_dir>/cache)",
    )
    parser.add_argument(
        "--cache-mb",
        type=int,
        default=None,
        metavar="MB",
        help="the result cache's size; least recently used results go past it "
        "(default: [cache] max_mb, else 256; 0: no cache)",
    )
    limits = parser.add_argument_group("resource limits")
    limits.add_argument("--max-temp", type=float, help="GPU warning, °C (default 75)")
    limits.add_argument("--critical-temp", type=float, help="GPU critical, °C (default 90)")
    limits.add_argument("--max-cpu-temp", type=float, help="CPU warning, °C (default 78)")
    limits.add_argument("--max-vram-pct", type=float, help="VRAM warning, %% (default 95)")
    limits.add_argument("--max-power", type=float, help="power warning, W (default 140)")


def _pick(flag, from_config, default):
    if flag is not None:
        return flag
    return from_config if from_config is not None else default


def run(args: argparse.Namespace) -> int:
    from llmo.cli.config import (
        ConfigError,
        RigConfig,
        cache_dir,
        client_keys,
        endpoints,
        keys_dir,
        load,
        worker_policy,
    )
    from llmo.proto.endpoints import valid_actor_name
    from llmo.proto.security import SecurityError, use_keys

    if not valid_actor_name(args.name):
        print(f"llmo worker: {args.name!r} is not a valid actor name", file=sys.stderr)
        return 2
    set_title(f"llmo-worker {args.name}")
    try:
        rig = load(args.config) if args.config else RigConfig()
    except ConfigError as exc:
        print(f"llmo worker: {exc}", file=sys.stderr)
        return 2
    spec = rig.worker(args.name)
    if args.config and spec is None:
        known = ", ".join(w.name for w in rig.workers) or "none"
        print(
            f"llmo worker: {args.config} has no [[workers]] entry named {args.name!r} "
            f"(it has: {known})",
            file=sys.stderr,
        )
        return 2
    gpus = _pick(args.gpus, spec and spec.gpus, ())
    # Pin the GPUs before anything can load CUDA or NVML; the worker's modules
    # import llama_cpp and pynvml lazily, so this comes first.
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    setup_logging(args.log_level)

    from llmo.worker.cache import DEFAULT_MAX_MB
    from llmo.worker.config import WorkerConfig
    from llmo.worker.limits import LimitsConfig
    from llmo.worker.output import DEFAULT_CAP_MB
    from llmo.worker.service import Worker
    from llmo.worker.strays import become_subreaper

    slots = _pick(args.slots, spec and spec.slots, 1)
    if slots < 1:
        print("llmo worker: --slots must be at least 1", file=sys.stderr)
        return 2
    parallel = _pick(args.parallel, spec and spec.parallel, 4)
    if not 1 <= parallel <= MAX_PARALLEL:
        print(f"llmo worker: --parallel must be 1 to {MAX_PARALLEL}", file=sys.stderr)
        return 2
    try:
        use_keys(client_keys(rig, args.name, args.keys_dir))
    except SecurityError as exc:
        print(f"llmo worker: {exc}", file=sys.stderr)
        return 2
    models = list(args.model)
    if spec is not None and spec.model and spec.model not in models:
        models.append(spec.model)
    limits = {k: float(v) for k, v in rig.limits.items()}
    for key, flag in LIMIT_FLAGS.items():
        if getattr(args, flag) is not None:
            limits[key] = getattr(args, flag)
    try:
        policy = read_policy(args.policy) if args.policy else worker_policy(rig, args.keys_dir)
    except (ConfigError, ValueError) as exc:
        where = f"--policy {args.policy}: " if args.policy else ""
        print(f"llmo worker: {where}{exc}", file=sys.stderr)
        return 2
    # The keys this worker connects with are secret from its tasks, whatever the file says.
    policy = policy.with_secret(keys_dir(rig, args.keys_dir))
    task_user = _pick(args.task_user, spec and spec.task_user, "")
    if task_user:
        from llmo.worker.taskuser import TaskUserError, resolve

        try:
            resolve(task_user)
        except TaskUserError as exc:
            print(f"llmo worker: --task-user {task_user}: {exc}", file=sys.stderr)
            return 2
    max_output_mb = _pick(args.max_output_mb, spec and spec.max_output_mb, DEFAULT_CAP_MB)
    if max_output_mb < 0:
        print("llmo worker: --max-output-mb must be 0 (no cap) or more", file=sys.stderr)
        return 2
    cache_mb = _pick(args.cache_mb, rig.cache_mb, DEFAULT_MAX_MB)
    if cache_mb < 0:
        print("llmo worker: --cache-mb must be 0 (no cache) or more", file=sys.stderr)
        return 2
    config = WorkerConfig(
        name=args.name,
        role=_pick(args.role, spec and spec.role, "worker"),
        gpus=gpus,
        slots=slots,
        vram_mb=_pick(args.vram_mb, spec.vram_mb if spec and spec.vram_mb else None, None),
        models=tuple(models),
        threads=_pick(args.threads, spec and spec.threads, 0),
        n_ctx=_pick(args.ctx, spec and spec.n_ctx, 4096),
        parallel=parallel,
        n_gpu_layers=spec.n_gpu_layers if spec is not None else -1,
        tensor_split=spec.tensor_split if spec is not None else (),
        extra_bufts=args.extra_bufts,
        heartbeat_s=_pick(
            args.interval, rig.interval_s if args.config else None, HEARTBEAT_INTERVAL_S
        ),
        stop_deadline_s=args.stop_deadline,
        exit_when_idle_s=args.exit_when_idle,
        limits=LimitsConfig(**limits),
        policy=policy,
        task_user=task_user,
        max_output_mb=max_output_mb,
        cache_dir=os.path.abspath(args.cache_dir) if args.cache_dir else cache_dir(rig),
        cache_mb=cache_mb,
    )
    # Orphaned descendants of tasks come back to this process, to be swept and reaped.
    reaper = become_subreaper()
    worker = Worker(config, endpoints(rig, args.broker, args.pub).broker)
    worker.attempts.strays.reaper = reaper
    return worker.run(install_signals=True)


def read_policy(path: str):
    """The policy in a JSON file (``Policy.to_dict`` form); ``ValueError`` says what is wrong."""
    import json

    from llmo.worker.rules import Policy

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object with the keys of [policy]")
    return Policy.from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)))
