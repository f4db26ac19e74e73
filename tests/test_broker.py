"""The broker, over real sockets on loopback with random ports."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import msgpack
import pytest
import zmq

from llmo.broker.roles import Roles
from llmo.proto import (
    BRAIN,
    BROKER,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ErrorCode,
    Heartbeat,
    PeerDown,
    PeerUp,
    TaskCancel,
    TaskStarted,
    encode,
)
from llmo.proto.messages import Error
from llmo.proto.pubsub import Subscriber, topic
from tests.waiting import WAIT_S, wait_for


def started(task: str = "t1", dst: str = BRAIN) -> TaskStarted:
    return TaskStarted(dst=dst, batch_id="b1", task_id=task, attempt_id="a1")


@pytest.fixture
def running_broker(broker_factory):
    """A broker whose workers are gpu-1, gpu-2 and gpu-10; ``brain`` is the brain."""
    return broker_factory(roles=Roles(frozenset({"gpu-1", "gpu-2", "gpu-10"})))


@pytest.fixture
def raw_dealer(zmq_context):
    """A bare DEALER that can send anything at all, closed at teardown."""
    sockets = []

    def make(endpoint: str, identity: bytes | None) -> zmq.Socket:
        sock = zmq_context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    yield make
    for sock in sockets:
        sock.close(linger=0)


def wait_routable(sender, receiver_name: str, timeout: float = 5.0) -> None:
    """Wait until the broker knows ``receiver_name`` (its first message arrived)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = sender.request(Heartbeat(dst=receiver_name), timeout=0.2)
        if reply is None:
            return  # no error came back: the heartbeat was routed
        assert isinstance(reply, Error)
    raise AssertionError(f"{receiver_name} never became routable")


def subscribed(sender, *subs: Subscriber, timeout: float = WAIT_S) -> None:
    """Wait until every one of ``subs`` gets ``sender``'s heartbeats through the broker.

    A SUB misses what is published before its subscription reaches the PUB
    socket, so ``sender`` heartbeats numbered probes until each subscriber has
    read the latest: none is then left in flight, and the test starts clean.
    Later reads see only what the test sends after this.
    """

    def reads_up_to(sub: Subscriber, mark: str) -> bool:
        while (published := sub.recv(timeout=0.05)) is not None:
            if getattr(published.message, "model", None) == mark:
                return True
        return False

    probe = 0

    def all_read_a_fresh_probe() -> bool:
        nonlocal probe
        probe += 1
        mark = f"probe-{probe}"
        sender.send(Heartbeat(dst=BROKER, model=mark))
        return all([reads_up_to(sub, mark) for sub in subs])

    wait_for(all_read_a_fresh_probe, timeout, "the subscriptions to reach the broker", poll_s=0)


def drain(client, timeout=0.3):
    out = []
    while (msg := client.recv(timeout)) is not None:
        out.append(msg)
    return out


def test_two_actors_exchange_messages(running_broker, client_factory):
    a = client_factory("gpu-1", running_broker.endpoint)
    b = client_factory(BRAIN, running_broker.endpoint)
    b.send(Heartbeat(dst=BROKER))  # b's first message makes its route known
    running_broker.wait_heard(BRAIN)
    sent = a.send(started())
    got = b.recv(timeout=5)
    while isinstance(got, PeerUp):
        got = b.recv(timeout=5)
    assert got == sent
    reply = b.send(TaskCancel(dst="gpu-1", batch_id="b1", task_id="back", attempt_id="a2"))
    assert a.recv(timeout=5) == reply
    wait_for(lambda: running_broker.stats.routed >= 2, 5, "the broker to count both messages")
    assert running_broker.stats.routed == 2


def test_unknown_destination_names_the_missing_actor(running_broker, client_factory):
    a = client_factory(BRAIN, running_broker.endpoint)
    reply = a.request(TaskCancel(dst="nobody", batch_id="b", task_id="t", attempt_id="a"), 5)
    assert isinstance(reply, Error)
    assert reply.code == ErrorCode.UNKNOWN_DESTINATION
    assert reply.peer == "nobody"
    assert "nobody" in reply.detail


