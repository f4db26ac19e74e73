"""What the operator tools share: flags, endpoints and keys, one session.

A tool talks to the brain through the broker, in a ``proto.session.Session``
over one short-lived client; its failures are ``ToolError`` sentences.

Endpoints and keys: flags first, then the llmo.toml named by ``--config``
(where a tool takes one) or ``$LLMO_CONFIG`` (its ``[endpoints]`` and
``[security] keys_dir``), then ``$LLMO_BROKER`` /
``$LLMO_PUB`` / ``$LLMO_KEYS_DIR``. A tool connects with the key pair
``--key`` (default ``$LLMO_KEY``, else ``pi``); the keys are set for the whole
process, so a ``Subscriber`` it opens (``submit --watch``) uses them too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator

from llmo.cli.config import RigConfig, add_key_flags
from llmo.proto.client import Client, tool_name
from llmo.proto.endpoints import Endpoints
from llmo.proto.errors import ProtocolError
from llmo.proto.messages import Message
from llmo.proto.pubsub import Subscriber
from llmo.proto.security import DEFAULT_TOOL_KEY, ENV_KEY, ClientKeys
from llmo.proto.session import Session, ToolError

DEFAULT_TIMEOUT = 5.0


def add_tool_flags(
    parser: argparse.ArgumentParser,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    timeout_help: str | None = None,
) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help=timeout_help or f"seconds to wait for the brain (default {timeout:g})",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get(ENV_KEY) or DEFAULT_TOOL_KEY,
        metavar="NAME",
        help="the CurveZMQ key pair to connect with, when keys are set up "
        f"(default: ${ENV_KEY}, else {DEFAULT_TOOL_KEY})",
    )
    add_key_flags(parser)


def tool_setup(args: argparse.Namespace) -> tuple[Endpoints, ClientKeys | None]:
    """Endpoints and keys for a tool; sets the keys for the process. Raises ``ToolError``."""
    from llmo.cli.common import connect_endpoints
    from llmo.cli.config import ConfigError, client_keys
    from llmo.proto.endpoints import EndpointError
    from llmo.proto.security import SecurityError, use_keys

    try:
        config = tool_config(args)
        chosen = connect_endpoints(
            getattr(args, "broker", None), getattr(args, "pub", None), config
        )
        keys = client_keys(
            config,
            getattr(args, "key", None) or DEFAULT_TOOL_KEY,
            getattr(args, "keys_dir", None),
        )
    except (ConfigError, SecurityError, EndpointError) as exc:
        raise ToolError(str(exc)) from None
    use_keys(keys)
    return chosen, keys


def tool_config(args: argparse.Namespace) -> RigConfig:
    """The llmo.toml a tool reads: ``--config`` where it names one, else ``$LLMO_CONFIG``.

    Raises ``ConfigError``; no file: an empty ``RigConfig``."""
    from llmo.cli.config import RigConfig, load

    # ``status --config`` names an llmo.toml; ``submit --config`` is plan settings.
    given = getattr(args, "config", None)
    path = given if isinstance(given, str) and given.endswith(".toml") else None
    path = path or os.environ.get("LLMO_CONFIG")
    return load(path) if path else RigConfig()


def rig_label(args: argparse.Namespace, endpoints: Endpoints) -> str:
    """Which rig a tool talks to, for its header: ``rig NAME at ENDPOINT`` or ``broker ENDPOINT``.

    The name is ``[rig] name`` of the tool's llmo.toml, when it has one."""
    from llmo.cli.config import ConfigError

    try:
        name = tool_config(args).name
    except ConfigError:
        name = ""
    return f"rig {name} at {endpoints.broker}" if name else f"broker {endpoints.broker}"


def open_session(args: argparse.Namespace, kind: str) -> Session:
    """A session with the brain; exits with code 2 and the reason when the keys are wrong."""
    try:
        endpoints, keys = tool_setup(args)
    except ToolError as exc:
        raise SystemExit(fail(kind, exc, 2)) from None
    client = Client(tool_name(kind), endpoints.broker, keys=keys)
    return Session(endpoints=endpoints, client=client, timeout=args.timeout)


def fail(command: str, error: Exception | str, code: int = 1) -> int:
    print(f"llmo {command}: {error}", file=sys.stderr)
    return code


def publications(subscriber: Subscriber, seconds: float) -> Iterator[Message]:
    """What the broker publishes for up to ``seconds`` (ends early when nothing
    comes); a malformed publication is named on stderr and skipped."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            got = subscriber.recv(timeout=left)
        except ProtocolError as exc:
            print(f"llmo: ignored a malformed publication: {exc}", file=sys.stderr)
            continue
        if got is None:
            return
        yield got.message
