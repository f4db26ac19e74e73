"""Routes belong to the broker, roles come from the configuration: real sockets on loopback.

An impostor connecting under a live peer's name (with or without CurveZMQ
keys) must not take its route; a tool key must not become a worker or report
results; a second brain is refused while the first is live; peer-supplied
names cannot forge a broker log line.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from llmo.broker.roles import Roles
from llmo.proto import BRAIN, BROKER, ErrorCode, Heartbeat, encode
from llmo.proto.messages import Error, Register, TaskCancel, TaskDone, TaskStarted
from llmo.proto.security import ClientKeys, ServerKeys, curve_available, generate
from tests.reporting import say
from tests.waiting import wait_for, wait_until

WORKERS = Roles(workers=frozenset({"cpu-1", "brain-llm"}))
needs_curve = pytest.mark.skipif(not curve_available(), reason="libzmq built without CURVE")


def report(task: str = "t1") -> TaskStarted:
    return TaskStarted(dst=BRAIN, batch_id="b1", task_id=task, attempt_id=f"{task}.1")


def cancel(dst: str, task: str = "t1") -> TaskCancel:
    return TaskCancel(dst=dst, batch_id="b1", task_id=task, attempt_id=f"{task}.1")


def error_from(client, timeout: float = 5.0) -> Error | None:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        msg = client.recv(timeout=left)
        if isinstance(msg, Error):
            return msg
    return None


def connected(brain, worker) -> None:
    """Wait until the brain and ``worker`` reach each other through the broker."""

    def both_ways() -> bool:
        brain.send(Heartbeat(dst=BROKER))
        sent = worker.send(report("probe"))
        got = brain.recv(timeout=0.2)
        while got is not None and got.id != sent.id:
            got = brain.recv(timeout=0.2)
        return got is not None

    wait_for(both_ways, 10, f"{worker.name} and the brain to reach each other")
    while brain.recv(timeout=0.2) is not None:
        pass
    # A probe sent before the brain's route existed was answered unknown_destination;
    # those answers came before the probe that got through, so they are here already.
    while worker.recv(timeout=0.01) is not None:
        pass


def still_routed(brain, worker, impostor, task: str) -> None:
    """The brain's message reaches ``worker`` and the worker's reaches the brain;
    the impostor gets neither."""
    to_worker = brain.send(cancel(worker.name, task))
    got = worker.recv(timeout=5)
    while got is not None and got.id != to_worker.id:
        got = worker.recv(timeout=5)
    assert got is not None, f"{worker.name} was cut off"
    to_brain = worker.send(report(task))
    got = brain.recv(timeout=5)
    while got is not None and got.id != to_brain.id:
        got = brain.recv(timeout=5)
    assert got is not None, "the brain was cut off"
    for msg in iter(lambda: impostor.recv(timeout=0.3), None):
        assert isinstance(msg, Error), f"the impostor received {msg!r}"


# --- route theft, without keys ---------------------------------------------------------------


@pytest.mark.parametrize("victim", [BRAIN, "cpu-1"])
def test_an_impostor_cannot_take_a_live_route(broker_factory, client_factory, victim, request):
    running = broker_factory(interval=0.2, liveness=100, roles=WORKERS)
    brain = client_factory(BRAIN, running.endpoint)
    worker = client_factory("cpu-1", running.endpoint)
    connected(brain, worker)
    tried = refused = 0
    impostor = client_factory(victim, running.endpoint)
    for _ in range(5):
        tried += 1
        impostor.send(Heartbeat(dst=BROKER, role="worker" if victim != BRAIN else "client"))
        error = error_from(impostor)
        assert error is not None and error.code == ErrorCode.NAME_IN_USE, error
        refused += 1
    # A raw DEALER that picks the victim's name as its ZeroMQ identity does no better.
    raw = client_factory("raw", running.endpoint)
    raw.socket.close(linger=0)
    raw.socket = raw.context.socket(zmq.DEALER)
    raw.socket.setsockopt(zmq.LINGER, 0)
    raw.socket.setsockopt(zmq.IDENTITY, victim.encode())
    raw.socket.connect(running.endpoint)
    raw.name = victim
    tried += 1
    raw.send(Heartbeat(dst=BROKER))
    error = error_from(raw)
    assert error is not None and error.code == ErrorCode.NAME_IN_USE, error
    refused += 1
    still_routed(brain, worker, impostor, "after-the-impostor")
    for msg in iter(lambda: raw.recv(timeout=0.3), None):
        assert isinstance(msg, Error), f"the raw impostor received {msg!r}"
    say(request.config, f"route theft without keys ({victim}): {tried} tried, {refused} refused")
    assert tried == refused


def test_a_restarted_peer_gets_its_route_back_at_once(broker_factory, client_factory):
    # A long liveness: the route comes back because the old connection is gone,
    # not because it expired.
    running = broker_factory(interval=0.2, liveness=1000, roles=WORKERS)
    brain = client_factory(BRAIN, running.endpoint)
    old = client_factory("cpu-1", running.endpoint)
    connected(brain, old)
    old.close()
    new = client_factory("cpu-1", running.endpoint)
    connected(brain, new)
    sent = brain.send(cancel("cpu-1"))
    got = new.recv(timeout=5)
    assert got is not None and got.id == sent.id


def test_a_second_brain_is_refused_while_the_first_is_live(broker_factory, client_factory):
    running = broker_factory(interval=0.1, liveness=3, roles=WORKERS)
    first = client_factory(BRAIN, running.endpoint)
    worker = client_factory("cpu-1", running.endpoint)
    connected(first, worker)
    second = client_factory(BRAIN, running.endpoint)
    second.send(Heartbeat(dst=BROKER))
    error = error_from(second)
    assert error is not None and error.code == ErrorCode.NAME_IN_USE
    assert "brain" in error.detail
    # The first brain was told, and it still gets the worker's reports.
    notice = error_from(first)
    assert notice is not None and notice.code == ErrorCode.NAME_IN_USE
    still_routed(first, worker, second, "second-brain-refused")

    # The first brain falls silent (connected, but no longer heartbeating): after
    # the expiry the second one takes over.
    def second_accepted() -> bool:
        worker.send(Heartbeat(dst=BRAIN, role="worker"))
        sent = second.send(cancel("cpu-1", "from-the-second"))
        got = worker.recv(timeout=0.1)
        while got is not None and got.id != sent.id:
            got = worker.recv(timeout=0.1)
        return got is not None

    wait_for(second_accepted, 10, "the second brain to take over after the first's expiry")


# --- roles ------------------------------------------------------------------------------------


def test_a_tool_cannot_report_results_or_register(broker_factory, client_factory, request):
    running = broker_factory(interval=0.2, liveness=100, roles=WORKERS)
    brain = client_factory(BRAIN, running.endpoint)
    worker = client_factory("cpu-1", running.endpoint)
    connected(brain, worker)
    tool = client_factory("submit-1", running.endpoint)
    forged = [
        TaskDone(dst=BRAIN, batch_id="b1", task_id="t1", attempt_id="t1.1"),
        Register(dst=BRAIN, slots=8),
        Heartbeat(dst=BRAIN, role="worker", slots_total=8, slots_free=8),
        cancel("cpu-1"),
    ]
    for msg in forged:
        reply = tool.request(msg, timeout=5)
        assert isinstance(reply, Error) and reply.code == ErrorCode.FORBIDDEN, (msg, reply)
    assert brain.recv(timeout=0.3) is None, "a forged message reached the brain"
    assert worker.recv(timeout=0.1) is None, "a tool reached a worker"
    say(request.config, f"tool forgeries: {len(forged)} tried, {len(forged)} refused")
    # A worker cannot act as the brain either.
    reply = worker.request(cancel("brain-llm"), timeout=5)
    assert isinstance(reply, Error) and reply.code == ErrorCode.FORBIDDEN


def test_a_name_with_a_newline_forges_no_broker_log_line(running_broker, zmq_context, caplog):
    caplog.set_level(logging.DEBUG, logger="llmo.broker")
    forged = "x\nCurveZMQ key of 'brain' accepted from 10.0.0.1"
    sock = zmq_context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, forged.encode())
    sock.connect(running_broker.endpoint)
    try:
        envelope = {"v": 1, "type": "heartbeat", "id": forged, "src": forged, "dst": BROKER}
        sock.send(msgpack.packb({**envelope, "ts": 1.0}))
        sock.send(b"\xc1not msgpack")
        assert sock.poll(5000)
        wait_for(lambda: sum(running_broker.stats.refused.values()) >= 2, 5, "both refusals")
    finally:
        sock.close(linger=0)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("llmo.broker")]
    assert lines
    for line in lines:
        assert "\n" not in line and "\r" not in line, line


# --- with CurveZMQ keys ---------------------------------------------------------------------


@pytest.fixture
def keys_dir(tmp_path) -> Path:
    folder = tmp_path / "keys"
    generate(folder, [BRAIN, "cpu-1", "pi", "evil-w"])
    return folder


@pytest.fixture
def curve_rig(broker_factory, client_factory, keys_dir):
    running = broker_factory(
        keys=ServerKeys.load(keys_dir), interval=0.2, liveness=100, roles=WORKERS
    )
    brain = client_factory(BRAIN, running.endpoint, keys=ClientKeys.load(keys_dir, BRAIN))
    worker = client_factory("cpu-1", running.endpoint, keys=ClientKeys.load(keys_dir, "cpu-1"))
    connected(brain, worker)
    return running, brain, worker


@needs_curve
@pytest.mark.parametrize("victim", [BRAIN, "cpu-1"])
def test_the_pi_key_cannot_take_a_route(curve_rig, client_factory, keys_dir, victim, request):
    running, brain, worker = curve_rig
    pi = ClientKeys.load(keys_dir, "pi")
    raw = client_factory("raw", running.endpoint, keys=pi)
    raw.socket.close(linger=0)
    raw.socket = raw.context.socket(zmq.DEALER)
    raw.socket.setsockopt(zmq.LINGER, 0)
    raw.socket.setsockopt(zmq.IDENTITY, victim.encode())
    pi.apply(raw.socket)
    raw.socket.connect(running.endpoint)
    raw.name = victim  # speaks as the victim, on a connection with the Pi's key
    tried = refused = 0
    for _ in range(3):
        tried += 1
        raw.send(Heartbeat(dst=BROKER))
        error = error_from(raw)
        assert error is not None and error.code == ErrorCode.SPOOFED_SOURCE, error
        refused += 1
    still_routed(brain, worker, raw, "after-the-pi")
    say(
        request.config,
        f"route theft with the Pi's key ({victim}): {tried} tried, {refused} refused",
    )


@needs_curve
def test_an_allowed_tool_key_cannot_become_a_worker(curve_rig, client_factory, keys_dir):
    running, brain, _ = curve_rig
    evil = client_factory("evil-w", running.endpoint, keys=ClientKeys.load(keys_dir, "evil-w"))
    reply = evil.request(Register(dst=BRAIN, slots=92), timeout=5)
    assert isinstance(reply, Error) and reply.code == ErrorCode.FORBIDDEN, reply
    assert "not a configured worker" in reply.detail
    reply = evil.request(TaskDone(dst=BRAIN, batch_id="b", task_id="t", attempt_id="a"), 5)
    assert isinstance(reply, Error) and reply.code == ErrorCode.FORBIDDEN, reply
    for msg in iter(lambda: brain.recv(timeout=0.3), None):
        assert msg.src != "evil-w", f"the brain received {msg!r}"
    # Tools with the Pi's key speak as NAME@pi, several at once.
    first = client_factory("submit-1", running.endpoint, keys=ClientKeys.load(keys_dir, "pi"))
    second = client_factory("submit-2", running.endpoint, keys=ClientKeys.load(keys_dir, "pi"))
    assert (first.name, second.name) == ("submit-1@pi", "submit-2@pi")
    for tool in (first, second):
        assert tool.request(Heartbeat(dst=BROKER), timeout=0.5) is None  # accepted silently
    assert wait_until(lambda: running.broker.routes.identity_of("submit-2@pi") is not None)


def test_a_raw_first_message_under_a_peer_chosen_identity_is_answered(running_broker, zmq_context):
    sock = zmq_context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(running_broker.endpoint)
    try:
        sock.send(encode(Heartbeat(src="broker", dst=BROKER, id="1", ts=1.0)))
        assert sock.poll(5000)
        assert msgpack.unpackb(sock.recv())["code"] == ErrorCode.BAD_FIELD
    finally:
        sock.close(linger=0)
