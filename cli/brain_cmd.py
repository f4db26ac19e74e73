"""``llmo brain``: run the brain (scheduler, journal, run history) in the foreground.

One brain per journal: a journal that a live brain holds (``<journal>.lock``)
is refused with exit code 2 and one line naming the holder's pid and broker.
One brain per broker: when the broker refuses this brain because another
live brain holds the name (``name_in_use``), it logs "another brain is
connected to the broker at ...; this one stops" and exits 2; ``llmo up``
does not restart a child that exits 2, it stops the rig with that line.
A journal damaged anywhere but its last record (valid records after the
damage) is refused the same way, exit 2, with one line naming the journal,
the offset and ``llmo journal repair``; the file is left as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from llmo.cli.common import add_endpoint_flags, add_log_flags, set_title, setup_logging
from llmo.cli.config import add_key_flags

DEFAULT_JOURNAL = os.path.expanduser("~/.local/state/llmo/brain.journal")


def configure(parser: argparse.ArgumentParser) -> None:
    add_endpoint_flags(parser, connect=False)
    add_log_flags(parser)
    parser.add_argument(
        "--journal",
        default=os.environ.get("LLMO_JOURNAL", DEFAULT_JOURNAL),
        help="the journal on local disk (default: $LLMO_JOURNAL or %(default)s)",
    )
    parser.add_argument(
        "--config",
        help="brain settings: a JSON map of brain.config.BrainConfig fields, "
        "or an llmo.toml whose [brain] section is used",
    )
    add_key_flags(parser)
    parser.add_argument(
        "--fsync",
        choices=["always", "batch", "interval", "never"],
        default="interval",
        help="journal durability against power cuts (a killed brain loses nothing either way): "
        "fsync every record, once per loop iteration, at most every 0.1 s (default), or never",
    )
    parser.add_argument(
        "--tick", type=float, default=0.5, help="seconds between timer checks (default 0.5)"
    )


def load_settings(path: str | None) -> dict:
    if not path:
        return {}
    if path.endswith(".toml"):
        from llmo.cli.config import load, worker_policy

        rig = load(path)
        settings = dict(rig.brain)
        # Plan files and foreach sources: inside the workers' plan roots.
        settings.setdefault("plan_roots", list(worker_policy(rig).plan_roots))
        # The models the rig serves: a task naming another fails at once (brain.models).
        served = list(dict.fromkeys(w.model for w in rig.workers if w.model))
        if served:
            settings.setdefault("models", served)
        return settings
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON map of brain settings")
    return data


def run(args: argparse.Namespace) -> int:
    set_title("llmo-brain")
    setup_logging(args.log_level)
    from llmo.brain.config import BrainConfig
    from llmo.brain.journal import JournalDamaged, JournalError, JournalLocked
    from llmo.brain.service import BrainService
    from llmo.cli.config import RigConfig, client_keys, load
    from llmo.cli.config import endpoints as rig_endpoints
    from llmo.proto.messages import BRAIN
    from llmo.proto.security import SecurityError, use_keys

    try:
        config = BrainConfig.from_settings(load_settings(args.config))
    except (OSError, ValueError, TypeError) as exc:
        print(f"llmo brain: bad --config: {exc}", file=sys.stderr)
        return 2
    # An llmo.toml also gives the endpoints and the brain's CurveZMQ keys.
    rig = load(args.config) if args.config and args.config.endswith(".toml") else RigConfig()
    try:
        use_keys(client_keys(rig, BRAIN, args.keys_dir))
    except SecurityError as exc:
        print(f"llmo brain: {exc}", file=sys.stderr)
        return 2
    endpoints = rig_endpoints(rig, args.broker, args.pub)
    service = BrainService(
        endpoints.broker, args.journal, config, fsync=args.fsync, tick_s=args.tick
    )
    try:
        service.start()
    except (JournalLocked, JournalDamaged) as exc:
        print(f"llmo brain: {exc}", file=sys.stderr)
        return 2
    except (JournalError, OSError) as exc:
        print(f"llmo brain: cannot recover from {args.journal}: {exc}", file=sys.stderr)
        return 1
    return service.run(install_signals=True)
