"""The broker's route table: name -> connection, learned from the connections.

Theory of operation
-------------------
Peers do not choose their ZeroMQ routing identity: the ROUTER gives each
connection its own. The first accepted message of a connection claims a name
(its ``src``; with CurveZMQ, one its key owns, see ``broker.roles``), and from
then on that connection speaks only as that name. The table maps each name to
the one connection that holds it.

A claim for a name another connection holds is refused (``name_in_use``)
unless the holder is gone: silent past the liveness expiry, or no longer
connected at all (the broker finds that out when a send to it fails). Then
the newcomer takes over and the old connection is forgotten. A holder's
silence is counted from its own messages only: a refused newcomer's messages
do not keep the old route alive, nor does the old route's expiry wait on them.

Routes that stay silent for ``forget_after`` seconds (tools that left) are
dropped; the table never holds more than ``max_routes`` (the longest silent
goes first). Time arrives as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmo.broker.roles import Role

MAX_ROUTES = 10_000
FORGET_AFTER_S = 3600.0


@dataclass(slots=True)
class Route:
    name: str
    identity: bytes
    role: Role
    last_seen: float


@dataclass(slots=True)
class Routes:
    expiry: float
    forget_after: float = FORGET_AFTER_S
    max_routes: int = MAX_ROUTES
    by_name: dict[str, Route] = field(default_factory=dict)
    by_identity: dict[bytes, Route] = field(default_factory=dict)

    def of_connection(self, identity: bytes) -> Route | None:
        return self.by_identity.get(identity)

    def identity_of(self, name: str) -> bytes | None:
        route = self.by_name.get(name)
        return None if route is None else route.identity

    def holder(self, name: str, identity: bytes) -> Route | None:
        """The route of another connection that holds ``name``, if any."""
        route = self.by_name.get(name)
        return route if route is not None and route.identity != identity else None

    def expired(self, route: Route, now: float) -> bool:
        return now - route.last_seen > self.expiry

    def claim(self, name: str, identity: bytes, role: Role, now: float) -> Route:
        """Give ``name`` to the connection ``identity``; any previous holder is forgotten."""
        old = self.by_name.get(name)
        if old is not None:
            self.drop(old)
        if len(self.by_identity) >= self.max_routes:
            self.drop(min(self.by_identity.values(), key=lambda r: r.last_seen))
        route = Route(name=name, identity=identity, role=role, last_seen=now)
        self.by_name[name] = route
        self.by_identity[identity] = route
        return route

    def drop(self, route: Route) -> None:
        if self.by_name.get(route.name) is route:
            del self.by_name[route.name]
        if self.by_identity.get(route.identity) is route:
            del self.by_identity[route.identity]

    def forget_silent(self, now: float) -> list[Route]:
        """Drop routes silent for ``forget_after``; returns them."""
        gone = [r for r in self.by_identity.values() if now - r.last_seen > self.forget_after]
        for route in gone:
            self.drop(route)
        return gone
