"""The codec: every type round-trips, and bad bytes give ProtocolError only."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmo.proto import (
    MAX_MESSAGE_BYTES,
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    ErrorCode,
    Heartbeat,
    MsgType,
    ProtocolError,
    TaskAssign,
    decode,
    decode_envelope,
    encode,
    to_dict,
)
from llmo.proto.messages import (
    BatchInfo,
    GoalInfo,
    GpuGauges,
    GpuReading,
    PlanSubmit,
    SnapshotReply,
    TaskInfo,
    Telemetry,
    WorkerInfo,
)
from tests.strategies import messages, record


def wire(**fields):
    base = {
        "v": PROTOCOL_VERSION,
        "type": "task.started",
        "id": "m1",
        "src": "gpu-1",
        "dst": "brain",
        "ts": 1.0,
        "batch_id": "b",
        "task_id": "t",
        "attempt_id": "a",
    }
    base.update(fields)
    return msgpack.packb({k: v for k, v in base.items() if v is not ...})


@pytest.mark.parametrize("msg_type", list(MsgType))
def test_every_type_has_a_class(msg_type):
    assert MESSAGE_CLASSES[msg_type].TYPE is msg_type


@pytest.mark.parametrize("cls", list(MESSAGE_CLASSES.values()), ids=lambda c: c.TYPE.value)
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_of_every_type(cls, data):
    msg = data.draw(record(cls))
    assert decode(encode(msg)) == msg
    # msgpack packs nested records itself: the bytes are those of the plain wire map.
    assert encode(msg) == msgpack.packb(to_dict(msg), use_bin_type=True)


def test_encode_refuses_a_value_that_is_not_a_record():
    with pytest.raises(TypeError, match="cannot encode a set"):
        encode(PlanSubmit(dst="brain", plan_path="/p", config={"x": {1, 2}}))


def test_round_trip_nested_telemetry():
    hb = Heartbeat(
        src="gpu-1",
        dst="brain",
        id="1",
        ts=2.0,
        state="hot",
        active=("a",),
        telemetry=Telemetry(gpu_available=True, gpus=(GpuReading(index=1, temperature_c=61.0),)),
    )
    back = decode(encode(hb))
    assert back == hb
    assert back.telemetry.gpus[0].temperature_c == 61.0


def test_envelope_on_the_wire():
    body = to_dict(
        TaskAssign(
            src="brain",
            dst="gpu-1",
            id="x",
            ts=3.0,
            batch_id="b",
            task_id="t",
            attempt_id="a",
            task_class="cpu",
            command="true",
        )
    )
    assert {k: body[k] for k in ("v", "type", "id", "src", "dst", "ts")} == {
        "v": PROTOCOL_VERSION,
        "type": "task.assign",
        "id": "x",
        "src": "brain",
        "dst": "gpu-1",
        "ts": 3.0,
    }


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", ErrorCode.EMPTY_FRAME),
        (b"\xc1", ErrorCode.MALFORMED),
        (b"\x92\x01", ErrorCode.MALFORMED),
        (msgpack.packb([1, 2]), ErrorCode.NOT_A_MAP),
        (msgpack.packb({1: 2}), ErrorCode.MALFORMED),
        (wire(v=2), ErrorCode.BAD_VERSION),
        (wire(v=...), ErrorCode.BAD_VERSION),
        (wire(v="1"), ErrorCode.BAD_VERSION),
        (wire(type="task.explode"), ErrorCode.UNKNOWN_TYPE),
        (wire(type=...), ErrorCode.MISSING_FIELD),
        (wire(src=...), ErrorCode.MISSING_FIELD),
        (wire(src=5), ErrorCode.BAD_FIELD),
        (wire(dst="x" * 500), ErrorCode.BAD_FIELD),
        (wire(ts="now"), ErrorCode.BAD_FIELD),
        (wire(task_id=...), ErrorCode.MISSING_FIELD),
        (wire(task_id=7), ErrorCode.BAD_FIELD),
        (wire(pid=True), ErrorCode.BAD_FIELD),
        (wire(pid=1.5), ErrorCode.BAD_FIELD),
        (b"\x00" * (MAX_MESSAGE_BYTES + 1), ErrorCode.TOO_LARGE),
    ],
)
def test_bad_input_is_named(data, code):
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert info.value.code is code


def test_error_names_the_field_path():
    bad = to_dict(Heartbeat(src="a", dst="b", id="c", ts=1.0, telemetry=Telemetry()))
    bad["telemetry"]["gpus"] = [{"index": "zero"}]
    with pytest.raises(ProtocolError) as info:
        decode(msgpack.packb(bad))
    assert "heartbeat.telemetry.gpus[0].index" in info.value.detail


def test_literal_values_are_checked():
    with pytest.raises(ProtocolError) as info:
        decode(wire(type="task.cancel", mode="explode"))
    assert info.value.code is ErrorCode.BAD_FIELD
    assert "'abort'" in info.value.detail


def test_error_codes_decode_as_the_enum():
    msg = decode(wire(type="error", code="unknown_destination", peer="brain"))
    assert msg.code is ErrorCode.UNKNOWN_DESTINATION


@pytest.mark.parametrize("code", ["no_such_code", "UNKNOWN_DESTINATION", 7])
def test_an_unknown_error_code_is_a_bad_field(code):
    with pytest.raises(ProtocolError) as info:
        decode(wire(type="error", code=code))
    assert info.value.code is ErrorCode.BAD_FIELD
    assert "error.code: expected one of the ErrorCode values" in info.value.detail


def test_unknown_fields_are_ignored_for_forward_compatibility():
    msg = decode(wire(some_future_field=[1, 2, 3]))
    assert msg.task_id == "t"


def test_envelope_only():
    env = decode_envelope(wire(task_id=7))  # the body is bad, the envelope is fine
    assert (env.type, env.src, env.dst, env.id) == (MsgType.TASK_STARTED, "gpu-1", "brain", "m1")


@settings(max_examples=3000)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_error(data):
    try:
        decode(data)
    except ProtocolError:
        pass


@settings(max_examples=500)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "type",
                "id",
                "src",
                "dst",
                "ts",
                "task_id",
                "batch_id",
                "attempt_id",
                "pid",
                "telemetry",
            ]
        ),
        st.none()
        | st.integers(-(2**63), 2**63 - 1)
        | st.text(max_size=5)
        | st.sampled_from([1, "task.started", "heartbeat", "task.assign", {}, [], 1.5]),
    )
)
def test_arbitrary_maps_raise_only_protocol_error(fields):
    try:
        decode(msgpack.packb(fields))
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(messages, st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_corrupted_messages_raise_only_protocol_error(msg, position, garbage):
    data = bytearray(encode(msg))
    position %= len(data)
    data[position : position + len(garbage)] = garbage
    try:
        decode(bytes(data))
    except ProtocolError:
        pass


def test_deep_nesting_is_refused_not_crashing():
    data = b"\x91" * 100_000 + b"\x00"
    with pytest.raises(ProtocolError):
        decode(data)


# --- the snapshot's records ---------------------------------------------------------


def _in_snapshot(record: Any) -> SnapshotReply:
    kind = {WorkerInfo: "workers", BatchInfo: "batches", TaskInfo: "tasks"}[type(record)]
    return SnapshotReply(
        src="brain", dst="tui", id="1", ts=1.0, reply_to="r", rev=7, **{kind: (record,)}
    )


@pytest.mark.parametrize("cls", [WorkerInfo, BatchInfo, TaskInfo], ids=lambda c: c.__name__)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_of_every_snapshot_record(cls, data):
    rec = data.draw(record(cls))
    reply = _in_snapshot(rec)
    back = decode(encode(reply))
    assert back == reply
    (field,) = [f for f in ("workers", "batches", "tasks") if getattr(back, f)]
    assert type(getattr(back, field)[0]) is cls
    assert to_dict(reply)[field] == [rec.to_wire()]  # to_wire is the wire map


def test_round_trip_of_nested_snapshot_records():
    worker = WorkerInfo(
        name="gpu-1",
        state="hot",
        gpus=(1, 3),
        attempts=("B:a:1",),
        gpu=GpuGauges(available=True, temperature_c=67.0, vram_used_mb=5500, power_w=150.2),
    )
    goal = GoalInfo(state="reached", target=4, tolerance=1, succeeded=4, tried=6, cap=12)
    batch = BatchInfo(id="B", state="complete", counts={"done": 3}, goal=goal)
    task = TaskInfo(batch_id="B", id="a", state="done", task_class="llm", exit_code=0)
    reply = SnapshotReply(
        src="brain", reply_to="r", rev=3, workers=(worker,), batches=(batch,), tasks=(task,)
    )
    back = decode(encode(reply))
    assert back == reply
    assert back.workers[0].gpu == worker.gpu and back.batches[0].goal == goal
    assert worker.to_wire()["gpus"] == [1, 3] and worker.to_wire()["gpu"]["power_w"] == 150.2
    assert batch.to_wire()["goal"] == {
        "state": "reached",
        "target": 4,
        "tolerance": 1,
        "succeeded": 4,
        "tried": 6,
        "cap": 12,
        "rounds": 1,
        "round_cap": 0,
        "reason": "",
    }


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda w: w["workers"][0].update(slots="two"), "workers[0].slots: expected an integer"),
        (lambda w: w["workers"][0].pop("state"), "workers[0]: missing field 'state'"),
        (lambda w: w["batches"][0].update(state="paused"), "batches[0].state: expected one of"),
        (lambda w: w["batches"][0]["goal"].pop("target"), "batches[0].goal: missing field"),
        (lambda w: w["tasks"].append("t"), "tasks[1]: expected a map, got 't'"),
    ],
)
def test_a_malformed_snapshot_is_refused_naming_the_entry(change, says):
    goal = GoalInfo(state="running", target=2)
    wire_map = to_dict(
        SnapshotReply(
            src="brain",
            reply_to="r",
            rev=3,
            workers=(WorkerInfo(name="w", state="cold"),),
            batches=(BatchInfo(id="B", state="running", goal=goal),),
            tasks=(TaskInfo(batch_id="B", id="a", state="ready"),),
        )
    )
    change(wire_map)
    with pytest.raises(ProtocolError) as info:
        decode(msgpack.packb(wire_map))
    assert f"snapshot.reply.{says}" in str(info.value)


def test_every_message_class_has_its_decoder_and_encoder_fields():
    # They are made on first use (a short-lived tool builds only what it needs):
    # each must still build, or a bad annotation would surface only on the wire.
    from llmo.proto import codec
    from llmo.proto.messages import MESSAGE_CLASSES

    for msg_type, cls in MESSAGE_CLASSES.items():
        assert callable(codec._BUILDERS[msg_type]), msg_type
        assert codec._ENCODER_FIELDS[cls], cls
