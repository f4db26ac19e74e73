"""``llmo keys generate DIR``: CurveZMQ key pairs for the broker and every client.

Makes the broker's pair and one pair per client: ``brain``, ``supervisor``
(``llmo up``'s link to the broker, ``cli.up_link``), each worker of
``--config`` and ``pi`` (the tools on the Pi), plus any ``--name``. Pairs
that exist are kept, so running it again after adding a worker adds only
that worker's key; ``--force`` makes new ones (every copy must then be
replaced). The layout is described in ``proto.security``; the end of the
output says which files go to which machine.
"""

from __future__ import annotations

import argparse
import os
import sys

from llmo.proto.messages import BRAIN, SUPERVISOR
from llmo.proto.security import (
    BROKER_KEY,
    CLIENTS_DIR,
    DEFAULT_TOOL_KEY,
    PUBLIC_SUFFIX,
    SECRET_SUFFIX,
    SecurityError,
    generate,
)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    gen = sub.add_parser(
        "generate",
        help="make the key pairs (existing ones are kept)",
        description="Make CurveZMQ key pairs for the broker, the brain, each worker of "
        "--config and the Pi's tools.",
    )
    gen.add_argument("dir", metavar="DIR", help="the keys folder, e.g. /etc/llmo/keys")
    gen.add_argument(
        "--config",
        default=os.environ.get("LLMO_CONFIG"),
        help="llmo.toml: one pair per [[workers]] entry (default: $LLMO_CONFIG)",
    )
    gen.add_argument(
        "--name",
        action="append",
        default=[],
        help="another client to make a pair for (repeat for more)",
    )
    gen.add_argument(
        "--no-pi",
        action="store_true",
        help=f"do not make the {DEFAULT_TOOL_KEY!r} pair for the tools on the control machine",
    )
    gen.add_argument("--force", action="store_true", help="replace existing pairs")


def run(args: argparse.Namespace) -> int:
    from llmo.cli.config import ConfigError, load
    from llmo.proto.endpoints import valid_actor_name

    names = [BRAIN, SUPERVISOR]
    if args.config:
        try:
            names += [w.name for w in load(args.config).workers]
        except ConfigError as exc:
            print(f"llmo keys: {exc}", file=sys.stderr)
            return 2
    if not args.no_pi:
        names.append(DEFAULT_TOOL_KEY)
    names += args.name
    bad = [n for n in names if not valid_actor_name(n) or n == BROKER_KEY]
    if bad:
        print(f"llmo keys: not usable as key names: {', '.join(bad)}", file=sys.stderr)
        return 2
    try:
        done = generate(args.dir, names, force=args.force)
    except (SecurityError, OSError) as exc:
        print(f"llmo keys: {exc}", file=sys.stderr)
        return 1
    for name, what in done.items():
        print(f"{what:8s} {name}")
    clients = [n for n in done if n != BROKER_KEY]
    rig = [n for n in clients if n != DEFAULT_TOOL_KEY]
    print(
        f"\nin {args.dir}:\n"
        f"  the rig needs   {BROKER_KEY}{PUBLIC_SUFFIX} {BROKER_KEY}{SECRET_SUFFIX} {CLIENTS_DIR}/ "
        + " ".join(f"{n}{SECRET_SUFFIX}" for n in rig)
        + f"\n  the Pi needs    {BROKER_KEY}{PUBLIC_SUFFIX} "
        + (f"{DEFAULT_TOOL_KEY}{SECRET_SUFFIX}" if DEFAULT_TOOL_KEY in clients else "")
        + f"\n  secret files (*{SECRET_SUFFIX}) are mode 0600: keep them so, "
        "owned by the user the services run as"
    )
    return 0
