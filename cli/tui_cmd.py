"""``llmo tui``: the Textual monitor of the rig (workers, batches, tasks, events).

Its header names the rig (``rig NAME at ENDPOINT`` from ``[rig] name`` of
``$LLMO_CONFIG``, else ``broker ENDPOINT``). ``--broker``/``--pub`` are checked
before the screen opens, as for every tool (``cli.common.connect_endpoints``).

Textual and the monitor are imported inside ``run`` so that ``llmo --help``
and the other commands stay fast on the Pi.
"""

from __future__ import annotations

import argparse
import logging
import os

from llmo.cli.common import add_endpoint_flags


def configure(parser: argparse.ArgumentParser) -> None:
    add_endpoint_flags(parser)
    parser.add_argument(
        "--path-map",
        action="append",
        default=[],
        metavar="RIG=LOCAL",
        help="read task logs under LOCAL where the rig writes RIG (the shared drive mounted "
        "at another path here); may be given more than once (default: $LLMO_PATH_MAP, "
        "comma-separated)",
    )
    parser.add_argument(
        "--log-file",
        help="write the monitor's own log here (a terminal UI cannot print to stderr)",
    )


def path_map(values: list[str]) -> list[tuple[str, str]]:
    specs = list(values)
    env = os.environ.get("LLMO_PATH_MAP", "")
    if not specs and env:
        specs = [s for s in env.split(",") if s.strip()]
    pairs = []
    for spec in specs:
        rig, sep, local = spec.partition("=")
        if not sep or not rig or not local:
            raise SystemExit(f"llmo tui: --path-map wants RIG=LOCAL, got {spec!r}")
        pairs.append((rig.strip(), local.strip()))
    return pairs


def run(args: argparse.Namespace) -> int:
    """Run the monitor; exit 0 only when the operator quit it.

    A bad endpoint (or keys) is refused before the screen opens (exit 2); a
    crash of the monitor ends in one line naming it and exit 1, after the
    crash report Textual prints.
    """
    from llmo.cli.tools import fail, rig_label, tool_setup
    from llmo.proto.session import ToolError

    try:
        endpoints, _ = tool_setup(args)
    except ToolError as exc:
        return fail("tui", exc, 2)
    from llmo.tui.app import MonitorApp
    from llmo.tui.feed import Feed

    if args.log_file:
        logging.basicConfig(
            filename=args.log_file,
            level=logging.INFO,
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        )
    else:
        logging.getLogger("llmo").addHandler(logging.NullHandler())
        logging.getLogger("llmo").propagate = False
    app = MonitorApp(
        lambda post: Feed(endpoints, post),
        endpoint=endpoints.broker,
        rig=rig_label(args, endpoints),
        path_map=path_map(args.path_map),
    )
    try:
        app.run()
    except Exception as exc:  # the monitor itself failed: say so, never exit 0
        return fail("tui", f"the monitor stopped: {type(exc).__name__}: {exc}")
    if app.return_code:
        crash = getattr(app, "_exception", None)
        reason = f"{type(crash).__name__}: {crash}" if crash else f"exit code {app.return_code}"
        return fail("tui", f"the monitor crashed ({reason}); the report is above", app.return_code)
    return 0
