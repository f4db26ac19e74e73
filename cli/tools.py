"""What the operator tools share: one short-lived client, clear failures.

A tool talks to the brain through the broker. Three things can go wrong and
each gets its own sentence, naming the endpoint that was tried:

- nothing comes back at all: the broker is not running or not reachable;
- the broker answers ``unknown_destination``: the broker runs, the brain is
  not connected to it;
- the brain refuses: its ``Ack``/``Error`` detail is shown as it is.

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
from dataclasses import dataclass

from llmo.cli.config import add_key_flags
from llmo.proto.client import Client, tool_name
from llmo.proto.endpoints import Endpoints
from llmo.proto.errors import ErrorCode
from llmo.proto.messages import BRAIN, Ack, Error, Message
from llmo.proto.security import DEFAULT_TOOL_KEY, ENV_KEY, ClientKeys, is_loopback

DEFAULT_TIMEOUT = 5.0


class ToolError(Exception):
    """A tool could not do its job; the message is for the operator."""


@dataclass(slots=True)
class Session:
    endpoints: Endpoints
    client: Client
    timeout: float

    def ask(self, msg: Message) -> Message:
        """Send ``msg`` to the brain and return its reply, or raise ``ToolError``."""
        reply = self.client.request(msg, timeout=self.timeout)
        if reply is None:
            raise ToolError(
                f"no answer from the broker at {self.endpoints.broker} within "
                f"{self.timeout:g} s: is `llmo up` (or `llmo broker` and `llmo brain`) running, "
                "and is LLMO_BROKER / --broker right?" + self._key_hint()
            )
        if isinstance(reply, Error):
            if reply.code == ErrorCode.UNKNOWN_DESTINATION and reply.peer == BRAIN:
                raise ToolError(
                    f"the broker at {self.endpoints.broker} answered, but no brain is "
                    "connected to it: start `llmo brain` (or `llmo up`)"
                )
            raise ToolError(f"{reply.code}: {reply.detail}")
        return reply

    def control(self, msg: Message) -> str:
        """Send a control request; return the brain's detail, raise if it refused."""
        reply = self.ask(msg)
        if isinstance(reply, Ack):
            if not reply.ok:
                raise ToolError(reply.detail or "the brain refused the request")
            return reply.detail
        raise ToolError(f"unexpected reply {reply.TYPE.value!r} from the brain")

    def _key_hint(self) -> str:
        keys = self.client.keys
        if keys is not None:
            return (
                f" This tool used the CurveZMQ key {keys.name!r}: it must be in the broker's "
                "allow-list (clients/), and broker.key here must be the rig's."
            )
        if not is_loopback(self.endpoints.broker):
            return (
                " No CurveZMQ keys were loaded, and a broker with keys ignores such clients: "
                "see --key / --keys-dir, LLMO_KEYS_DIR or [security] keys_dir in $LLMO_CONFIG."
            )
        return ""

    def close(self) -> None:
        self.client.close()


def add_tool_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for the brain (default {DEFAULT_TIMEOUT:g})",
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
    from llmo.cli.config import ConfigError, RigConfig, client_keys, endpoints, load
    from llmo.proto.security import SecurityError, use_keys

    # ``status --config`` names an llmo.toml; ``submit --config`` is plan settings.
    given = getattr(args, "config", None)
    path = given if isinstance(given, str) and given.endswith(".toml") else None
    path = path or os.environ.get("LLMO_CONFIG")
    try:
        config = load(path) if path else RigConfig()
        keys = client_keys(
            config,
            getattr(args, "key", None) or DEFAULT_TOOL_KEY,
            getattr(args, "keys_dir", None),
        )
    except (ConfigError, SecurityError) as exc:
        raise ToolError(str(exc)) from None
    use_keys(keys)
    return endpoints(config, getattr(args, "broker", None), getattr(args, "pub", None)), keys


def open_session(args: argparse.Namespace, kind: str) -> Session:
    """A session with the brain; exits with code 2 and the reason when the keys are wrong."""
    try:
        endpoints, keys = tool_setup(args)
    except ToolError as exc:
        raise SystemExit(fail(kind, exc, 2)) from None
    client = Client(tool_name(kind), endpoints.broker, keys=keys)
    return Session(endpoints=endpoints, client=client, timeout=args.timeout)


def fail(command: str, error: Exception, code: int = 1) -> int:
    print(f"llmo {command}: {error}", file=sys.stderr)
    return code
