"""Resource limits on the broker's PUB socket, over real sockets on loopback.

A subscription is a message sent *to* the PUB socket, and libzmq keeps each
one in a byte-per-node tree: unbounded, a few large or many random topics
would take the broker's memory and stall its loop until every peer is
declared down. These tests send such subscriptions and check that they are
refused (counted by the broker itself) while routing and heartbeats go on.
"""

from __future__ import annotations

import os

import pytest
import zmq

from llmo.broker.pub import MAX_SUBSCRIPTIONS, MAX_TOPIC_BYTES
from llmo.proto import BRAIN, BROKER, Heartbeat
from llmo.proto.messages import PeerDown
from llmo.proto.pubsub import Subscriber, topic
from tests.reporting import say
from tests.waiting import WAIT_S, wait_for, wait_until


@pytest.fixture
def raw_sub(zmq_context):
    sockets = []

    def make(endpoint: str, topics: list[bytes]) -> zmq.Socket:
        sock = zmq_context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        for t in topics:
            sock.setsockopt(zmq.SUBSCRIBE, t)
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    yield make
    for sock in sockets:
        sock.close(linger=0)


def routed(sender, receiver, n: int) -> bool:
    """``sender`` heartbeats ``receiver`` through the broker and it arrives."""
    sender.send(Heartbeat(dst=receiver.name, model=f"probe-{n}"))
    while (msg := receiver.recv(timeout=WAIT_S)) is not None:
        if getattr(msg, "model", None) == f"probe-{n}":
            return True
    return False


def brain_and_worker(broker_factory, client_factory):
    """A broker with the brain and the worker ``cpu-1`` both heard (so routed)."""
    running = broker_factory(interval=0.2, liveness=5)
    brain = client_factory(BRAIN, running.endpoint)
    worker = client_factory("cpu-1", running.endpoint)
    for peer in (brain, worker):
        peer.send(Heartbeat(dst=BROKER))
        running.wait_heard(peer.name)
    return running, brain, worker


def test_oversize_and_excess_subscriptions_are_refused_while_routing_continues(
    broker_factory, client_factory, raw_sub, request
):
    running, brain, worker = brain_and_worker(broker_factory, client_factory)
    watcher = Subscriber(running.pub_endpoint, topics=(topic("peer.down"), topic("heartbeat")))
    try:
        # A monitor that works as before: heartbeats of cpu-1 reach it.
        wait_for(
            lambda: worker.send(Heartbeat(dst=BROKER)) and watcher.recv(timeout=0.1),
            WAIT_S,
            "a plain subscriber to get a heartbeat",
        )
        refused = running.stats.refused

        # The flood of the adversarial run: 100 KB random subscriptions. libzmq
        # drops the connection at the first frame over the size limit, so the
        # small topic this socket also asks for is never served either.
        big = [b"heartbeat/" + os.urandom(50_000).hex().encode() for _ in range(5)]
        flooded = raw_sub(running.pub_endpoint, [*big, topic("heartbeat", "cpu-1")])

        # Too long for a topic, short enough to reach the broker: ignored, counted.
        too_long = [b"heartbeat/" + os.urandom(MAX_TOPIC_BYTES).hex().encode() for _ in range(5)]
        raw_sub(running.pub_endpoint, too_long)
        wait_for(
            lambda: refused["pub_topic_too_long"] >= 5,
            WAIT_S,
            lambda: f"5 long topics refused; refused so far: {dict(refused)}",
        )

        # More topics than one connection may hold: the first ones work, the rest not.
        greedy_topics = [topic("heartbeat", f"w{i:04d}") for i in range(MAX_SUBSCRIPTIONS + 40)]
        greedy = raw_sub(running.pub_endpoint, [topic("heartbeat", "cpu-1"), *greedy_topics])
        wait_for(
            lambda: refused["pub_too_many_subscriptions"] >= 41,
            WAIT_S,
            lambda: f"41 excess subscriptions refused; refused so far: {dict(refused)}",
        )
        assert refused["pub_too_many_subscriptions"] == 41

        # Routing went on the whole time, and nobody was declared down.
        for n in range(20):
            assert routed(worker, brain, n), f"probe {n} from cpu-1 to the brain was lost"
        assert wait_until(lambda: worker.send(Heartbeat(dst=BROKER)) and greedy.poll(100), WAIT_S)
        assert flooded.poll(500) == 0, "a connection that sent 100 KB subscriptions was served"
        downs = []
        while (published := watcher.recv(timeout=0)) is not None:
            if isinstance(published.message, PeerDown):
                downs.append(published.message.peer)
        assert downs == []
        say(request.config, f"refused subscriptions: {dict(refused)}")
    finally:
        watcher.close()


def test_a_connection_flooding_subscriptions_is_cut_and_routing_goes_on(
    broker_factory, client_factory, raw_sub, request
):
    running, brain, worker = brain_and_worker(broker_factory, client_factory)
    refused = running.stats.refused
    flood = [topic("heartbeat", f"f{i:05d}") for i in range(3 * MAX_SUBSCRIPTIONS)]
    raw_sub(running.pub_endpoint, flood)
    wait_for(
        lambda: refused["pub_connection_cut"] >= 1,
        WAIT_S,
        lambda: f"the flooding connection to be cut; refused so far: {dict(refused)}",
    )
    for n in range(10):
        assert routed(worker, brain, n), f"probe {n} from cpu-1 to the brain was lost"
    # What the broker applied stays within the limit, whatever libzmq was sent.
    assert running.broker.subscriptions.subscriptions <= MAX_SUBSCRIPTIONS
    say(request.config, f"refused subscriptions: {dict(refused)}")
