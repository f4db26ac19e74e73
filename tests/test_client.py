"""The client helper and endpoint resolution."""

from __future__ import annotations

import time

from llmo.proto import BROKER, Ack, Heartbeat, SnapshotRequest, encode
from llmo.proto.client import tool_name
from llmo.proto.endpoints import DEFAULT_BROKER, DEFAULT_PUB, resolve, valid_actor_name


def test_endpoints_flag_then_env_then_default(monkeypatch):
    monkeypatch.delenv("LLMO_BROKER", raising=False)
    monkeypatch.delenv("LLMO_PUB", raising=False)
    assert resolve() == resolve(None, None)
    assert (resolve().broker, resolve().pub) == (DEFAULT_BROKER, DEFAULT_PUB)
    monkeypatch.setenv("LLMO_BROKER", "tcp://10.0.0.2:7000")
    monkeypatch.setenv("LLMO_PUB", "tcp://10.0.0.2:7001")
    assert resolve().broker == "tcp://10.0.0.2:7000"
    assert resolve().pub == "tcp://10.0.0.2:7001"
    assert resolve("tcp://h:1", "tcp://h:2").broker == "tcp://h:1"


def test_actor_names():
    assert valid_actor_name("gpu-1") and valid_actor_name(tool_name("submit"))
    assert (
        not valid_actor_name("") and not valid_actor_name("a/b") and not valid_actor_name("x" * 65)
    )


def test_send_stamps_the_envelope(running_broker, client_factory):
    client = client_factory("tool-1", running_broker.endpoint)
    first = client.send(Heartbeat(dst=BROKER))
    second = client.send(Heartbeat(dst=BROKER))
    assert first.src == "tool-1" and first.id != second.id
    assert abs(first.ts - time.time()) < 5


def test_request_returns_the_reply_and_keeps_the_rest(running_broker, client_factory):
    tool = client_factory("tool-1", running_broker.endpoint)
    peer = client_factory("brain", running_broker.endpoint)
    peer.send(Heartbeat(dst=BROKER))
    running_broker.wait_heard("brain")
    # The peer answers the request, but first sends something unrelated.
    request = tool.stamp(SnapshotRequest(dst="brain"))
    tool.socket.send(encode(request))
    got = peer.recv(timeout=5)
    assert got == request
    peer.send(Ack(dst="tool-1", reply_to="something-else"))
    peer.send(Ack(dst="tool-1", reply_to=request.id, detail="yes"))
    # request() matches by reply_to; here we wait on a fresh request that never
    # gets an answer, and both Acks must still be delivered to recv afterwards.
    assert tool.request(SnapshotRequest(dst="brain"), timeout=0.5) is None
    first, second = tool.recv(timeout=1), tool.recv(timeout=1)
    assert {first.reply_to, second.reply_to} == {"something-else", request.id}


def test_request_times_out_without_a_reply(running_broker, client_factory):
    tool = client_factory("tool-1", running_broker.endpoint)
    peer = client_factory("brain", running_broker.endpoint)
    peer.send(Heartbeat(dst=BROKER))
    running_broker.wait_heard("brain")
    started = time.monotonic()
    assert tool.request(SnapshotRequest(dst="brain"), timeout=0.3) is None
    assert time.monotonic() - started >= 0.3


def test_tick_sends_heartbeats_on_the_interval(running_broker, client_factory):
    clock = [100.0]
    client = client_factory(
        "tool-1", running_broker.endpoint, heartbeat_interval=1.0, clock=lambda: clock[0]
    )
    assert client.tick() is True
    assert client.tick() is False
    assert client.heartbeat_due_in() == 1.0
    clock[0] += 1.0
    assert client.tick() is True
