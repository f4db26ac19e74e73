"""The messages of one brain loop turn, bundled (``brain.outbox``).

The brain's shell sends a lone message as it is, at once; several assignments or
plain acks to one worker as one ``TaskAssigns`` or ``Acks``; several batch events as
one ``BatchEvents`` after the turn's other messages. A subscriber hands batch events
out one ``BatchEvent`` at a time, in order, so watchers see the same stream.
"""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
import zmq

from llmo.brain import outbox
from llmo.brain.commands import Send
from llmo.brain.service import BrainService
from llmo.proto.codec import decode, encode, to_dict
from llmo.proto.errors import ErrorCode, ProtocolError
from llmo.proto.messages import (
    BROKER,
    Ack,
    Acks,
    BatchEvent,
    BatchEvents,
    TaskAssign,
    TaskAssigns,
    TaskCancel,
)
from llmo.proto.pubsub import BATCH_EVENT_TOPICS, Subscriber
from tests.waiting import wait_until


def event(rev: int, name: str = "task_started", task: str = "t", **detail) -> BatchEvent:
    return BatchEvent(
        dst=BROKER, rev=rev, batch_id="B", event=name, task_id=task, state="running", detail=detail
    )


def assign(task: str, worker: str = "w") -> TaskAssign:
    return TaskAssign(
        dst=worker,
        batch_id="B",
        task_id=task,
        attempt_id=f"{task}-1",
        task_class="cpu",
        command="true",
    )


@pytest.fixture
def service(tmp_path):
    brain = BrainService("tcp://127.0.0.1:9", str(tmp_path / "brain.journal"))
    brain.sent = []
    brain.execute = lambda command: brain.sent.append(command.msg)
    return brain


def test_a_lone_event_is_sent_as_it_is(service):
    service.pending = [Send(assign("a")), Send(event(1))]
    service.flush()
    assert service.sent == [assign("a"), event(1)]


def test_the_events_of_one_turn_go_in_one_message_after_the_others(service):
    events = [event(1, task="a"), event(2, "task_succeeded", task="a", ok=1), event(3, task="b")]
    service.pending = [Send(events[0]), Send(assign("b")), Send(events[1]), Send(events[2])]
    service.flush()
    assert service.sent[0] == assign("b")
    (many,) = service.sent[1:]
    assert isinstance(many, BatchEvents) and many.dst == BROKER
    stamped = decode(encode(dataclasses.replace(many, src="brain", id="x-1", ts=5.0)))
    assert isinstance(stamped, BatchEvents)
    unpacked = stamped.unpacked()
    assert [(e.rev, e.event, e.task_id, e.detail) for e in unpacked] == [
        (e.rev, e.event, e.task_id, e.detail) for e in events
    ]
    assert [(e.src, e.id, e.ts) for e in unpacked] == [("brain", f"x-1.{i}", 5.0) for i in range(3)]


def test_a_big_turn_is_cut_into_messages_of_a_bounded_number_of_events(service, monkeypatch):
    monkeypatch.setattr(outbox, "EVENTS_PER_MESSAGE", 2)
    service.pending = [Send(event(rev)) for rev in range(1, 6)]
    service.flush()
    assert all(isinstance(m, BatchEvents) for m in service.sent)
    assert [len(m.events) for m in service.sent] == [2, 2, 1]
    assert [e.rev for m in service.sent for e in m.events] == [1, 2, 3, 4, 5]


def test_a_workers_assignments_and_acks_go_in_one_message_in_order():
    ack = Ack(dst="w", reply_to="r1"), Ack(dst="w", reply_to="r2"), Ack(dst="v", reply_to="r3")
    sent = outbox.bundle([ack[0], assign("a"), ack[2], assign("b", "v"), assign("c"), ack[1]])
    assert sent == [
        TaskAssigns(dst="w", assigns=(assign("a"), assign("c")), acks=("r1", "r2")),
        TaskAssigns(dst="v", assigns=(assign("b", "v"),), acks=("r3",)),
    ]
    assert [a.task_id for a in sent[0].unpacked()] == ["a", "c"]
    assert [a.reply_to for a in sent[0].unpacked_acks()] == ["r1", "r2"]


def test_a_chain_hops_ack_and_next_assignment_are_one_message():
    # A chain's hop: the result's ack and the next task's assignment, to one worker.
    sent = outbox.bundle([Ack(dst="w", reply_to="r1"), assign("next")])
    assert sent == [TaskAssigns(dst="w", assigns=(assign("next"),), acks=("r1",))]


