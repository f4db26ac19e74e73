"""Flags and set-up shared by the subcommands."""

from __future__ import annotations

import argparse
import logging
import os
import sys


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


def set_title(title: str) -> None:
    """Show this process as ``title`` in ``ps``, ``top`` and ``htop`` (its command line
    and the kernel's 15-character name), where the optional ``setproctitle`` package
    is installed; without it the process keeps its interpreter's command line."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def llmo_child() -> list[str]:
    """The argv prefix that starts another ``llmo`` process with this interpreter.

    The child imports the same installed ``llmo`` package as this process;
    ``-P`` keeps the operator's current folder off its ``sys.path``, so a
    stray ``llmo/`` folder there cannot stand in for it.
    """
    return [sys.executable, "-P", "-m", "llmo.cli.main"]
