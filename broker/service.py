"""The broker's socket loop: route by name, republish telemetry, watch liveness.

Theory of operation
-------------------
Every actor connects a DEALER; the ROUTER gives each connection a routing
identity of its own (peers do not choose it). A message arrives as
``[identity, body]``. The broker reads only the envelope
(``decode_envelope``). The first accepted message of a connection claims a
name for it (``broker.routes``): its ``src``, which with CurveZMQ must be a
name the connection's key owns (``broker.roles.key_owns``); a name another
live connection holds is refused with ``name_in_use``. After that every
message of the connection must carry that name as ``src``
(``spoofed_source`` otherwise) and be a type its role may send
(``broker.roles``, ``forbidden`` otherwise). The broker republishes
telemetry types on PUB and forwards the body untouched to the connection
that holds ``dst``; a send to a name no connection holds, or to one that is
gone, goes back to the sender as an ``Error`` naming the missing actor.
A request for ``supervisor`` (``llmo up``'s supervisor, ``broker.roles``) when
none is connected gets the same ``Error``; a broker started by systemd
(``systemd=True``, ``llmo broker --systemd`` in the unit that ``llmo systemd
install`` writes) says there that systemd restarts this rig's processes, and
how to restart a worker with ``systemctl``.

Anything malformed is answered with an ``Error`` (when there is a sender to
answer), counted, and logged at a bounded rate; the loop never stops for it.
Peer-supplied text is escaped in every log line (``broker.logsafe``).
``MAXMSGSIZE`` (twice the codec's limit) makes ZeroMQ drop a connection that
sends a frame big enough to hurt, before it is buffered.

Telemetry goes out on an XPUB socket that admits subscriptions within
limits (``broker.pub``): at most ``MAX_SUBSCRIPTIONS`` topics of at most
``MAX_TOPIC_BYTES`` per connection, frames over ``MAX_SUBSCRIPTION_FRAME``
dropped by ZeroMQ; excess subscriptions are ignored and counted, and a
connection that keeps sending them is cut. The loop reads subscriptions
between messages, at most every ``DRAIN_EVERY_S``.

Each of ``router_endpoint`` and ``pub_endpoint`` may be a list
(``proto.endpoints.bind_list``); each endpoint is checked and bound on its
own, and one that cannot be bound raises ``BindError`` naming it.

With ``keys`` both sockets speak CurveZMQ and admit only allow-listed client
keys (``broker.auth``); without keys a non-loopback bind is refused unless
``insecure`` (``proto.security.check_bind``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from llmo.broker import logsafe
from llmo.broker.auth import CurveGuard
from llmo.broker.liveness import Liveness
from llmo.broker.logsafe import shown
from llmo.broker.pub import DRAIN_EVERY_S, SubscriptionGate
from llmo.broker.roles import HEARTBEAT_ROLES, KEY_SEPARATOR, Role, Roles, key_owns, refusal
from llmo.broker.routes import Route, Routes
from llmo.proto.codec import MAX_MESSAGE_BYTES, Envelope, decode, decode_envelope, encode
from llmo.proto.endpoints import bind_list, valid_actor_name
from llmo.proto.errors import ErrorCode, ProtocolError
from llmo.proto.messages import (
    BRAIN,
    BROKER,
    PUBLISHED_TYPES,
    SUPERVISOR,
    Error,
    Heartbeat,
    Message,
    MsgType,
    PeerDown,
    PeerUp,
)
from llmo.proto.pubsub import pub_frames
from llmo.proto.security import SecurityError, ServerKeys, check_bind
from llmo.proto.vocab import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS

log = logging.getLogger("llmo.broker")
logsafe.install("llmo.broker", "llmo.broker.zap")

HWM = 100_000
# Plain ints: combining zmq's flag enums costs more than the send itself.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
LOG_LIMIT = 20  # malformed-input log lines per minute; the rest are counted
IDLE_WAKE_S = 0.05  # an idle loop wakes this often to read new subscriptions


SYSTEMD_NO_SUPERVISOR = (
    "this rig runs as systemd units, not under `llmo up`: there is no supervisor to ask. "
    "systemd restarts a unit that fails (at most 6 times in 300 s, then leaves it failed). "
    "See a worker with `systemctl status llmo-worker@NAME` and `journalctl -u llmo-worker@NAME`; "
    "restart it with `sudo systemctl reset-failed llmo-worker@NAME && "
    "sudo systemctl restart llmo-worker@NAME`"
)


class BindError(OSError):
    """An endpoint the broker cannot bind (in use, no such interface, malformed)."""


@dataclass(slots=True)
class BrokerStats:
    routed: int = 0
    published: int = 0
    errors_sent: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)

    def summary(self) -> str:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(self.refused.items())) or "none"
        return (
            f"routed {self.routed}, published {self.published}, "
            f"errors sent {self.errors_sent}, refused: {refused}"
        )


class Broker:
    def __init__(
        self,
        router_endpoint: str,
        pub_endpoint: str,
        *,
        interval: float = HEARTBEAT_INTERVAL_S,
        liveness: int = HEARTBEAT_LIVENESS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        keys: ServerKeys | None = None,
        insecure: bool = False,
        roles: Roles | None = None,
        systemd: bool = False,
    ) -> None:
        router_binds = bind_list(router_endpoint)
        pub_binds = bind_list(pub_endpoint)
        check_bind(router_binds + pub_binds, keys, insecure=insecure)
        self.stats = BrokerStats()
        self.context = zmq.Context()
        self.guard: CurveGuard | None = None
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.MAXMSGSIZE, 2 * MAX_MESSAGE_BYTES)
        self.router.setsockopt(zmq.SNDHWM, HWM)
        self.router.setsockopt(zmq.RCVHWM, HWM)
        self.subscriptions = SubscriptionGate(self.context, self.stats.refused, clock)
        self.pub = self.subscriptions.socket
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, HWM)
        try:
            if keys is not None:
                self.guard = CurveGuard(self.context, keys, self.stats.refused, clock)
                self.guard.secure(self.router, "ROUTER")
                self.guard.secure(self.pub, "PUB")
            self.router_endpoints = _bind(self.router, "ROUTER", router_binds)
            self.pub_endpoints = _bind(self.pub, "PUB", pub_binds)
        except (SecurityError, BindError):
            self.close()
            raise
        self.router_endpoint = self.router_endpoints[0]
        self.pub_endpoint = self.pub_endpoints[0]
        self.liveness = Liveness(interval=interval, liveness=liveness)
        self.roles = roles or Roles()
        self.systemd = systemd
        self.routes = Routes(expiry=self.liveness.expiry)
        self._probed: dict[str, float] = {}  # name -> when its holder was last probed
        self._clock = clock
        self._wall_clock = wall_clock
        self._seq = 0
        self._ids = 0
        self._running = False
        self._log_window = 0.0
        self._logged = 0
        self._suppressed = 0

    # --- the loop ----------------------------------------------------------------

    def run(self, *, install_signals: bool = False) -> int:
        """Route until ``stop()`` (or SIGINT/SIGTERM when ``install_signals``)."""
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop())
        self._running = True
        log.info(
            "broker routing on %s, publishing on %s (liveness %d x %.1fs)",
            ", ".join(self.router_endpoints),
            ", ".join(self.pub_endpoints),
            self.liveness.liveness,
            self.liveness.interval,
        )
        log.info("roles: %s", self.roles.describe())
        if self.guard is not None:
            if self.roles.by_rule:
                log.warning(
                    "CurveZMQ on but no worker names configured: any allowed key may register "
                    "as a worker. Give the broker its workers (--config with [[workers]], or "
                    "--worker NAME)"
                )
            log.info(
                "CurveZMQ on: %d client keys allowed from %s",
                len(self.guard.allow_list.keys),
                self.guard.allow_list.clients_dir,
            )
        else:
            log.info("CurveZMQ off: plain TCP")
        # A blocking receive with a timeout costs one system call per message;
        # poll() followed by a non-blocking drain costs two and an exception.
        router = self.router
        guard = self.guard
        wake_ms = min(self.liveness.interval / 4, IDLE_WAKE_S) * 1000
        router.setsockopt(zmq.RCVTIMEO, max(10, int(wake_ms)))
        next_check = self._clock() + self.liveness.interval / 2
        next_drain = 0.0
        try:
            while self._running:
                try:
                    if guard is None:
                        frames = router.recv_multipart()
                        key_name = None
                    else:  # the frames carry the name of the key their peer connected with
                        parts = router.recv_multipart(copy=False)
                        user = parts[-1].get("User-Id")
                        key_name = user if isinstance(user, str) else None
                        frames = [part.bytes for part in parts]
                except zmq.Again:
                    idle = True
                else:
                    idle = False
                    try:
                        self.handle(frames, key_name)
                    except Exception:  # a bug here must not stop all routing
                        self.stats.refused["internal_error"] += 1
                        log.exception("broker: internal error handling a message; still routing")
                now = self._clock()
                if now >= next_drain:
                    self.subscriptions.drain()
                    next_drain = now + DRAIN_EVERY_S
                # Liveness is judged once the socket is drained (or, under a flood,
                # an interval late): what queued while the loop stood still counts.
                if now >= next_check and (idle or now >= next_check + self.liveness.interval):
                    self.check_liveness(now)
                    self.subscriptions.prune()
                    if self.guard is not None:
                        self.guard.poll()
                    next_check = now + self.liveness.interval / 2
        finally:
            log.info("broker stopping: %s", self.stats.summary())
            self.close()
        return 0

    def stop(self) -> None:
        self._running = False

    def close(self) -> None:
        if self.guard is not None:
            self.guard.close()
        self.router.close(linger=0)
        self.subscriptions.close()
        self.context.term()

    # --- one inbound message ---------------------------------------------------------

    def handle(self, frames: list[bytes], key_name: str | None = None) -> None:
        """Route one message; ``key_name`` names the CurveZMQ key its peer used."""
        identity = frames[0]
        if len(frames) != 2:
            self._refuse(identity, ErrorCode.BAD_FRAMES, f"expected 1 frame, got {len(frames) - 1}")
            return
        body = frames[1]
        try:
            env = decode_envelope(body)
        except ProtocolError as exc:
            self._refuse(identity, exc.code, exc.detail)
            return
        now = self._clock()
        route = self.routes.of_connection(identity)
        if route is None:
            route = self._admit(identity, env, key_name, now)
            if route is None:
                return
        elif env.src != route.name:
            self._refuse(
                identity,
                ErrorCode.SPOOFED_SOURCE,
                f"message {env.id!r} claims source {env.src!r}, but this connection "
                f"speaks as {route.name!r}",
                reply_to=env.id,
            )
            return
        route.last_seen = now
        why = self._forbidden(route, env, body)
        if why is not None:
            self._refuse(identity, ErrorCode.FORBIDDEN, f"{route.name!r}: {why}", reply_to=env.id)
            return
        sender = route.name
        is_heartbeat = env.type is MsgType.HEARTBEAT
        if self.liveness.seen(sender, now, heartbeat=is_heartbeat):
            self._peer_event(PeerUp(peer=sender))
        if env.type in PUBLISHED_TYPES:
            self._publish(env.type, sender, body)
        if env.dst == BROKER:
            if not is_heartbeat and env.type not in PUBLISHED_TYPES:
                self._refuse(
                    identity,
                    ErrorCode.UNEXPECTED,
                    f"the broker takes heartbeats and telemetry, not {env.type.value!r}",
                    reply_to=env.id,
                )
            return
        self._route(identity, env.dst, body, env.id, env.type)

    # --- names and roles ---------------------------------------------------------------

    def _admit(
        self, identity: bytes, env: Envelope, key_name: str | None, now: float
    ) -> Route | None:
        """Give a new connection the name its first message claims, or refuse it."""
        name = env.src
        if not valid_actor_name(name) or name == BROKER:
            self._refuse(
                identity,
                ErrorCode.BAD_FIELD,
                f"source {shown(name)} is not an actor name (letters, digits, '_.@-', "
                "at most 64, and not 'broker')",
                reply_to=env.id,
            )
            return None
        if key_name is not None and not key_owns(key_name, name, self.roles):
            self._refuse(
                identity,
                ErrorCode.SPOOFED_SOURCE,
                f"{self._whose(name)}this connection holds the CurveZMQ key of {key_name!r}: "
                f"it speaks as {key_name!r} (a tool key also as 'NAME{KEY_SEPARATOR}{key_name}'), "
                f"not as {name!r}",
                reply_to=env.id,
            )
            return None
        holder = self.routes.holder(name, identity)
        if holder is not None:
            silent = now - holder.last_seen
            if self.routes.expired(holder, now):
                why = f"silent {silent:.1f}s"
            elif not self._still_connected(holder, now):
                why = "disconnected"
            else:
                self._refuse(
                    identity,
                    ErrorCode.NAME_IN_USE,
                    f"{name!r} is held by another live connection (heard {silent:.1f}s ago); "
                    f"a second one is refused until the first is gone or silent "
                    f"{self.routes.expiry:g}s",
                    reply_to=env.id,
                )
                return None
            log.warning("%r moves to a new connection; the old one is %s", name, why)
        self._probed.pop(name, None)
        route = self.routes.claim(name, identity, self.roles.of(name), now)
        if key_name is not None:
            log.info("%r connected (key %r, role %s)", name, key_name, route.role.value)
        else:
            log.debug("%r connected (role %s)", name, route.role.value)
        return route

    def _whose(self, name: str) -> str:
        """Why a claim for ``name`` names someone else: the start of a refusal's detail."""
        owner = name.rpartition(KEY_SEPARATOR)[2]
        if self.guard is not None and owner in self.guard.allow_list.names():
            return f"{owner!r} is the name of another CurveZMQ key; "
        return ""

    def _still_connected(self, holder: Route, now: float) -> bool:
        """Whether ``holder``'s connection is still there. Tells it (at most once per
        interval) that its name was claimed: the send fails if it is gone."""
        last = self._probed.get(holder.name)
        if last is not None and now - last < self.liveness.interval:
            return True
        self._probed[holder.name] = now
        notice = Error(
            code=ErrorCode.NAME_IN_USE,
            detail=f"another connection claimed the name {holder.name!r}; "
            "it was refused while this one is live",
        )
        try:
            self.router.send(holder.identity, _MORE_NOBLOCK)
            self.router.send(encode(self._stamp(notice, holder.name)), _NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                return True  # there, but not reading: still the holder
            self.routes.drop(holder)
            return False
        return True

    def _forbidden(self, route: Route, env: Envelope, body: bytes) -> str | None:
        """Why ``route``'s role may not send this message; None when it may."""
        kind = env.type
        if kind is MsgType.REGISTER and route.role is Role.TOOL:
            if not self.roles.may_register(route.name):
                return f"{route.name!r} is not a configured worker, so it cannot register"
            route.role = Role.WORKER  # by rule: a name that registers is a worker
            log.info("%r registered: role worker", route.name)
        why = refusal(route.role, kind, env.dst)
        if why is None and kind is MsgType.HEARTBEAT and route.role is not Role.WORKER:
            try:
                beat = decode(body)
            except ProtocolError as exc:
                return f"unreadable heartbeat: {exc}"
            if isinstance(beat, Heartbeat) and beat.role not in HEARTBEAT_ROLES[route.role]:
                return f"a {route.role.value} may not heartbeat as a {beat.role!r}"
        return why

    def _route(self, identity: bytes, dst: str, body: bytes, msg_id: str, kind: MsgType) -> None:
        target = self.routes.identity_of(dst)
        try:
            if target is None:
                raise zmq.ZMQError(zmq.EHOSTUNREACH)
            # With ROUTER_MANDATORY the identity frame fails for a connection that is gone.
            self.router.send(target, _MORE_NOBLOCK)
            self.router.send(body, _NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH and target is not None:
                route = self.routes.of_connection(target)
                if route is not None:
                    self.routes.drop(route)
            if kind is MsgType.ERROR:
                self.stats.refused["undeliverable_error"] += 1
                return  # never answer an error with an error
            if exc.errno == zmq.EHOSTUNREACH:
                missing = f"no actor named {dst!r} is connected"
                if dst == SUPERVISOR and self.systemd:
                    missing = SYSTEMD_NO_SUPERVISOR
                self._refuse(
                    identity,
                    ErrorCode.UNKNOWN_DESTINATION,
                    missing,
                    reply_to=msg_id,
                    peer=dst,
                )
            elif exc.errno == zmq.EAGAIN:
                self._refuse(
                    identity,
                    ErrorCode.DESTINATION_BUSY,
                    f"{dst!r} is not reading its messages (queue full)",
                    reply_to=msg_id,
                    peer=dst,
                )
            else:
                raise
        else:
            self.stats.routed += 1

    # --- liveness and publishing --------------------------------------------------------

    def check_liveness(self, now: float) -> None:
        jumped = self.liveness.jumped
        gone = self.liveness.expire(now)
        if self.liveness.jumped != jumped:
            log.warning(
                "the broker stood still for %.1fs (paused, or the clock jumped): peers get "
                "fresh heartbeats' time before they are judged silent",
                self.liveness.jumped,
            )
        for peer, silent in gone:
            log.warning("peer %r is down (silent %.1fs)", peer, silent)
            self._peer_event(PeerDown(peer=peer, silent_s=round(silent, 3)))
        for route in self.routes.forget_silent(now):
            self._probed.pop(route.name, None)
            log.debug("forgot the route of %r (silent)", route.name)

    def _peer_event(self, msg: PeerUp | PeerDown) -> None:
        if isinstance(msg, PeerUp):
            log.info("peer %r is up", msg.peer)
        body = encode(self._stamp(msg, BRAIN))
        self._publish(msg.TYPE, BROKER, body)
        brain = self.routes.identity_of(BRAIN)
        if msg.peer == BRAIN or brain is None:
            return  # with no brain connected the publication is all there is
        with contextlib.suppress(zmq.ZMQError):
            self.router.send_multipart([brain, body], zmq.NOBLOCK)

    def _publish(self, kind: MsgType, source: str, body: bytes) -> None:
        self._seq += 1
        try:
            self.pub.send_multipart(pub_frames(kind.value, source, self._seq, body), zmq.NOBLOCK)
        except zmq.Again:
            return  # a PUB drops at its high-water mark; subscribers see the gap
        self.stats.published += 1

    # --- errors ----------------------------------------------------------------------

    def _stamp(self, msg: Message, dst: str) -> Message:
        self._ids += 1
        return dataclasses.replace(
            msg, src=BROKER, dst=dst, id=f"broker-{self._ids}", ts=self._wall_clock()
        )

    def _refuse(
        self,
        identity: bytes,
        code: ErrorCode,
        detail: str,
        *,
        reply_to: str = "",
        peer: str = "",
    ) -> None:
        self.stats.refused[code.value] += 1
        route = self.routes.of_connection(identity)
        sender = route.name if route is not None else ""
        self._log_refusal(
            shown(sender) if sender else f"connection {shown(identity)}", code, detail
        )
        error = Error(code=code, detail=detail, reply_to=reply_to, peer=peer)
        try:
            self.router.send_multipart([identity, encode(self._stamp(error, sender))], zmq.NOBLOCK)
        except zmq.ZMQError:
            return  # the sender is gone or not reading; the count and log remain
        self.stats.errors_sent += 1

    def _log_refusal(self, sender: str, code: ErrorCode, detail: str) -> None:
        now = self._clock()
        if now - self._log_window >= 60.0:
            if self._suppressed:
                log.warning("%d more refusals in the last minute not logged", self._suppressed)
            self._log_window = now
            self._logged = 0
            self._suppressed = 0
        if self._logged < LOG_LIMIT:
            self._logged += 1
            log.warning("refused input from %s: %s: %s", sender, code.value, detail[:300])
        else:
            self._suppressed += 1


def _bind(sock: zmq.Socket, label: str, endpoints: list[str]) -> list[str]:
    """Bind each endpoint; the endpoints as bound (a ``*`` port resolved)."""
    bound = []
    for endpoint in endpoints:
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise BindError(
                f"cannot bind the {label} endpoint {endpoint}: {zmq.strerror(exc.errno or 0)}"
            ) from exc
        bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    return bound
