"""CurveZMQ keys: where they live, how they are made and loaded, and when they are required.

Theory of operation
-------------------
One folder (``llmo keys generate DIR``) holds every key of a deployment::

    DIR/broker.key            the broker's public key: every client needs it
    DIR/broker.key_secret     the broker's key pair (the rig only)
    DIR/clients/NAME.key      the allow-list: public keys the broker accepts
    DIR/NAME.key_secret       a client's key pair: ``brain`` and each worker
                              on the rig, ``pi`` for the tools on the Pi

The files use the ZeroMQ certificate format (``zmq.auth.load_certificate``
reads them); a ``*.key_secret`` file is created with mode 0600 and refused
when others may read it. Removing ``clients/NAME.key`` revokes ``NAME``:
the broker re-reads the allow-list whenever the folder changes.

A client's sockets get its key pair and the broker's public key before they
connect (``ClientKeys.apply``). Actors and tools construct their ``Client``
and ``Subscriber`` deep inside their services, so the keys of a process are
set once at start-up with ``use_keys``; sockets made without explicit keys
take those, else the pair named by ``$LLMO_KEY`` (default ``pi``) in
``$LLMO_KEYS_DIR``, else none (plain TCP, fine on loopback).

``check_bind`` is the rule for the broker: binding an address other than
loopback (or ipc/inproc) without keys is refused unless the operator says
``--insecure``.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

BROKER_KEY = "broker"
CLIENTS_DIR = "clients"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
DEFAULT_TOOL_KEY = "pi"
ENV_KEYS_DIR = "LLMO_KEYS_DIR"
ENV_KEY = "LLMO_KEY"


class SecurityError(Exception):
    """Keys missing, unreadable or too open, or an unsafe bind; the text says what to do."""


def curve_available() -> bool:
    return bool(zmq.has("curve"))


# --- files -----------------------------------------------------------------------------


def _certificate(public: bytes, secret: bytes | None, name: str) -> str:
    kind = "secret key pair" if secret else "public key"
    lines = [
        f"#   llmo CurveZMQ {kind} of {name!r}, made {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
    ]
    if secret:
        lines.append("#   Keep this file private (mode 0600): whoever holds it speaks as " + name)
    lines += [
        "",
        "metadata",
        f"    name = {name}",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to a new file created with ``mode`` (never briefly wider)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; never widened
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def generate(keys_dir: str | Path, names: list[str], *, force: bool = False) -> dict[str, str]:
    """Make the broker's pair and one per client name; returns ``{name: "created"|"kept"}``.

    Existing pairs are kept (run it again after adding a worker), unless ``force``.
    """
    if not curve_available():
        raise SecurityError("this libzmq has no CURVE support (zmq.has('curve') is False)")
    root = Path(keys_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    (root / CLIENTS_DIR).mkdir(mode=0o755, exist_ok=True)
    done: dict[str, str] = {}
    for name in [BROKER_KEY, *dict.fromkeys(n for n in names if n != BROKER_KEY)]:
        secret_path = root / f"{name}{SECRET_SUFFIX}"
        public_dir = root if name == BROKER_KEY else root / CLIENTS_DIR
        public_path = public_dir / f"{name}{PUBLIC_SUFFIX}"
        if secret_path.exists() and not force:
            _load_pair(secret_path)  # a damaged or too open file is reported, not kept quietly
            done[name] = "kept"  # an allow-list entry removed by hand stays removed
            continue
        public, secret = zmq.curve_keypair()
        _write(secret_path, _certificate(public, secret, name), 0o600)
        _write(public_path, _certificate(public, None, name), 0o644)
        done[name] = "created"
    return done


def _load_pair(path: Path) -> tuple[bytes, bytes]:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SecurityError(f"no key pair at {path}") from None
    if info.st_mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise SecurityError(
            f"{path} may be read or changed by others (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run: chmod 600 {path}"
        )
    public, secret = _read_certificate(path)
    if not secret:
        raise SecurityError(f"{path} holds no secret key")
    return public, secret


def _read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"cannot read the key file {path}: {exc}") from None
    if not public or len(public) != 40:
        raise SecurityError(f"{path} holds no valid public key")
    return public, secret


def allowed_keys(clients_dir: str | Path) -> dict[bytes, str]:
    """The allow-list: ``{z85 public key: client name}`` from ``clients/*.key``."""
    keys: dict[bytes, str] = {}
    for path in sorted(Path(clients_dir).glob(f"*{PUBLIC_SUFFIX}")):
        public, _ = _read_certificate(path)
        keys[public] = path.name[: -len(PUBLIC_SUFFIX)]
    return keys


# --- key sets ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """The broker's key pair and the folder of client public keys it accepts."""

    public: bytes
    secret: bytes
    clients_dir: Path

    @classmethod
    def load(cls, keys_dir: str | Path) -> ServerKeys:
        root = Path(keys_dir)
        public, secret = _load_pair(root / f"{BROKER_KEY}{SECRET_SUFFIX}")
        clients = root / CLIENTS_DIR
        if not clients.is_dir():
            raise SecurityError(f"no allow-list folder {clients} (run `llmo keys generate`)")
        return cls(public=public, secret=secret, clients_dir=clients)

    def apply(self, socket: zmq.Socket[Any]) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """One client's key pair and the broker's public key."""

    name: str
    public: bytes
    secret: bytes
    server: bytes

    @classmethod
    def load(cls, keys_dir: str | Path, name: str) -> ClientKeys:
        root = Path(keys_dir)
        secret_path = root / f"{name}{SECRET_SUFFIX}"
        if not secret_path.exists():
            raise SecurityError(
                f"no key pair for {name!r} in {root}: expected {secret_path} "
                f"(run `llmo keys generate {root} --name {name}` and copy it here)"
            )
        public, secret = _load_pair(secret_path)
        server_path = root / f"{BROKER_KEY}{PUBLIC_SUFFIX}"
        if not server_path.exists():
            raise SecurityError(f"no broker public key {server_path} (copy it from the rig)")
        server, _ = _read_certificate(server_path)
        return cls(name=name, public=public, secret=secret, server=server)

    def apply(self, socket: zmq.Socket[Any]) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_serverkey = self.server


# --- the keys of this process ---------------------------------------------------------------

_process_keys: ClientKeys | None = None
_env_keys: tuple[tuple[str, str], ClientKeys] | None = None


def use_keys(keys: ClientKeys | None) -> None:
    """Set the keys this process's clients and subscribers use (None: back to the default)."""
    global _process_keys
    _process_keys = keys


def process_keys() -> ClientKeys | None:
    """The keys set by ``use_keys``, else those named by $LLMO_KEYS_DIR / $LLMO_KEY, else None."""
    global _env_keys
    if _process_keys is not None:
        return _process_keys
    keys_dir = os.environ.get(ENV_KEYS_DIR, "")
    if not keys_dir:
        return None
    wanted = (keys_dir, os.environ.get(ENV_KEY) or DEFAULT_TOOL_KEY)
    if _env_keys is None or _env_keys[0] != wanted:
        _env_keys = (wanted, ClientKeys.load(*wanted))
    return _env_keys[1]


def secure_client(socket: zmq.Socket[Any], keys: ClientKeys | None) -> ClientKeys | None:
    """Give ``socket`` the keys (or the process's); call before ``connect``."""
    keys = keys if keys is not None else process_keys()
    if keys is not None:
        keys.apply(socket)
    return keys


# --- binding ---------------------------------------------------------------------------------


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1, localhost or lo."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.split(";")[-1]  # "source;dest" form: the address that is bound
    host = host.strip("[]")
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # *, an interface name or a host name


def check_bind(endpoints: list[str], keys: ServerKeys | None, *, insecure: bool) -> None:
    """Refuse to bind a non-loopback address in plain text unless ``insecure``."""
    if keys is not None or insecure:
        return
    exposed = [e for e in endpoints if not is_loopback(e)]
    if exposed:
        raise SecurityError(
            f"refusing to bind {', '.join(exposed)} without CurveZMQ keys: anyone on that "
            "network could send tasks. Set [security] keys_dir in llmo.toml (or --keys-dir) to "
            "the folder made by `llmo keys generate`, or pass --insecure to bind in plain text"
        )