def test_spoofed_source_is_refused(running_broker, raw_dealer, client_factory):
    victim = client_factory("gpu-2", running_broker.endpoint)
    victim.send(Heartbeat(dst=BROKER))
    liar = raw_dealer(running_broker.endpoint, b"gpu-1")
    liar.send(encode(Heartbeat(src="gpu-1", dst=BROKER, id="h", ts=1.0)))  # its name: gpu-1
    running_broker.wait_heard("gpu-1")
    forged = encode(
        TaskStarted(
            src="brain", dst="gpu-2", id="x", ts=1.0, batch_id="b", task_id="t", attempt_id="a"
        )
    )
    liar.send(forged)
    assert liar.poll(5000)
    error = msgpack.unpackb(liar.recv())
    assert error["code"] == ErrorCode.SPOOFED_SOURCE
    assert "brain" in error["detail"] and "gpu-1" in error["detail"]
    assert not any(isinstance(m, TaskStarted) for m in drain(victim))


@pytest.mark.timeout(120)
def test_malformed_flood_then_valid_message_still_routes(
    running_broker, raw_dealer, client_factory
):
    receiver = client_factory(BRAIN, running_broker.endpoint)
    receiver.send(Heartbeat(dst=BROKER))
    attacker = raw_dealer(running_broker.endpoint, b"fuzzer")
    # The attacker's first message claims its name; from then on it speaks as "fuzzer".
    attacker.send(encode(Heartbeat(src="fuzzer", dst=BROKER, id="hello", ts=1.0)))
    running_broker.wait_heard("fuzzer")
    rng = random.Random(7)
    good_envelope = {
        "v": PROTOCOL_VERSION,
        "type": "heartbeat",
        "id": "1",
        "src": "fuzzer",
        "dst": BROKER,
        "ts": 1.0,
    }
    samples = [
        lambda: rng.randbytes(rng.randrange(0, 64)),
        lambda: b"",
        lambda: msgpack.packb([1, 2, 3]),
        lambda: msgpack.packb({**good_envelope, "v": 99}),
        lambda: msgpack.packb({**good_envelope, "type": "nope"}),
        lambda: msgpack.packb({**good_envelope, "src": "someone-else"}),
    ]
    for i in range(10_000):
        frames = [samples[i % len(samples)]()]
        if i % 997 == 0:
            frames.append(b"extra frame")
        attacker.send_multipart(frames)
    # An oversize frame, over the codec limit but under the socket's cap.
    attacker.send(b"\x00" * (MAX_MESSAGE_BYTES + 10))
    valid = client_factory("gpu-1", running_broker.endpoint)
    sent = valid.send(started("after-the-flood"))
    got = receiver.recv(timeout=60)
    while got is not None and not isinstance(got, TaskStarted):
        got = receiver.recv(timeout=60)
    assert got == sent
    wait_for(
        lambda: sum(running_broker.stats.refused.values()) >= 10_001,
        60,
        "the broker to count every refusal",
    )
    refused = running_broker.stats.refused
    assert sum(refused.values()) == 10_001
    assert refused[ErrorCode.TOO_LARGE] == 1
    assert refused[ErrorCode.EMPTY_FRAME] > 0
    assert refused[ErrorCode.BAD_FRAMES] > 0
    assert refused[ErrorCode.SPOOFED_SOURCE] > 0
    # Every refusal was answered: the sender is known even when its bytes are not.
    errors = 0
    while attacker.poll(200):
        error = msgpack.unpackb(attacker.recv())
        assert error["type"] == "error" and error["dst"] == "fuzzer"
        errors += 1
    assert errors == 10_001


def test_peer_down_within_liveness_then_up_again(broker_factory, client_factory):
    running = broker_factory(interval=0.1, liveness=3)
    brain = client_factory(BRAIN, running.endpoint)
    brain.send(Heartbeat(dst=BROKER))
    running.wait_heard(BRAIN)  # the brain's route exists: the worker's peer.up reaches it
    worker = client_factory("gpu-1", running.endpoint)
    worker.send(Heartbeat(dst=BROKER))
    up = brain.recv(timeout=5)
    while up is not None and not (isinstance(up, PeerUp) and up.peer == "gpu-1"):
        up = brain.recv(timeout=5)
    assert up is not None, "the brain was not told that gpu-1 is up"
    # The brain keeps talking; the worker falls silent.
    went_silent = time.monotonic()
    down = None
    while down is None and time.monotonic() - went_silent < 5:
        brain.send(Heartbeat(dst=BROKER))
        msg = brain.recv(timeout=0.05)
        if isinstance(msg, PeerDown) and msg.peer == "gpu-1":
            down = msg
    # The loop's 5 s is only a guard against a hang; when exactly a peer counts
    # as down (expiry, then the next check) is asserted with a fake clock in
    # tests/test_liveness.py. Here: it is reported, and never before its expiry.
    assert down is not None
    assert down.silent_s >= 0.3
    worker.send(Heartbeat(dst=BROKER))
    msgs = drain(brain, timeout=0.3)
    assert any(isinstance(m, PeerUp) and m.peer == "gpu-1" for m in msgs)


