"""Where the broker listens: flag, else environment, else the loopback default.

The broker may bind a list of endpoints for each socket (``bind_list``:
``tcp://127.0.0.1:5555,tcp://10.8.0.1:5555``), each checked on its own;
processes on the same machine connect to its loopback one (``local_endpoint``).
"""

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


CONNECT_FORM = "tcp://HOST:PORT (or HOST:PORT), ipc://PATH or inproc://NAME"


def connect_endpoint(value: str, what: str = "endpoint") -> str:
    """An endpoint to connect to, checked before any socket sees it.

    ``HOST:PORT`` is taken as ``tcp://HOST:PORT``; a ``tcp://source;destination``
    pair passes as ZeroMQ reads it. Raises ``EndpointError`` naming ``what``
    (``--broker``, ``$LLMO_BROKER``, ...), the value and the form expected.
    """
    endpoint = value.strip()
    if endpoint and "://" not in endpoint:
        endpoint = f"tcp://{endpoint}"
    scheme, _, rest = endpoint.partition("://")
    problem = _problem(f"tcp://{rest.split(';')[-1]}" if scheme == "tcp" else endpoint)
    if not endpoint:
        problem = "it is empty"
    elif problem == "" and scheme == "tcp" and rest.rpartition(":")[2] == "*":
        problem = "a port * is only for binding"
    if problem:
        raise EndpointError(f"{what} {value!r} is not an endpoint: {problem}; use {CONNECT_FORM}")
    return endpoint


def connect_endpoints(endpoints: Endpoints, broker_from: str, pub_from: str) -> Endpoints:
    """Both endpoints checked by ``connect_endpoint``; ``*_from`` names where each came from."""
    return Endpoints(
        broker=connect_endpoint(endpoints.broker, broker_from),
        pub=connect_endpoint(endpoints.pub, pub_from),
    )


def valid_actor_name(name: str) -> bool:
    """Actor names double as ZeroMQ identities and PUB topics: keep them plain."""
    return bool(_ACTOR_NAME.match(name))


# --- lists of endpoints to bind --------------------------------------------------------------

TRANSPORTS = ("tcp", "ipc", "inproc")
_LIST_SEPARATOR = re.compile(r"[,;]")
_WILDCARD_HOSTS = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}


class EndpointError(ValueError):
    """An endpoint (or list) that cannot be bound as written; the text names it."""


def bind_list(value: str) -> list[str]:
    """The endpoints of a bind flag: one, or a list separated by ``,`` or ``;``.

    Each must be ``tcp://host:port`` (port ``*`` for any), ``ipc://path`` or
    ``inproc://name``. ZeroMQ's ``tcp://source;destination`` form is for
    connecting, so a bare ``host:port`` after ``;`` is refused here rather
    than half-bound. Raises ``EndpointError`` naming the first bad endpoint.
    """
    endpoints = [item.strip() for item in _LIST_SEPARATOR.split(value)]
    for endpoint in endpoints:
        problem = _problem(endpoint)
        if problem:
            where = f" (in the list {value!r})" if endpoint != value.strip() else ""
            raise EndpointError(f"cannot bind {endpoint or 'an empty endpoint'}{where}: {problem}")
    return endpoints


def _problem(endpoint: str) -> str:
    if not endpoint:
        return "empty endpoint in the list"
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return "not transport://address (a source;destination pair is only for connecting)"
    if scheme not in TRANSPORTS:
        return f"unknown transport {scheme!r} (use {', '.join(TRANSPORTS)})"
    if not rest:
        return "no address"
    if scheme != "tcp":
        return ""
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        return "tcp needs host:port (host may be an address, a name, an interface or *)"
    if port != "*" and not (port.isdigit() and 0 < int(port) < 65536):
        return f"port {port!r} is not 1-65535 or *"
    return ""


def local_endpoint(value: str) -> str:
    """Where a process on the broker's machine connects, given the broker's bind flag.

    The first loopback endpoint of the list, else the first; a wildcard host
    (``*``, ``0.0.0.0``, ``[::]``) becomes loopback. A single connectable
    endpoint (including the ``source;destination`` form) is returned as is.
    """
    try:
        endpoints = bind_list(value)
    except EndpointError:
        return value  # not a bind list: the connect will say what is wrong with it
    from llmo.proto.security import is_loopback

    chosen = next((e for e in endpoints if is_loopback(e)), endpoints[0])
    scheme, _, rest = chosen.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme == "tcp" and host in _WILDCARD_HOSTS:
        return f"tcp://{_WILDCARD_HOSTS[host]}:{port}"
    return chosen
