"""CurveZMQ on the broker, over real sockets on loopback: who gets in, what the wire shows.

Each refusal test runs a known, connected brain beside the intruder, so
"nothing arrived" means the broker refused, not that nothing was listening.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import pytest
import zmq

from llmo.broker.roles import Roles
from llmo.proto import BROKER, Heartbeat, TaskStarted, encode
from llmo.proto.messages import BRAIN, BatchCancel, SnapshotRequest
from llmo.proto.pubsub import Subscriber, topic
from llmo.proto.security import ClientKeys, ServerKeys, curve_available, generate
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(not curve_available(), reason="libzmq built without CURVE")

MARKER = "PLAINTEXT-MARKER-7f3e9c"


@pytest.fixture
def keys_dir(tmp_path) -> Path:
    folder = tmp_path / "keys"
    generate(folder, [BRAIN, "gpu-1", "pi"])
    return folder


@pytest.fixture
def curve_broker(broker_factory, keys_dir):
    # A short interval makes the broker read its handshake monitor often; the
    # long liveness keeps peer-down notices out of the brain's mailbox.
    return broker_factory(
        keys=ServerKeys.load(keys_dir),
        interval=0.2,
        liveness=100,
        roles=Roles(frozenset({"gpu-1"})),
    )


def client_keys(keys_dir: Path, name: str) -> ClientKeys:
    return ClientKeys.load(keys_dir, name)


def stranger_keys(keys_dir: Path, name: str = "intruder") -> ClientKeys:
    """A valid key pair that knows the broker's public key but is on no allow-list."""
    public, secret = zmq.curve_keypair()
    server = client_keys(keys_dir, "pi").server
    return ClientKeys(name=name, public=public, secret=secret, server=server)


def started(dst: str = BRAIN, marker: str = "") -> TaskStarted:
    return TaskStarted(dst=dst, batch_id="b1", task_id=marker or "t1", attempt_id="a1")