def test_sub_receives_heartbeats_filtered_by_topic(running_broker, client_factory):
    only_gpu1 = Subscriber(running_broker.pub_endpoint, topics=(topic("heartbeat", "gpu-1"),))
    every = Subscriber(running_broker.pub_endpoint, topics=(topic("heartbeat"),))
    try:
        gpu1 = client_factory("gpu-1", running_broker.endpoint)
        gpu10 = client_factory("gpu-10", running_broker.endpoint)
        subscribed(gpu1, only_gpu1, every)
        for _ in range(3):
            gpu1.send(Heartbeat(dst=BROKER, role="worker", state="hot", tok_s=22.5))
            gpu10.send(Heartbeat(dst=BROKER, role="worker", state="cold"))
        got = []
        while (p := only_gpu1.recv(timeout=1)) is not None:
            got.append(p)
        assert len(got) == 3
        assert {p.message.src for p in got} == {"gpu-1"}
        assert got[0].message.tok_s == 22.5
        seqs = [p.seq for p in got]
        assert seqs == sorted(seqs)
        sources = set()
        while (p := every.recv(timeout=1)) is not None:
            sources.add(p.message.src)
        assert sources == {"gpu-1", "gpu-10"}
    finally:
        only_gpu1.close()
        every.close()


def test_sequence_gap_is_reported(running_broker, client_factory):
    sub = Subscriber(running_broker.pub_endpoint, topics=(topic("heartbeat", "gpu-1"),))
    try:
        gpu1 = client_factory("gpu-1", running_broker.endpoint)
        gpu2 = client_factory("gpu-2", running_broker.endpoint)
        subscribed(gpu1, sub)
        gpu1.send(Heartbeat(dst=BROKER))
        first = sub.recv(timeout=2)
        gpu2.send(Heartbeat(dst=BROKER))  # published, but filtered out by the topic
        running_broker.wait_heard("gpu-2")  # so it is published before what gpu-1 sends next
        gpu1.send(Heartbeat(dst=BROKER))
        second = sub.recv(timeout=2)
        assert first.gap == 0 and second.gap >= 1
    finally:
        sub.close()


def test_handover_to_a_restarted_actor(running_broker, client_factory):
    sender = client_factory("brain", running_broker.endpoint)
    old = client_factory("gpu-1", running_broker.endpoint)
    old.send(Heartbeat(dst=BROKER))
    running_broker.wait_heard("gpu-1")
    heard = running_broker.broker.liveness.last_seen
    old_heard_at = heard["gpu-1"]
    old.close()  # the old process is gone: its name is free once the broker sees it go
    new = client_factory("gpu-1", running_broker.endpoint)  # restarted under the same name

    def heard_again() -> bool:
        # A real peer heartbeats every interval: a heartbeat that raced the
        # old connection's close is refused (name_in_use), the next one is not.
        new.send(Heartbeat(dst=BROKER))
        return heard["gpu-1"] != old_heard_at

    wait_for(heard_again, 5, "the restarted gpu-1's heartbeat", poll_s=0.25)
    sent = sender.send(TaskCancel(dst="gpu-1", batch_id="b", task_id="t", attempt_id="a"))
    got = new.recv(timeout=5)
    while isinstance(got, Error) and got.code == ErrorCode.NAME_IN_USE:  # a raced heartbeat's
        got = new.recv(timeout=5)
    assert got == sent


def test_messages_to_the_broker_itself(running_broker, client_factory):
    tool = client_factory("gpu-1", running_broker.endpoint)
    assert tool.request(Heartbeat(dst=BROKER), timeout=0.3) is None  # consumed silently
    task_msg = TaskStarted(dst=BROKER, batch_id="b", task_id="t", attempt_id="a")
    reply = tool.request(task_msg, timeout=5)
    assert isinstance(reply, Error) and reply.code == ErrorCode.UNEXPECTED


def test_sigterm_exits_zero():
    command = [
        sys.executable,
        "-m",
        "llmo.cli.main",
        "broker",
        "--broker",
        "tcp://127.0.0.1:*",
        "--pub",
        "tcp://127.0.0.1:*",
    ]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stderr.readline()
            assert "broker routing on tcp://127.0.0.1:" in line
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert "broker stopping" in proc.stderr.read()
        finally:
            proc.kill()
