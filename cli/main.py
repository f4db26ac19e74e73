"""``llmo``: one command, one module per subcommand, registered below."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Subcommand modules keep heavy imports inside
# their ``run``, so ``llmo submit`` on the Pi never loads llama-cpp or NVML.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("cli.broker_cmd", "run the message broker (ROUTER + PUB)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmo", description="llmo, the LLM Orchestration Engine")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        importlib.import_module(module).configure(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
