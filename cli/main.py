"""``llmo``: one command, one module per subcommand, registered below."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> ("module" or "module:Class", one-line help). Only the chosen
# subcommand's module is imported, so ``llmo submit`` on the Pi starts fast
# and never loads llama-cpp or NVML. Each target has configure(parser) and run(args).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("llmo.cli.up_cmd", "start broker, brain and workers here, supervised (Ctrl-C stops)"),
    "demo": ("llmo.cli.demo_cmd", "run an example plan on a fresh local rig, then stop it"),
    "broker": ("llmo.cli.broker_cmd", "run the message broker (ROUTER + PUB)"),
    "worker": ("llmo.cli.worker_cmd", "run a GPU-pinned worker (shell and LLM tasks)"),
    "plan": ("llmo.cli.plan_cmd", "check plan folders before a run (plan check PLAN_DIR...)"),
    "submit": ("llmo.cli.submit_cmd", "send a plan to the brain; --watch follows the batch"),
    "status": ("llmo.cli.status_cmd", "workers and batches at a glance (--json, --wait-ready)"),
    "watch": ("llmo.cli.watch_cmd", "follow a running batch again (the view of submit --watch)"),
    "history": ("llmo.cli.history_cmd", "a plan's past runs: status, wall time, tasks, tokens"),
    "cancel": ("llmo.cli.control_cmd:Cancel", "cancel a batch"),
    "retry": (
        "llmo.cli.control_cmd:Retry",
        "run a failed task again: fresh attempts, its skipped dependents and batch re-opened",
    ),
    "drain": ("llmo.cli.control_cmd:Drain", "drain a worker: finish running work, take no more"),
    "load": ("llmo.cli.control_cmd:Load", "load a model on a worker"),
    "unload": ("llmo.cli.control_cmd:Unload", "unload a worker's model"),
    "restart": (
        "llmo.cli.restart_cmd",
        "start again a worker llmo up gave up on, and wait for it to register",
    ),
    "tui": (
        "llmo.cli.tui_cmd",
        "the terminal monitor: workers, batches, tasks, events; keys to act",
    ),
    "brain": ("llmo.cli.brain_cmd", "run the brain: scheduling, journal and recovery, run history"),
    "replay": (
        "llmo.cli.replay_cmd",
        "print the decision trace of a brain journal (replay JOURNAL)",
    ),
    "journal": (
        "llmo.cli.journal_cmd",
        "find and repair damage in a brain journal (journal check|repair JOURNAL)",
    ),
    "keys": ("llmo.cli.keys_cmd", "CurveZMQ keys for the broker and its peers (keys generate DIR)"),
    "cache": (
        "llmo.cli.cache_cmd",
        "the result cache of deterministic completions (cache stats|clear)",
    ),
    "systemd": ("llmo.cli.systemd_cmd", "the rig's systemd units from llmo.toml (systemd install)"),
}


def _target(spec: str):
    module, _, attr = spec.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attr) if attr else loaded


def top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmo",
        description="llmo, the LLM Orchestration Engine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:10s} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items())
        + "\n\nRun `llmo COMMAND --help` for a command's options.",
    )
    parser.add_argument("command", metavar="COMMAND", choices=list(SUBCOMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = top_parser()
    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            parser.print_help()
            return 0
        parser.print_usage(sys.stderr)
        return 2
    name = argv[0]
    if name not in SUBCOMMANDS:
        parser.error(f"unknown command {name!r} (choose from {', '.join(SUBCOMMANDS)})")
    spec, help_text = SUBCOMMANDS[name]
    target = _target(spec)
    sub = argparse.ArgumentParser(prog=f"llmo {name}", description=help_text)
    target.configure(sub)
    return int(target.run(sub.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
