"""The broker's gate: CurveZMQ on its sockets, the ZAP allow-list, refusals logged.

Theory of operation
-------------------
With keys, the broker's ROUTER and PUB are CURVE servers: every byte on the
wire is encrypted, and a client must prove it holds the secret of a public
key. libzmq then asks the ZAP handler of the broker's context whether that
key may come in. The handler is pyzmq's ``ThreadAuthenticator`` (a thread of
its own) with ``AllowList`` as its credentials provider: a key is accepted
only if it is in ``clients/``, which is re-read when the folder changes, so
deleting ``clients/NAME.key`` revokes ``NAME`` without a restart. Each
refused key is logged with the peer's address. The authenticator is started
before the sockets bind: with no ZAP handler libzmq would take any key.

Clients that fail before ZAP (no keys at all, or the wrong broker key) never
reach it. A socket monitor on each socket reports those handshake failures;
``poll``, called from the broker's loop, logs and counts them in the
broker's ``refused`` counter. A peer retrying every 100 ms must not flood the
journal: each kind of refusal is logged at most once a minute per key (or
per socket), with the count of the ones not logged.
"""

from __future__ import annotations

import collections
import errno
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from llmo.proto.security import SecurityError, ServerKeys, allowed_keys

log = logging.getLogger("llmo.broker")

LOG_WINDOW_S = 60.0
_MAX_REMEMBERED = 1000  # refusal keys remembered for rate limiting

_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
# Handshake failures before ZAP: what they mean for an operator, and the counter.
_PROTOCOL_REASONS: dict[int, tuple[str, str]] = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: (
        "curve_no_key",
        "a client without CurveZMQ keys tried to connect",
    ),
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: (
        "curve_bad_handshake",
        "a client failed the CurveZMQ handshake (wrong broker public key, or not CURVE)",
    ),
}


class Quiet:
    """Logs a warning per key at most once per ``window_s``; counts the rest into the next."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = LOG_WINDOW_S):
        self._clock = clock
        self._window = window_s
        self._seen: dict[object, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def warn(self, key: object, text: str) -> bool:
        """Log ``text`` unless ``key`` was logged within the window; True if logged."""
        now = self._clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self._window:
                self._seen[key] = (last[0], last[1] + 1)
                return False
            if len(self._seen) >= _MAX_REMEMBERED:
                self._seen.clear()
            self._seen[key] = (now, 0)
        skipped = last[1] if last is not None else 0
        more = f" ({skipped} more like it not logged)" if skipped else ""
        log.warning("%s%s", text, more)
        return True


class AllowList:
    """ZAP credentials provider: only keys in ``clients/`` get in; the rest are logged."""

    def __init__(self, clients_dir: Path, quiet: Quiet) -> None:
        self.clients_dir = clients_dir
        self._quiet = quiet
        self._stamp = self._folder_stamp()
        self.keys = allowed_keys(clients_dir)  # a broken allow-list stops the broker here
        self.address = ""  # the peer of the request being answered (set by the authenticator)
        self._names_of: dict[bytes, str] | None = None
        self._names: frozenset[str] = frozenset()

    def _folder_stamp(self) -> int:
        try:
            return self.clients_dir.stat().st_mtime_ns
        except OSError:
            return -1

    def _current(self) -> dict[bytes, str]:
        stamp = self._folder_stamp()
        if stamp != self._stamp:
            try:
                self.keys = allowed_keys(self.clients_dir)
            except SecurityError as exc:
                log.error(
                    "allow-list %s not reloaded, keeping the last one: %s", self.clients_dir, exc
                )
            else:
                log.info("allow-list %s reloaded: %d keys", self.clients_dir, len(self.keys))
            self._stamp = stamp
        return self.keys

    def name_of(self, key: bytes) -> str | None:
        return self._current().get(key)

    def names(self) -> frozenset[str]:
        """The names of the allowed keys (checked per message: keep it cheap)."""
        keys = self.keys
        if keys is not self._names_of:
            self._names_of = keys
            self._names = frozenset(keys.values())
        return self._names

    def callback(self, domain: str, key: bytes) -> bool:
        name = self.name_of(key)
        if name is not None:
            log.info("CurveZMQ key of %r accepted from %s", name, self.address or "?")
            return True
        self._quiet.warn(
            ("key", key),
            f"refused a connection from {self.address or '?'}: CurveZMQ key "
            f"{key.decode('ascii', 'replace')} is not in the allow-list {self.clients_dir}",
        )
        return False


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, telling the allow-list which address is asking."""

    allow_list: AllowList | None = None

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if self.allow_list is not None:
            self.allow_list.address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    def curve_user_id(self, client_public_key: bytes) -> str:
        key = z85.encode(client_public_key)
        name = self.allow_list.name_of(key) if self.allow_list is not None else None
        return name or key.decode("ascii")


class CurveGuard:
    """CURVE for the broker's sockets; ``close`` before the context terminates."""

    def __init__(
        self,
        context: zmq.Context,
        keys: ServerKeys,
        refused: collections.Counter[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self._refused = refused
        self._quiet = Quiet(clock)
        self.allow_list = AllowList(keys.clients_dir, self._quiet)
        self._auth = _Authenticator(context, log=logging.getLogger("llmo.broker.zap"))
        self._auth.allow_list = self.allow_list
        self._auth.start()
        self._auth.configure_curve_callback("*", credentials_provider=self.allow_list)
        self._monitors: list[tuple[str, zmq.Socket, zmq.Socket]] = []

    def secure(self, socket: zmq.Socket, label: str) -> None:
        """Make ``socket`` a CURVE server and watch its handshakes; call before ``bind``."""
        self.keys.apply(socket)
        monitor = socket.get_monitor_socket(_HANDSHAKE_EVENTS)
        self._monitors.append((label, socket, monitor))

    def poll(self) -> None:
        """Log and count the handshake failures reported since the last call."""
        for label, _, monitor in self._monitors:
            while True:
                try:
                    frames = monitor.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    event = parse_monitor_message(frames)
                except (ValueError, zmq.ZMQError):
                    continue
                self._handshake_failed(label, event["event"], event["value"], event["endpoint"])

    def _handshake_failed(self, label: str, event: int, value: int, endpoint: bytes) -> None:
        where = endpoint.decode("utf-8", "replace")
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._refused["curve_unknown_key"] += 1  # the allow-list logged the key
            return
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            # The peer went away or went quiet mid-handshake (value: an errno), as
            # a refused client does when it gives up: worth a count, not a warning.
            self._refused["curve_handshake_dropped"] += 1
            reason = errno.errorcode.get(value, str(value))
            log.debug("a CurveZMQ handshake on %s %s ended early (%s)", label, where, reason)
            return
        counter, text = _PROTOCOL_REASONS.get(
            value, ("curve_handshake_failed", f"a CurveZMQ handshake failed (code {value:#x})")
        )
        self._refused[counter] += 1
        self._quiet.warn((label, counter), f"refused a connection on {label} {where}: {text}")

    def close(self) -> None:
        for _, socket, monitor in self._monitors:
            if not socket.closed:
                try:
                    socket.disable_monitor()
                except zmq.ZMQError:
                    pass
            monitor.close(linger=0)
        self._monitors.clear()
        self._auth.stop()