def test_acks_alone_still_go_as_acks():
    sent = outbox.bundle([Ack(dst="w", reply_to="r1"), Ack(dst="w", reply_to="r2")])
    assert sent == [Acks(dst="w", reply_to=("r1", "r2"))]


def test_another_message_to_a_worker_stays_behind_what_came_before_it():
    cancel = TaskCancel(dst="w", batch_id="B", task_id="a", attempt_id="a-1", mode="abort")
    sent = outbox.bundle([assign("a"), assign("b"), cancel, assign("c"), assign("d")])
    assert sent == [
        TaskAssigns(dst="w", assigns=(assign("a"), assign("b"))),
        cancel,
        TaskAssigns(dst="w", assigns=(assign("c"), assign("d"))),
    ]


def test_an_ack_with_something_to_say_goes_on_its_own():
    refused = Ack(dst="w", reply_to="r2", ok=False, detail="no such batch")
    sent = outbox.bundle([Ack(dst="w", reply_to="r1"), refused, Ack(dst="w", reply_to="r3")])
    assert sent == [Ack(dst="w", reply_to="r1"), refused, Ack(dst="w", reply_to="r3")]


def test_a_long_run_of_assignments_is_cut(monkeypatch):
    monkeypatch.setattr(outbox, "ASSIGNS_PER_MESSAGE", 2)
    sent = outbox.bundle([assign(t) for t in "abcde"])
    assert [type(m).__name__ for m in sent] == ["TaskAssigns", "TaskAssigns", "TaskAssign"]
    assert [a.task_id for m in sent[:2] for a in m.assigns] == ["a", "b", "c", "d"]
    acked = outbox.bundle([*(Ack(dst="w", reply_to=f"r{n}") for n in range(5)), assign("a")])
    assert acked == [
        TaskAssigns(dst="w", assigns=(assign("a"),), acks=("r0", "r1")),
        Acks(dst="w", reply_to=("r2", "r3")),
        Ack(dst="w", reply_to="r4"),
    ]


def test_decode_checks_every_ack_inside():
    wire = to_dict(TaskAssigns(dst="w", assigns=(assign("a"),), acks=("r1",)))
    wire.update(src="brain", id="x-1", ts=1.0)
    wire["acks"] = ["r1", 7]
    with pytest.raises(ProtocolError) as err:
        decode(msgpack.packb(wire))
    assert "acks" in err.value.detail


def test_decode_checks_every_record_inside():
    wire = to_dict(TaskAssigns(dst="w", assigns=(assign("a"), assign("b"))))
    wire.update(src="brain", id="x-1", ts=1.0)
    wire["assigns"][1]["task_class"] = "rocket"
    with pytest.raises(ProtocolError) as err:
        decode(msgpack.packb(wire))
    assert "task.assigns.assigns[1].task_class" in err.value.detail


def test_decode_checks_every_event_inside():
    wire = to_dict(BatchEvents.of([event(1), event(2)]))
    wire.update(src="brain", id="x-1", ts=1.0)
    wire["events"][1]["rev"] = "two"
    with pytest.raises(ProtocolError) as err:
        decode(msgpack.packb(wire))
    assert err.value.code is ErrorCode.BAD_FIELD
    assert "batch.events.events[1].rev" in err.value.detail


def test_a_subscriber_hands_out_the_events_of_one_publication_in_order():
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber(f"tcp://127.0.0.1:{port}", topics=BATCH_EVENT_TOPICS)
    try:
        assert wait_until(
            lambda: pub.send_multipart([b"batch.event/x/", b"1"]) or sub.socket.poll(50)
        )
        sub.socket.recv_multipart()  # the probe
        many = dataclasses.replace(
            BatchEvents.of([event(4, task="a"), event(5, task="b"), event(6, task="c")]),
            src="brain",
            id="m-1",
            ts=2.0,
        )
        pub.send_multipart([b"batch.events/brain/", (7).to_bytes(8, "big"), encode(many)])
        pub.send_multipart([b"batch.event/brain/", (8).to_bytes(8, "big"), encode(event(7))])
        got = [sub.recv(timeout=5) for _ in range(4)]
        assert [(p.seq, p.message.rev, p.message.task_id) for p in got] == [
            (7, 4, "a"),
            (7, 5, "b"),
            (7, 6, "c"),
            (8, 7, "t"),
        ]
        assert all(isinstance(p.message, BatchEvent) and p.gap == 0 for p in got)
    finally:
        sub.close()
        pub.close(linger=0)
