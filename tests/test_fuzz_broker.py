"""Fuzzing the broker over real sockets on loopback.

Two raw DEALERs send what hypothesis makes: ``fuzzer``, a tool (what a
stolen Pi key or any local process would be), and ``brain``, the one role
that may address anyone. Each sends random bytes, msgpack values that are
not maps, envelopes with each field right or wrong (types, versions, unknown
message types, names at and over the length cap, unknown destinations,
sources that claim another actor's name, the broker as destination), whole
messages of every type, trailing garbage, nesting bombs, empty and extra
frames. An oracle computes what the broker must do with each input from the
protocol's own envelope check and the role table; the test then holds the
broker to it: every input refused is counted and, where there is a sender to
answer, answered with an ``Error`` of the expected code; every valid one is
routed to its destination; and afterwards a worker's report still reaches
the brain and the brain's message still reaches a worker.
"""

from __future__ import annotations

import collections
import dataclasses
import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zmq.utils.monitor import recv_monitor_message

from llmo.broker.roles import ALLOWED, SUPERVISOR_REQUESTS, Role, Roles
from llmo.proto.client import Client
from llmo.proto.codec import (
    MAX_MESSAGE_BYTES,
    MAX_NAME_LEN,
    ProtocolError,
    decode,
    decode_envelope,
    encode,
)
from llmo.proto.errors import ErrorCode
from llmo.proto.messages import (
    BRAIN,
    BROKER,
    PROTOCOL_VERSION,
    PUBLISHED_TYPES,
    SUPERVISOR,
    Heartbeat,
    MsgType,
    TaskCancel,
    TaskStarted,
)
from tests.conftest import RunningBroker
from tests.strategies import json_values, messages
from tests.test_fuzz_tally import examples, fuzz_tally  # noqa: F401  (fixture)
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

FUZZER = "fuzzer"  # a tool
SENDER = "gpu-a"  # a worker, an honest client
RECEIVER = "gpu-b"  # a worker, a raw socket
SPEAKERS = {FUZZER: Role.TOOL, BRAIN: Role.BRAIN}  # the raw sockets that fuzz
CONNECTED = (FUZZER, BRAIN, SENDER, RECEIVER)
DESTINATIONS = [*CONNECTED, BROKER, SUPERVISOR, "nobody", "x" * MAX_NAME_LEN]
PEER_EVENTS = (MsgType.PEER_UP, MsgType.PEER_DOWN)