@pytest.fixture
def brain(client_factory, curve_broker, keys_dir):
    """An allow-listed brain whose route the broker knows: a worker's message reached it."""
    brain = client_factory(BRAIN, curve_broker.endpoint, keys=client_keys(keys_dir, BRAIN))
    gpu = client_factory("gpu-1", curve_broker.endpoint, keys=client_keys(keys_dir, "gpu-1"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        brain.send(Heartbeat(dst=BROKER))
        sent = gpu.send(started())
        got = brain.recv(timeout=0.2)
        if got is not None and got.id == sent.id:
            while brain.recv(timeout=0.3) is not None:
                pass  # let earlier tries land, so the broker's counts are settled
            return brain
    raise AssertionError("the allow-listed brain never got a message through")


def try_send(client, msg) -> None:
    """Send without blocking: a DEALER whose handshake never completed has no peer to queue to."""
    try:
        client.socket.send(encode(client.stamp(msg)), zmq.NOBLOCK)
    except zmq.Again:
        pass


def nothing_arrives(intruder, brain, seconds: float = 1.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try_send(intruder, started(marker="from-intruder"))
        got = brain.recv(timeout=0.05)
        assert got is None or got.src != intruder.name, "an unauthorised message reached the brain"
        assert intruder.recv(timeout=0.05) is None, "the broker answered an unauthorised peer"


# --- known keys ---------------------------------------------------------------------------


def test_a_known_key_routes_and_subscribes(curve_broker, brain, client_factory, keys_dir):
    pi = client_factory("submit-1", curve_broker.endpoint, keys=client_keys(keys_dir, "pi"))
    sent = pi.send(SnapshotRequest(dst=BRAIN, batch_id="hello-brain"))
    got = brain.recv(timeout=5)
    while got is not None and got.src == BROKER:  # the broker's peer.up for the newcomer
        got = brain.recv(timeout=5)
    # A tool with the Pi's key speaks as NAME@pi, and what it sends reaches the brain.
    assert got is not None and got.id == sent.id and got.src == "submit-1@pi"

    sub = Subscriber(
        curve_broker.pub_endpoint, topics=(topic("heartbeat"),), keys=client_keys(keys_dir, "pi")
    )
    try:
        received = None
        deadline = time.monotonic() + 5
        while received is None and time.monotonic() < deadline:
            brain.send(Heartbeat(dst=BROKER))
            received = sub.recv(timeout=0.1)
        assert received is not None, "an allow-listed subscriber got no publication"
        assert received.message.src == BRAIN
    finally:
        sub.close()


# --- refused peers --------------------------------------------------------------------------


def test_an_unknown_key_gets_nothing_through_and_is_logged(
    curve_broker, brain, client_factory, keys_dir, caplog
):
    caplog.set_level(logging.INFO, logger="llmo.broker")
    stranger = stranger_keys(keys_dir)
    routed = curve_broker.stats.routed
    intruder = client_factory("gpu-9", curve_broker.endpoint, keys=stranger)
    nothing_arrives(intruder, brain)
    assert curve_broker.stats.routed == routed
    assert wait_until(lambda: curve_broker.stats.refused["curve_unknown_key"] >= 1)
    refusals = [r.getMessage() for r in caplog.records if "not in the allow-list" in r.getMessage()]
    assert refusals, "the broker did not log the refused key"
    assert stranger.public.decode() in refusals[0] and "127.0.0.1" in refusals[0]


def test_a_client_without_keys_gets_nothing_through_and_is_logged(
    curve_broker, brain, client_factory, caplog
):
    caplog.set_level(logging.WARNING, logger="llmo.broker")
    routed = curve_broker.stats.routed
    intruder = client_factory("gpu-9", curve_broker.endpoint)
    assert intruder.keys is None
    nothing_arrives(intruder, brain)
    assert curve_broker.stats.routed == routed
    # A handshake the client abandons first is only counted as dropped; each new
    # keyless connection is another chance for the broker to see the mismatch.
    deadline = time.monotonic() + 20
    while curve_broker.stats.refused["curve_no_key"] < 1 and time.monotonic() < deadline:
        retry = client_factory("gpu-9", curve_broker.endpoint)
        try_send(retry, started(marker="from-intruder"))
        wait_until(lambda: curve_broker.stats.refused["curve_no_key"] >= 1, timeout=1)
    refused = dict(curve_broker.stats.refused)
    assert refused.get("curve_no_key", 0) >= 1, refused
    assert curve_broker.stats.routed == routed
    assert wait_until(
        lambda: any("without CurveZMQ keys" in r.getMessage() for r in caplog.records), timeout=20
    )


def test_a_client_with_the_wrong_broker_key_is_refused(
    curve_broker, brain, client_factory, keys_dir, caplog
):
    caplog.set_level(logging.WARNING, logger="llmo.broker")
    own = client_keys(keys_dir, "pi")
    wrong_server, _ = zmq.curve_keypair()
    keys = ClientKeys(name="pi", public=own.public, secret=own.secret, server=wrong_server)
    intruder = client_factory("submit-2", curve_broker.endpoint, keys=keys)
    nothing_arrives(intruder, brain)
    assert wait_until(lambda: curve_broker.stats.refused["curve_bad_handshake"] >= 1)
    assert any("handshake" in r.getMessage() for r in caplog.records)


def test_subscribers_without_an_allowed_key_get_no_publications(curve_broker, brain, keys_dir):
    good = Subscriber(curve_broker.pub_endpoint, keys=client_keys(keys_dir, "pi"))
    unknown = Subscriber(curve_broker.pub_endpoint, keys=stranger_keys(keys_dir))
    plain = Subscriber(curve_broker.pub_endpoint)
    try:
        got = None
        deadline = time.monotonic() + 5
        while got is None and time.monotonic() < deadline:
            brain.send(Heartbeat(dst=BROKER))
            got = good.recv(timeout=0.1)
        assert got is not None
        for _ in range(10):
            brain.send(Heartbeat(dst=BROKER))
        assert unknown.recv(timeout=0.5) is None
        assert plain.recv(timeout=0.2) is None
    finally:
        for sub in (good, unknown, plain):
            sub.close()


def test_removing_a_key_from_the_allow_list_revokes_it(
    curve_broker, brain, client_factory, keys_dir
):
    keys = client_keys(keys_dir, "pi")
    (keys_dir / "clients" / "pi.key").unlink()
    late = client_factory("submit-3", curve_broker.endpoint, keys=keys)
    nothing_arrives(late, brain)
    assert wait_until(lambda: curve_broker.stats.refused["curve_unknown_key"] >= 1)


# --- the wire ------------------------------------------------------------------------------


class TapProxy:
    """A TCP relay between a client and the broker that keeps every byte it forwards."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.captured = bytearray()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = [self.listener]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.captured += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        for s in self._sockets:
            s.close()


@pytest.mark.parametrize("curve", [False, True], ids=["plain-tcp", "curve"])
def test_the_wire_shows_no_plaintext_with_curve(curve, broker_factory, client_factory, keys_dir):
    if curve:
        running = broker_factory(keys=ServerKeys.load(keys_dir), interval=0.2, liveness=100)
        brain_keys, pi_keys = client_keys(keys_dir, BRAIN), client_keys(keys_dir, "pi")
    else:
        running = broker_factory(interval=0.2, liveness=100)
        brain_keys = pi_keys = None
    brain = client_factory(BRAIN, running.endpoint, keys=brain_keys)
    proxy = TapProxy(running.endpoint)
    try:
        sender = client_factory("submit-4", proxy.endpoint, keys=pi_keys)
        got = None
        sent = set()
        deadline = time.monotonic() + 5
        while got is None and time.monotonic() < deadline:
            brain.send(Heartbeat(dst=BROKER))
            sent.add(sender.send(BatchCancel(dst=BRAIN, batch_id="b1", reason=MARKER)).id)
            got = brain.recv(timeout=0.2)
            while got is not None and got.src == BROKER:  # peer.up, not the message
                got = brain.recv(timeout=0.2)
        assert got is not None and got.id in sent, "the message did not pass the proxy"
        with proxy._lock:
            wire = bytes(proxy.captured)
        assert len(wire) > 100
        # Without CURVE the capture shows the marker: proof the tap sees the payload.
        assert (MARKER.encode() in wire) is not curve
    finally:
        proxy.close()


def test_an_allowed_key_cannot_speak_as_an_actor_with_a_key_of_its_own(
    curve_broker, brain, client_factory, keys_dir
):
    pi_keys = client_keys(keys_dir, "pi")
    # The Pi's key connecting under the brain's worker's name (a raw source: the
    # client itself would speak as gpu-1@pi) and reporting as that worker: refused, named.
    impostor = client_factory("gpu-1", curve_broker.endpoint, keys=pi_keys)
    forged = TaskStarted(
        src="gpu-1", dst=BRAIN, id="forged-1", ts=1.0, batch_id="b1", task_id="t1", attempt_id="a1"
    )
    impostor.socket.send(encode(forged))
    reply = impostor.recv(timeout=5)
    assert reply is not None and reply.code == "spoofed_source", reply
    assert reply.reply_to == "forged-1"
    assert "'gpu-1' is the name of another CurveZMQ key" in reply.detail
    assert "'pi'" in reply.detail
    got = brain.recv(timeout=0.5)
    assert got is None or got.src != "gpu-1", "the forged report reached the brain"
    # The same key under a tool's name, which no key owns: routed.
    tool = client_factory("submit-1234", curve_broker.endpoint, keys=pi_keys)
    assert tool.name == "submit-1234@pi"
    sent = tool.send(SnapshotRequest(dst=BRAIN))
    got = brain.recv(timeout=5)
    while got is not None and got.src != tool.name:
        got = brain.recv(timeout=5)
    assert got is not None and got.id == sent.id
