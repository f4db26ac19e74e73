"""``llmo broker``: run the broker in the foreground."""

from __future__ import annotations

import argparse
import sys

from broker.liveness import INTERVAL, LIVENESS
from broker.service import Broker
from cli.common import add_endpoint_flags, add_log_flags, setup_logging
from proto.endpoints import resolve


def configure(parser: argparse.ArgumentParser) -> None:
    add_endpoint_flags(parser)
    add_log_flags(parser)
    parser.add_argument(
        "--interval", type=float, default=INTERVAL, help="heartbeat interval in seconds"
    )
    parser.add_argument(
        "--liveness",
        type=int,
        default=LIVENESS,
        help="heartbeats a peer may miss before it is declared down",
    )


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    endpoints = resolve(args.broker, args.pub)
    try:
        broker = Broker(
            endpoints.broker, endpoints.pub, interval=args.interval, liveness=args.liveness
        )
    except OSError as exc:
        print(f"llmo broker: {exc}", file=sys.stderr)
        return 1
    return broker.run(install_signals=True)