class Link:
    """The broker, the raw sockets of a tool and the brain, a worker's raw socket
    (the receiver), and an honest worker client (the sender)."""

    def __init__(self) -> None:
        self.running = RunningBroker(roles=Roles(frozenset({SENDER, RECEIVER})))
        self.context = zmq.Context()
        self.speakers = {name: self._dealer(name) for name in SPEAKERS}
        self.fuzzer = self.speakers[FUZZER]
        self.brain = self.speakers[BRAIN]
        self.receiver = self._dealer(RECEIVER)
        self.sender = Client(SENDER, self.running.endpoint, context=self.context)
        for sock in (self.fuzzer, self.brain, self.receiver):
            sock.send(encode(Heartbeat(src=sock.identity.decode(), dst=BROKER, id="hello")))
        self.sender.send(Heartbeat(dst=BROKER))
        heard = self.running.broker.liveness.last_seen
        assert self.settle(lambda: all(name in heard for name in CONNECTED))

    def _dealer(self, name: str) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, name.encode())
        sock.connect(self.running.endpoint)
        return sock

    @property
    def stats(self):
        return self.running.stats

    def settle(self, done, timeout: float = 20.0) -> bool:
        return wait_until(done, timeout, poll_s=0.002)

    def drain(self, sock: zmq.Socket, expected: int = 0, timeout: float = 10.0) -> list[bytes]:
        """What ``sock`` received: at least ``expected`` messages (waiting up to
        ``timeout`` for them), and whatever else arrives within a few milliseconds."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            out.append(sock.recv())
        while sock.poll(5):
            out.append(sock.recv())
        return out

    def still_routes(self) -> None:
        """A worker's report reaches the brain, and the brain's message a worker."""
        report = self.sender.send(
            TaskStarted(dst=BRAIN, batch_id="b", task_id="after", attempt_id="a")
        )
        self._arrives(self.brain, report.id)
        cancel = TaskCancel(
            src=BRAIN,
            dst=RECEIVER,
            id="cancel-after",
            ts=1.0,
            batch_id="b",
            task_id="after",
            attempt_id="a",
        )
        self.brain.send(encode(cancel))
        self._arrives(self.receiver, cancel.id)

    def _arrives(self, sock: zmq.Socket, msg_id: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if sock.poll(100):
                body = sock.recv()
                try:
                    if decode_envelope(body).id == msg_id:
                        return
                except ProtocolError:
                    continue
        raise AssertionError("the broker no longer routes a valid message")

    def close(self) -> None:
        self.sender.close()
        for sock in (self.fuzzer, self.brain, self.receiver):
            sock.close(linger=0)
        self.context.term()
        self.running.stop()


@pytest.fixture(scope="module")
def link():
    running = Link()
    yield running
    running.close()


# --- what the broker must do with each input -----------------------------------------------


def oracle(speaker: str, frames: list[bytes]) -> tuple[str, str]:
    """``(outcome, code)`` for ``frames`` sent by the connection named ``speaker``:
    ``refused`` with an error reply, ``dropped`` (an undeliverable error: counted, not
    answered), ``routed`` to a connected actor, or ``accepted`` by the broker itself
    (heartbeats and telemetry addressed to it)."""
    if len(frames) != 1:
        return "refused", ErrorCode.BAD_FRAMES
    try:
        env = decode_envelope(frames[0])
    except ProtocolError as exc:
        return "refused", exc.code
    if env.src != speaker:
        return "refused", ErrorCode.SPOOFED_SOURCE
    role = SPEAKERS[speaker]
    if env.type not in ALLOWED[role]:
        return "refused", ErrorCode.FORBIDDEN  # a tool registering included: not a worker
    if env.type in SUPERVISOR_REQUESTS:
        if env.dst != SUPERVISOR:
            return "refused", ErrorCode.FORBIDDEN  # llmo up's supervisor answers these
    elif role is Role.TOOL and env.dst not in (BRAIN, BROKER):
        return "refused", ErrorCode.FORBIDDEN  # a tool talks to the brain only
    if env.type is MsgType.HEARTBEAT:  # neither a tool nor the brain heartbeats as a worker
        try:
            beat = decode(frames[0])
        except ProtocolError:
            return "refused", ErrorCode.FORBIDDEN
        if not isinstance(beat, Heartbeat) or beat.role != "client":
            return "refused", ErrorCode.FORBIDDEN
    if env.dst == BROKER:
        if env.type is MsgType.HEARTBEAT or env.type in PUBLISHED_TYPES:
            return "accepted", ""
        return "refused", ErrorCode.UNEXPECTED
    if env.dst in CONNECTED:
        return "routed", env.dst
    if env.type is MsgType.ERROR:
        return "dropped", "undeliverable_error"
    return "refused", ErrorCode.UNKNOWN_DESTINATION


# --- inputs ---------------------------------------------------------------------------------

MISSING = object()
names = st.sampled_from(DESTINATIONS) | st.text(max_size=12)
bad_scalars = st.sampled_from([None, True, 0, -1, 2**64 - 1, 1.5, b"bytes", [], {}, "x" * 129])
GOOD = {
    "v": st.just(PROTOCOL_VERSION),
    "type": st.sampled_from([t.value for t in MsgType]),
    "id": st.text(min_size=1, max_size=MAX_NAME_LEN),
    "src": st.nothing(),  # drawn per speaker: its own name mostly, another's sometimes
    "dst": names,
    "ts": st.floats(allow_nan=True) | st.integers(0, 2**40),
}
BAD = {
    "v": st.sampled_from([0, 2, "1", 1.0, None, True]),
    "type": st.text(max_size=8) | bad_scalars,
    "ts": st.text(max_size=4) | bad_scalars,
}


def sources(speaker: str):
    others = [name for name in (FUZZER, BRAIN, SENDER, BROKER) if name != speaker]
    return st.sampled_from([speaker, speaker, speaker, *others])


@st.composite
def envelopes(draw, speaker: str) -> bytes:
    """A right envelope with one field (or none) made wrong or left out, and extra keys."""
    good = {**GOOD, "src": sources(speaker)}
    data = {key: draw(strategy) for key, strategy in good.items()}
    broken = draw(st.sampled_from([None, *GOOD]))
    if broken is not None:
        data[broken] = draw(st.just(MISSING) | BAD.get(broken, bad_scalars))
    data = {k: v for k, v in data.items() if v is not MISSING}
    data.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)))
    return msgpack.packb(data, use_bin_type=True)


@st.composite
def whole_messages(draw, speaker: str) -> bytes:
    msg = dataclasses.replace(draw(messages), src=speaker, dst=draw(st.sampled_from(DESTINATIONS)))
    body = encode(msg)
    if draw(st.integers(0, 5)) == 0:
        body += draw(st.binary(min_size=1, max_size=8))  # trailing garbage
    return body


def frames_one(speaker: str):
    return st.one_of(
        st.binary(max_size=80),
        json_values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
        envelopes(speaker),
        envelopes(speaker),
        whole_messages(speaker),
        whole_messages(speaker),
        st.sampled_from(
            [
                b"",
                b"\x91" * 5000 + b"\xc0",  # arrays nested 5000 deep
                b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
                b"\xdb\xff\xff\xff\xf0abc",  # a string claiming 4 GB
                b"\xc1",  # a byte msgpack never uses
            ]
        ),
    )


@st.composite
def inputs(draw) -> tuple[str, list[bytes]]:
    """Who sends, and the frames it sends."""
    speaker = draw(st.sampled_from(sorted(SPEAKERS)))
    frames = draw(
        st.one_of(
            frames_one(speaker).map(lambda f: [f]),
            st.lists(frames_one(speaker), min_size=2, max_size=3),
        )
    )
    return speaker, frames


def expect_and_check(link: Link, batch: list[tuple[str, list[bytes]]], tally) -> None:
    stats = link.stats
    routed0 = stats.routed
    refused0 = collections.Counter(stats.refused)
    outcomes = [(speaker, *oracle(speaker, frames)) for speaker, frames in batch]
    for speaker, frames in batch:
        link.speakers[speaker].send_multipart(frames)
    want_refused = collections.Counter(code for _, kind, code in outcomes if kind == "refused")
    want_refused.update(code for _, kind, code in outcomes if kind == "dropped")
    want_routed = collections.Counter(code for _, kind, code in outcomes if kind == "routed")

    def refused_now() -> collections.Counter:
        return collections.Counter(stats.refused) - refused0

    settled = link.settle(
        lambda: (
            refused_now() == want_refused and stats.routed - routed0 == sum(want_routed.values())
        )
    )
    assert settled, (outcomes, refused_now(), stats.routed - routed0)
    for speaker, sock in link.speakers.items():
        expected_errors = collections.Counter(
            c for s, k, c in outcomes if s == speaker and k == "refused"
        )
        replies = link.drain(sock, sum(expected_errors.values()) + want_routed[speaker])
        errors = collections.Counter()
        delivered = 0
        for body in replies:
            env = decode_envelope(body)
            if env.src == BROKER and env.type is MsgType.ERROR:
                assert env.dst == speaker, body  # every error names the connection's name
                errors[msgpack.unpackb(body)["code"]] += 1
            elif env.src == BROKER and env.type in PEER_EVENTS:
                continue  # the broker tells the brain who came and went
            else:
                delivered += 1  # a message a speaker addressed to this one
        assert errors == expected_errors, (speaker, replies)
        assert delivered == want_routed[speaker], (speaker, replies)
    assert len(link.drain(link.receiver, want_routed[RECEIVER])) == want_routed[RECEIVER]
    assert len(link.drain(link.sender.socket, want_routed[SENDER])) == want_routed[SENDER]
    tally.add("broker", len(batch))


@given(batch=st.lists(inputs(), min_size=1, max_size=12))
@settings(
    max_examples=examples(250),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_every_bad_input_is_refused_and_counted(link, batch, fuzz_tally):  # noqa: F811
    expect_and_check(link, batch, fuzz_tally)


def test_the_broker_still_routes_after_the_fuzzing(link):
    link.still_routes()
    assert link.stats.refused["internal_error"] == 0


def test_fields_at_and_near_the_size_cap(link, fuzz_tally):  # noqa: F811
    # The brain's task.cancel to a worker: a message the broker must route whole.
    base = {"v": PROTOCOL_VERSION, "type": "task.cancel", "ts": 1.0, "src": BRAIN}
    near = MAX_MESSAGE_BYTES - 200
    bodies = [
        msgpack.packb({**base, "id": "n" * MAX_NAME_LEN, "dst": RECEIVER}),
        msgpack.packb({**base, "id": "n" * (MAX_NAME_LEN + 1), "dst": RECEIVER}),
        msgpack.packb({**base, "id": "big", "dst": "d" * (MAX_NAME_LEN + 1)}),
        # A body just under the cap is routed whole; one just over is refused.
        msgpack.packb({**base, "id": "near", "dst": RECEIVER, "pad": "x" * near}),
        msgpack.packb({**base, "id": "over", "dst": RECEIVER, "pad": "x" * MAX_MESSAGE_BYTES}),
    ]
    assert len(bodies[3]) <= MAX_MESSAGE_BYTES < len(bodies[4])
    batch = [(BRAIN, [body]) for body in bodies]
    assert [oracle(BRAIN, frames)[0] for _, frames in batch] == [
        "routed",
        "refused",
        "refused",
        "routed",
        "refused",
    ]
    expect_and_check(link, batch, fuzz_tally)
    link.still_routes()


def test_a_frame_over_the_socket_cap_costs_only_that_connection(link, fuzz_tally):  # noqa: F811
    """ZeroMQ drops a peer that sends more than MAXMSGSIZE before the broker
    sees a byte of it: nothing is counted or answered, and routing goes on."""
    bully = link.context.socket(zmq.DEALER)
    bully.setsockopt(zmq.LINGER, 0)
    bully.setsockopt(zmq.IDENTITY, b"bully")
    monitor = bully.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    bully.connect(link.running.endpoint)
    try:
        refused = sum(link.stats.refused.values())
        bully.send(b"\x00" * (2 * MAX_MESSAGE_BYTES + 1))
        assert monitor.poll(20_000), "the broker kept a peer that sent a frame over its cap"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        link.still_routes()
        assert sum(link.stats.refused.values()) == refused
        fuzz_tally.add("broker")
    finally:
        bully.disable_monitor()
        monitor.close(linger=0)
        bully.close(linger=0)
