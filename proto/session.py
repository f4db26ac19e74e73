"""A request session with the brain: one request, its reply or a clear failure.

An operator's tool (a command, the monitor) asks the brain through the broker.
Three things can go wrong and each gets its own sentence, naming the endpoint
that was tried:

- nothing comes back at all: the broker is not running or not reachable;
- the broker answers ``unknown_destination``: the broker runs, the brain is
  not connected to it;
- the brain refuses: its ``Ack``/``Error`` detail is shown as it is.

A request for ``llmo up``'s supervisor (``supervisor``) that the broker cannot
deliver says that no ``llmo up`` supervises the rig: the broker's own sentence
when it knows the rig runs under systemd (``llmo broker --systemd``), else
``NO_SUPERVISOR`` with both possibilities.

The session sends through a ``Requester``: a ``proto.client.Client``, or
anything else that sends a request and waits for its reply the same way (the
monitor's requester gives up as soon as the monitor quits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llmo.proto.endpoints import Endpoints
from llmo.proto.errors import ErrorCode
from llmo.proto.messages import BRAIN, SUPERVISOR, Ack, Error, Message
from llmo.proto.security import ClientKeys, is_loopback

NO_SUPERVISOR = (
    "no `llmo up` supervisor is connected to the broker at {broker}: the rig runs without "
    "`llmo up` (under systemd, systemd restarts the units: `sudo systemctl reset-failed "
    "llmo-worker@NAME && sudo systemctl restart llmo-worker@NAME`), or its `llmo up` has no "
    "'supervisor' key (see its output)"
)


class ToolError(Exception):
    """A tool could not do its job; the message is for the operator."""


class Requester(Protocol):
    """What a session sends through; ``proto.client.Client`` is one."""

    @property
    def keys(self) -> ClientKeys | None:
        """The CurveZMQ keys the requests go out with (None: plain)."""
        ...

    def request(self, msg: Message, timeout: float) -> Message | None:
        """Send ``msg``; its reply, or None when none came within ``timeout`` seconds."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Session:
    endpoints: Endpoints
    client: Requester
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
            if reply.code == ErrorCode.UNKNOWN_DESTINATION and reply.peer == SUPERVISOR:
                if "systemd" in reply.detail:
                    raise ToolError(reply.detail)
                raise ToolError(NO_SUPERVISOR.format(broker=self.endpoints.broker))
            raise ToolError(f"{reply.code}: {reply.detail}")
        return reply

    def control(self, msg: Message) -> str:
        """Send a control request; return the answer's detail, raise if it refused."""
        reply = self.ask(msg)
        if isinstance(reply, Ack):
            if not reply.ok:
                raise ToolError(reply.detail or f"{reply.src or 'the brain'} refused the request")
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
