"""Where the broker listens: flag, else environment, else the loopback default."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

DEFAULT_BROKER = "tcp://127.0.0.1:5555"
DEFAULT_PUB = "tcp://127.0.0.1:5556"
ENV_BROKER = "LLMO_BROKER"
ENV_PUB = "LLMO_PUB"

_ACTOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Endpoints:
    broker: str
    pub: str


def resolve(broker: str | None = None, pub: str | None = None) -> Endpoints:
    """The endpoints to use: explicit values win, then LLMO_BROKER / LLMO_PUB."""
    return Endpoints(
        broker=broker or os.environ.get(ENV_BROKER) or DEFAULT_BROKER,
        pub=pub or os.environ.get(ENV_PUB) or DEFAULT_PUB,
    )


def valid_actor_name(name: str) -> bool:
    """Actor names double as ZeroMQ identities and PUB topics: keep them plain."""
    return bool(_ACTOR_NAME.match(name))
