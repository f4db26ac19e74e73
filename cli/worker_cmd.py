"""``llmo worker``: run one GPU-pinned worker in the foreground."""

from __future__ import annotations

import argparse
import os
import sys

from cli.common import add_endpoint_flags, add_log_flags, setup_logging


def _gpus(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none", "cpu"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0,3, not {text!r}") from None


def configure(parser: argparse.ArgumentParser) -> None:
    add_endpoint_flags(parser)
    add_log_flags(parser)
    parser.add_argument("--name", required=True, help="actor name, e.g. gpu-1")
    parser.add_argument(
        "--gpus", type=_gpus, default=(), help="GPU indices this worker owns, e.g. 1 or 0,3"
    )
    parser.add_argument("--role", choices=["worker", "brain"], default="worker")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="a GGUF file this worker may load (repeat for more; the first is the default)",
    )
    parser.add_argument("--slots", type=int, default=1, help="attempts at once")
    parser.add_argument(
        "--vram-mb",
        type=int,
        default=None,
        help="VRAM budget (default: 80%% of the GPUs' VRAM, or slots x 1024 without a GPU)",
    )
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: its own)")
    parser.add_argument("--ctx", type=int, default=4096, help="context size of loaded models")
    parser.add_argument(
        "--extra-bufts",
        choices=["auto", "on", "off"],
        default="auto",
        help="llama.cpp CPU extra buffer types (auto: off where the CPU advertises AMX)",
    )
    parser.add_argument("--interval", type=float, default=1.0, help="heartbeat interval (s)")
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
    limits = parser.add_argument_group("resource limits")
    limits.add_argument("--max-temp", type=float, default=75.0, help="GPU warning, °C")
    limits.add_argument("--critical-temp", type=float, default=90.0, help="GPU critical, °C")
    limits.add_argument("--max-cpu-temp", type=float, default=78.0, help="CPU warning, °C")
    limits.add_argument("--max-vram-pct", type=float, default=95.0, help="VRAM warning, %%")
    limits.add_argument("--max-power", type=float, default=140.0, help="power warning, W")


def run(args: argparse.Namespace) -> int:
    # Pin the GPUs before anything can load CUDA or NVML; the worker's modules
    # import llama_cpp and pynvml lazily, so this comes first.
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, args.gpus))
    setup_logging(args.log_level)

    from proto.endpoints import resolve, valid_actor_name
    from worker.config import WorkerConfig
    from worker.limits import LimitsConfig
    from worker.service import Worker

    if not valid_actor_name(args.name):
        print(f"llmo worker: {args.name!r} is not a valid actor name", file=sys.stderr)
        return 2
    if args.slots < 1:
        print("llmo worker: --slots must be at least 1", file=sys.stderr)
        return 2
    config = WorkerConfig(
        name=args.name,
        role=args.role,
        gpus=args.gpus,
        slots=args.slots,
        vram_mb=args.vram_mb,
        models=tuple(args.model),
        threads=args.threads,
        n_ctx=args.ctx,
        extra_bufts=args.extra_bufts,
        heartbeat_s=args.interval,
        stop_deadline_s=args.stop_deadline,
        exit_when_idle_s=args.exit_when_idle,
        limits=LimitsConfig(
            gpu_warn_c=args.max_temp,
            gpu_critical_c=args.critical_temp,
            cpu_warn_c=args.max_cpu_temp,
            vram_percent=args.max_vram_pct,
            power_w=args.max_power,
        ),
    )
    worker = Worker(config, resolve(args.broker, args.pub).broker)
    return worker.run(install_signals=True)
