"""Reconnects, held results, drain and stop: the worker's life around the broker and brain."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys

import pytest

from llmo.proto.client import Client
from llmo.proto.errors import ErrorCode
from llmo.proto.messages import (
    Ack,
    Acks,
    Error,
    Heartbeat,
    Register,
    TaskAssign,
    TaskAssigns,
    TaskDone,
    TaskFailed,
    TaskStarted,
    WorkerDrain,
)
from llmo.worker.link import Link
from tests.waiting import wait_for, wait_until
from tests.worker_fixtures import (  # noqa: F401  (fixtures)
    brain_factory,
    fixed_broker,
    worker_factory,
)

pytestmark = pytest.mark.timeout(90)


def job(tmp_path, task_id, command, **fields) -> TaskAssign:
    return TaskAssign(
        dst=fields.pop("dst", "gpu-t"),
        batch_id="b",
        task_id=task_id,
        attempt_id=f"b:{task_id}:1",
        task_class="cpu",
        command=command,
        batch_path=str(tmp_path),
        **fields,
    )


def test_a_result_finished_while_the_broker_was_down_arrives_after_it_restarts(
    fixed_broker,  # noqa: F811
    brain_factory,  # noqa: F811
    worker_factory,  # noqa: F811
    tmp_path,
):
    fixed_broker.start()
    brain = brain_factory(fixed_broker.endpoint)
    running = worker_factory(fixed_broker.endpoint)
    brain.expect(Register, src="gpu-t")
    msg = brain.send(job(tmp_path, "through", "sleep 1.5; echo made it"))
    brain.expect(TaskStarted, attempt_id=msg.attempt_id)

    fixed_broker.stop()
    link = running.worker.link
    assert wait_until(lambda: not link.connected, 5)
    assert wait_until(lambda: link.held >= 1 and not running.worker.attempts.running, 10)
    fixed_broker.start()

    register = brain.expect(Register, src="gpu-t", timeout=20)
    assert register.slots == 1
    done = brain.expect(TaskDone, attempt_id=msg.attempt_id, timeout=20)
    assert "made it" in done.log_tail
    assert wait_until(lambda: link.held == 0, 10)


def test_results_wait_for_a_brain_that_is_not_there_yet(
    running_broker,
    brain_factory,  # noqa: F811
    worker_factory,  # noqa: F811
    tmp_path,
    caplog,
):
    running = worker_factory(running_broker.endpoint)
    running_broker.wait_heard("gpu-t")
    with caplog.at_level(logging.WARNING, logger="llmo.worker.link"):
        # A short-lived client named brain assigns, then goes before the result.
        sender = Client("brain", running_broker.endpoint)
        sender.send(job(tmp_path, "early", "sleep 1; echo early bird"))
        link = running.worker.link
        assert wait_until(lambda: running.worker.attempts.running, 10)
        heard = len(caplog.records)  # the assignment came from the brain: it was there
        sender.close()
        assert wait_until(lambda: link.brain_missing and link.held >= 1, 10)
        refused = running_broker.stats.refused
        into_the_void = refused[ErrorCode.UNKNOWN_DESTINATION] + 3
        wait_for(
            lambda: refused[ErrorCode.UNKNOWN_DESTINATION] >= into_the_void,
            10,
            "three more heartbeats refused for want of a brain",
        )
    missing = [r for r in caplog.records[heard:] if "brain is not reachable" in r.getMessage()]
    assert len(missing) == 1  # said once, not once per heartbeat

    brain = brain_factory(running_broker.endpoint)
    brain.expect(Register, src="gpu-t", timeout=10)
    done = brain.expect(TaskDone, attempt_id="b:early:1", timeout=10)
    assert "early bird" in done.log_tail
    assert wait_until(lambda: not link.brain_missing and link.held == 0, 10)


def test_drain_finishes_running_work_and_refuses_new(
    running_broker,
    brain_factory,  # noqa: F811
    worker_factory,  # noqa: F811
    tmp_path,
):
    brain = brain_factory(running_broker.endpoint)
    worker_factory(running_broker.endpoint, slots=2)
    brain.heartbeat("gpu-t", state="cold")
    running = brain.send(job(tmp_path, "finishing", "sleep 1"))
    brain.expect(TaskStarted, attempt_id=running.attempt_id)
    brain.send(WorkerDrain(dst="gpu-t", worker="gpu-t"))
    brain.heartbeat("gpu-t", state="draining")
    late = brain.send(job(tmp_path, "late", "true"))
    refused = brain.expect(TaskFailed, attempt_id=late.attempt_id)
    assert refused.reason == "refused" and "draining" in refused.error
    brain.expect(TaskDone, attempt_id=running.attempt_id)
    brain.send(WorkerDrain(dst="gpu-t", worker="gpu-t", drain=False))
    brain.heartbeat("gpu-t", state="cold")
    again = brain.send(job(tmp_path, "again", "true"))
    brain.expect(TaskDone, attempt_id=again.attempt_id)


def test_sigterm_drains_then_aborts_what_is_left_and_exits(
    running_broker,
    brain_factory,  # noqa: F811
    tmp_path,
):
    brain = brain_factory(running_broker.endpoint)
    command = [
        sys.executable,
        "-m",
        "llmo.cli.main",
        "worker",
        "--name",
        "gpu-cli",
        "--broker",
        running_broker.endpoint,
        "--slots",
        "2",
        "--interval",
        "0.2",
        "--stop-deadline",
        "1",
        "--log-level",
        "WARNING",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "should-be-replaced"}
    proc = subprocess.Popen(command, env=env, cwd=os.getcwd())
    try:
        register = brain.expect(Register, src="gpu-cli", timeout=30)
        assert register.pid == proc.pid and register.gpus == ()
        quick = brain.send(job(tmp_path, "quick", "sleep 0.5", dst="gpu-cli"))
        stuck = brain.send(
            job(tmp_path, "stuck", "echo $CUDA_VISIBLE_DEVICES; sleep 300", dst="gpu-cli")
        )
        brain.expect(TaskStarted, attempt_id=stuck.attempt_id)
        proc.send_signal(signal.SIGTERM)
        brain.heartbeat("gpu-cli", state="draining")
        brain.expect(TaskDone, attempt_id=quick.attempt_id)
        failed = brain.expect(TaskFailed, attempt_id=stuck.attempt_id)
        assert failed.reason == "interrupted" and failed.log_tail.strip() == ""
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_exit_when_idle(running_broker, tmp_path):
    command = [
        sys.executable,
        "-m",
        "llmo.cli.main",
        "worker",
        "--name",
        "gpu-idle",
        "--broker",
        running_broker.endpoint,
        "--exit-when-idle",
        "0.5",
        "--log-level",
        "ERROR",
    ]
    proc = subprocess.Popen(command)
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the link's bookkeeping, without sockets ---------------------------------------------


class Wire:
    """Stands in for ``Client.send``: stamps ids and records what went out."""

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, msg):
        stamped = dataclasses.replace(msg, id=f"m{len(self.sent) + 1}")
        self.sent.append(stamped)
        return stamped


def result(n: int) -> TaskDone:
    return TaskDone(dst="brain", batch_id="b", task_id=f"t{n}", attempt_id=f"b:t{n}:1")


def unroutable(reply_to: str) -> Error:
    return Error(code=ErrorCode.UNKNOWN_DESTINATION, reply_to=reply_to, peer="brain", src="broker")


def make_link(wire: Wire) -> Link:
    return Link(wire.send, lambda: Register(dst="brain"), confirm_s=2.0, hold_s=60.0, probe_s=0.5)


def test_a_result_is_held_until_acknowledged_and_a_start_until_confirmed():
    wire = Wire()
    link = make_link(wire)
    link.deliver(result(1), now=0.0)
    link.deliver(result(2), now=0.0)
    link.deliver(TaskStarted(dst="brain", batch_id="b", task_id="t3", attempt_id="b:t3:1"), 0.0)
    assert [m.task_id for m in wire.sent] == ["t1", "t2", "t3"] and link.held == 3
    link.on_ack(Ack(reply_to="m2"))
    assert link.held == 2
    link.tick(1.0)
    assert link.held == 2  # not yet: an error could still come back
    link.tick(2.5)
    assert link.held == 1  # the start is confirmed by silence; the result needs its Ack
    assert [m.task_id for m in wire.sent[3:]] == ["t1"]  # and went again meanwhile
    link.on_ack(Ack(reply_to="m1"))
    assert link.held == 0


def test_an_undeliverable_result_waits_for_the_brain_and_goes_again():
    wire = Wire()
    link = make_link(wire)
    link.deliver(result(1), now=0.0)
    assert link.on_error(unroutable("m1"), now=0.01)
    assert link.brain_missing
    link.deliver(result(2), now=0.5)  # held without sending while the brain is missing
    assert len(wire.sent) == 1
    heartbeat = wire.send(Heartbeat(dst="brain"))
    link.probe(heartbeat.id, now=1.0)
    link.on_error(unroutable(heartbeat.id), now=1.01)
    link.tick(2.0)
    assert link.brain_missing  # the probe drew an error: still missing
    heartbeat = wire.send(Heartbeat(dst="brain"))
    link.probe(heartbeat.id, now=3.0)
    link.tick(3.6)  # no error for the probe: the brain is back
    assert not link.brain_missing
    assert [type(m).__name__ for m in wire.sent[-3:]] == ["Register", "TaskDone", "TaskDone"]
    assert [m.task_id for m in wire.sent[-2:]] == ["t1", "t2"]


def test_results_are_sent_again_after_a_broker_reconnect():
    wire = Wire()
    link = make_link(wire)
    link.deliver(result(1), now=0.0)
    link.on_disconnected()
    link.deliver(result(2), now=1.0)
    assert len(wire.sent) == 1  # nothing is queued into a dead connection
    link.tick(5.0)
    assert link.held == 2  # sent before the disconnect, so not confirmed
    link.on_connected(now=6.0)
    assert [type(m).__name__ for m in wire.sent[1:]] == ["Register", "TaskDone", "TaskDone"]


def test_nothing_is_held_forever():
    wire = Wire()
    link = make_link(wire)
    link.on_disconnected()
    link.deliver(result(1), now=0.0)
    link.tick(61.0)
    assert link.held == 0


def test_assignments_and_acks_bundled_by_the_brain_are_each_handled(
    running_broker,
    brain_factory,  # noqa: F811
    worker_factory,  # noqa: F811
    tmp_path,
):
    brain = brain_factory(running_broker.endpoint)
    brain.ack_results = False
    running = worker_factory(running_broker.endpoint, slots=2)
    brain.expect(Register, src="gpu-t")
    jobs = (job(tmp_path, "one", "echo one"), job(tmp_path, "two", "echo two"))
    brain.send(TaskAssigns(dst="gpu-t", assigns=jobs))
    done = [brain.expect(TaskDone, attempt_id=j.attempt_id) for j in jobs]
    assert [d.log_tail.strip() for d in done] == ["one", "two"]
    link = running.worker.link
    assert wait_until(lambda: link.awaiting_ack == 2, 10)
    brain.send(Acks(dst="gpu-t", reply_to=tuple(d.id for d in done)))
    assert wait_until(lambda: link.awaiting_ack == 0, 10)
    # a chain's hop: the result's ack and the next assignment in one message
    third = job(tmp_path, "three", "echo three")
    brain.send(TaskAssigns(dst="gpu-t", assigns=(third,)))
    three = brain.expect(TaskDone, attempt_id=third.attempt_id)
    assert wait_until(lambda: link.awaiting_ack == 1, 10)
    fourth = job(tmp_path, "four", "echo four")
    brain.send(TaskAssigns(dst="gpu-t", assigns=(fourth,), acks=(three.id,)))
    brain.expect(TaskDone, attempt_id=fourth.attempt_id)
    assert wait_until(lambda: link.awaiting_ack == 1, 10), "three's ack taken, four's awaited"
