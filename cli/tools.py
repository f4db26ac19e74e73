"""What the operator tools share: one short-lived client, clear failures.

A tool talks to the brain through the broker. Three things can go wrong and
each gets its own sentence, naming the endpoint that was tried:

- nothing comes back at all: the broker is not running or not reachable;
- the broker answers ``unknown_destination``: the broker runs, the brain is
  not connected to it;
- the brain refuses: its ``Ack``/``Error`` detail is shown as it is.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from proto.client import Client, tool_name
from proto.endpoints import Endpoints, resolve
from proto.errors import ErrorCode
from proto.messages import BRAIN, Ack, Error, Message

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
                "and is LLMO_BROKER / --broker right?"
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

    def close(self) -> None:
        self.client.close()


def add_tool_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for the brain (default {DEFAULT_TIMEOUT:g})",
    )


def open_session(args: argparse.Namespace, kind: str) -> Session:
    endpoints = resolve(getattr(args, "broker", None), getattr(args, "pub", None))
    client = Client(tool_name(kind), endpoints.broker)
    return Session(endpoints=endpoints, client=client, timeout=args.timeout)


def fail(command: str, error: Exception, code: int = 1) -> int:
    print(f"llmo {command}: {error}", file=sys.stderr)
    return code
