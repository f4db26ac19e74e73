"""``llmo broker``: run the broker in the foreground.

Endpoints, heartbeat settings and keys come from flags, else ``--config``
(``[endpoints]``, ``[broker]``, ``[security]``), else the defaults. With a
keys folder both sockets use CurveZMQ and admit only its allow-list; without
one, binding anything but loopback needs ``--insecure``. ``--broker`` and
``--pub`` may each list endpoints (``,`` or ``;`` between them); every one is
checked and bound. A configuration the broker cannot run with (bad keys, an
exposed plain-TCP endpoint, an endpoint it cannot bind) exits with code 2
and one line naming it, so ``llmo up`` stops instead of restarting it.

Roles: the workers are the names given with ``--worker`` (``llmo up`` passes
each of its workers), else the ``[[workers]]`` of ``--config``; ``brain`` is
the brain and every other name a tool (``broker.roles``). With neither, roles
go by rule (a name that registers is a worker), for loopback development.

``--systemd`` (in the unit ``llmo systemd install`` writes) says that systemd,
not ``llmo up``, runs this rig's processes: a tool that asks for ``llmo up``'s
supervisor (``llmo restart``, ``llmo status``, the TUI's restart key) is told
so, with the ``systemctl`` commands to use instead.
"""

from __future__ import annotations

import argparse
import sys

from llmo.cli.common import add_endpoint_flags, add_log_flags, set_title, setup_logging
from llmo.cli.config import add_key_flags
from llmo.proto.vocab import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS


def configure(parser: argparse.ArgumentParser) -> None:
    add_endpoint_flags(parser, connect=False)
    add_log_flags(parser)
    parser.add_argument("--config", help="llmo.toml for endpoints, heartbeat settings and keys")
    add_key_flags(parser, insecure=True)
    parser.add_argument(
        "--worker",
        action="append",
        default=None,
        metavar="NAME",
        help="a worker name (repeat for each; default: the [[workers]] of --config; "
        "none anywhere: a name that registers is a worker)",
    )
    parser.add_argument(
        "--systemd",
        action="store_true",
        help="this rig runs as systemd units: tell tools that ask for llmo up's supervisor "
        "to use systemctl instead",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="heartbeat interval in seconds "
        f"(default: the config's, else {HEARTBEAT_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--liveness",
        type=int,
        default=None,
        help="heartbeats a peer may miss before it is declared down "
        f"(default: the config's, else {HEARTBEAT_LIVENESS})",
    )


def run(args: argparse.Namespace) -> int:
    from llmo.broker.roles import Roles
    from llmo.broker.service import BindError, Broker
    from llmo.cli.config import ConfigError, RigConfig, endpoints, load, server_keys
    from llmo.proto.endpoints import EndpointError
    from llmo.proto.security import SecurityError

    set_title("llmo-broker")
    setup_logging(args.log_level)
    try:
        config = load(args.config) if args.config else RigConfig()
        keys = server_keys(config, args.keys_dir)
    except (ConfigError, SecurityError) as exc:
        print(f"llmo broker: {exc}", file=sys.stderr)
        return 2
    where = endpoints(config, args.broker, args.pub)
    interval = args.interval if args.interval is not None else config.interval_s
    liveness = args.liveness if args.liveness is not None else config.liveness
    names = args.worker if args.worker else [w.name for w in config.workers]
    roles = Roles(workers=frozenset(names)) if names else Roles()
    try:
        broker = Broker(
            where.broker,
            where.pub,
            interval=interval,
            liveness=liveness,
            keys=keys,
            insecure=args.insecure,
            roles=roles,
            systemd=args.systemd,
        )
    except (SecurityError, EndpointError, BindError) as exc:
        print(f"llmo broker: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"llmo broker: {exc}", file=sys.stderr)
        return 1
    return broker.run(install_signals=True)
