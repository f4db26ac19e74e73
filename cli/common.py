"""Flags and set-up shared by the subcommands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmo.cli.config import RigConfig
    from llmo.proto.endpoints import Endpoints


def add_endpoint_flags(parser: argparse.ArgumentParser, *, connect: bool = True) -> None:
    """``--broker`` / ``--pub``; a tool that connects also takes ``HOST:PORT`` for ``tcp://``."""
    form = " (tcp://HOST:PORT; HOST:PORT means tcp://HOST:PORT)" if connect else ""
    parser.add_argument(
        "--broker",
        help=f"the broker's ROUTER endpoint{form} (default: $LLMO_BROKER or tcp://127.0.0.1:5555)",
    )
    parser.add_argument(
        "--pub",
        help=f"the broker's PUB endpoint{form} (default: $LLMO_PUB or tcp://127.0.0.1:5556)",
    )


def connect_endpoints(
    broker: str | None, pub: str | None, config: RigConfig | None = None
) -> Endpoints:
    """The endpoints a tool connects to, checked before any socket sees them.

    Flags first, then the config's ``[endpoints]``, then ``$LLMO_BROKER`` /
    ``$LLMO_PUB``, then loopback. ``HOST:PORT`` becomes ``tcp://HOST:PORT``.
    Raises ``EndpointError`` naming the value, where it came from and the form
    expected; commands print it as one line and exit 2.
    """
    from llmo.proto.endpoints import ENV_BROKER, ENV_PUB, resolve
    from llmo.proto.endpoints import connect_endpoints as check

    def origin(flag: str | None, flag_name: str, in_config: str, env: str) -> str:
        if flag:
            return flag_name
        if in_config:
            return f"{flag_name[2:]} of [endpoints] in {config.path if config else 'llmo.toml'}"
        return f"${env}" if os.environ.get(env) else f"the default {flag_name[2:]}"

    config_broker = config.broker if config else ""
    config_pub = config.pub if config else ""
    chosen = resolve(broker or config_broker or None, pub or config_pub or None)
    return check(
        chosen,
        origin(broker, "--broker", config_broker, ENV_BROKER),
        origin(pub, "--pub", config_pub, ENV_PUB),
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
