"""Flags and set-up shared by the subcommands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# The folder that holds the ``cli`` package (and ``plans``, ``brain``, ...).
CODE_ROOT = str(Path(__file__).resolve().parent.parent)


def add_endpoint_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        help="the broker's ROUTER endpoint (default: $LLMO_BROKER or tcp://127.0.0.1:5555)",
    )
    parser.add_argument(
        "--pub",
        help="the broker's PUB endpoint (default: $LLMO_PUB or tcp://127.0.0.1:5556)",
    )


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LLMO_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default: $LLMO_LOG_LEVEL or INFO)",
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def llmo_child() -> list[str]:
    """The argv prefix that starts another ``llmo`` process with this interpreter.

    ``-P`` keeps the current folder off ``sys.path``: run as ``python -m`` a
    child would otherwise import a ``plans/`` (or ``brain/``, ...) folder of
    the operator's working folder instead of llmo's own package.
    """
    return [sys.executable, "-P", "-m", "cli.main"]


def llmo_child_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with llmo's own code first on PYTHONPATH, so a child finds the
    same packages as this process even when llmo is not installed."""
    paths = [CODE_ROOT, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    return dict(env, PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)))
