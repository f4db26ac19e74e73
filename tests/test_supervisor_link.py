"""``llmo up``'s supervisor on the broker: who may ask it what, and what it answers.

Real sockets on loopback, a broker in a thread, the supervisor's link served
from the test between requests, real child processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llmo.broker.roles import Roles
from llmo.cli.supervisor import RestartPolicy, Supervisor
from llmo.cli.up_link import UpLink
from llmo.proto import BRAIN, BROKER, ErrorCode, Heartbeat
from llmo.proto.endpoints import Endpoints
from llmo.proto.messages import (
    SUPERVISOR,
    Ack,
    ChildRestart,
    Error,
    Message,
    SupervisorQuery,
    SupervisorReport,
)
from llmo.proto.security import ClientKeys, ServerKeys, curve_available, generate
from llmo.proto.session import Session, ToolError
from tests.waiting import wait_for

WORKERS = Roles(workers=frozenset({"cpu-1"}))
needs_curve = pytest.mark.skipif(not curve_available(), reason="libzmq built without CURVE")


@pytest.fixture
def supervisor(tmp_path):
    sup = Supervisor(RestartPolicy(max_restarts=1, window_s=600, base_delay_s=0.01))
    sup.add("cpu-1", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "c1.log")
    crasher = sup.add(
        "cpu-2",
        [
            sys.executable,
            "-c",
            "print('CUDA error: out of memory', flush=True); raise SystemExit(1)",
        ],
        tmp_path / "c2.log",
    )

    def given_up() -> bool:
        sup.poll()
        return crasher.given_up

    wait_for(given_up, 30, "the supervisor to give up on cpu-2", poll_s=0.01)
    yield sup
    sup.stop(timeout=2.0)


def ask(link: UpLink, tool, msg: Message) -> Message | None:
    """Send ``msg`` from ``tool``, let the supervisor serve, return the reply to it."""
    sent = tool.send(msg)
    for _ in range(50):
        link.serve(0.1)
        reply = tool.recv(timeout=0.05)
        while reply is not None:
            if getattr(reply, "reply_to", None) == sent.id:
                return reply
            reply = tool.recv(timeout=0.05)
    return None


def joined(running, link: UpLink) -> None:
    link.serve(0.05)
    running.wait_heard(SUPERVISOR)


def test_the_supervisor_reports_and_restarts_only_a_child_given_up_on(
    broker_factory, client_factory, supervisor
):
    running = broker_factory(interval=0.2, liveness=100, roles=WORKERS)
    link = UpLink(supervisor, running.endpoint, keys=None, rig_dir="/rig")
    try:
        joined(running, link)
        tool = client_factory("status-1", running.endpoint)
        report = ask(link, tool, SupervisorQuery(dst=SUPERVISOR))
        assert isinstance(report, SupervisorReport), report
        states = {c.name: (c.state, c.reason) for c in report.children}
        assert states["cpu-1"] == ("running", "")
        assert states["cpu-2"] == ("given_up", "CUDA error: out of memory")
        assert (report.max_restarts, report.window_s, report.rig_dir) == (1, 600, "/rig")

        for name, why in [
            ("cpu-1", "running"),
            ("/bin/sh -c 'rm -rf /'", "no child named"),
            ("", "no child named"),
        ]:
            reply = ask(link, tool, ChildRestart(dst=SUPERVISOR, child=name))
            assert isinstance(reply, Ack) and not reply.ok and why in reply.detail, reply
        cpu1 = supervisor.children["cpu-1"]
        assert cpu1.process is not None and cpu1.running

        reply = ask(link, tool, ChildRestart(dst=SUPERVISOR, child="cpu-2"))
        assert isinstance(reply, Ack) and reply.ok and "cpu-2 restarted" in reply.detail, reply
        assert not supervisor.children["cpu-2"].given_up
    finally:
        link.close()


def test_supervisor_requests_go_to_the_supervisor_and_come_from_tools_only(
    broker_factory, client_factory, supervisor
):
    running = broker_factory(interval=0.2, liveness=100, roles=WORKERS)
    link = UpLink(supervisor, running.endpoint, keys=None)
    try:
        joined(running, link)
        tool = client_factory("tui-1", running.endpoint)
        worker = client_factory("cpu-1", running.endpoint)
        refused = [
            (tool, ChildRestart(dst=BRAIN, child="cpu-2")),  # only to the supervisor
            (tool, SupervisorReport(dst=BROKER)),  # a tool cannot publish a report
            (worker, ChildRestart(dst=SUPERVISOR, child="cpu-2")),  # a worker cannot ask
        ]
        for sender, msg in refused:
            reply = sender.request(msg, timeout=5)
            assert isinstance(reply, Error) and reply.code == ErrorCode.FORBIDDEN, (msg, reply)
        link.serve(0.3)
        assert supervisor.children["cpu-2"].given_up, "a refused request restarted cpu-2"
        # A second connection cannot take the supervisor's name while it is live.
        impostor = client_factory(SUPERVISOR, running.endpoint)
        reply = impostor.request(Heartbeat(dst=BROKER), timeout=5)
        assert isinstance(reply, Error) and reply.code == ErrorCode.NAME_IN_USE, reply
    finally:
        link.close()


@needs_curve
def test_no_tool_key_can_pose_as_the_supervisor(broker_factory, client_factory, tmp_path):
    keys_dir = tmp_path / "keys"
    generate(keys_dir, [BRAIN, SUPERVISOR, "cpu-1", "pi"])
    running = broker_factory(
        keys=ServerKeys.load(keys_dir), interval=0.2, liveness=100, roles=WORKERS
    )
    for key in ("pi", "cpu-1"):
        fake = client_factory(SUPERVISOR, running.endpoint, keys=ClientKeys.load(keys_dir, key))
        assert fake.name == f"{SUPERVISOR}@{key}"
        fake.name = SUPERVISOR  # speak as the supervisor with another key
        reply = fake.request(Heartbeat(dst=BROKER), timeout=5)
        assert isinstance(reply, Error) and reply.code == ErrorCode.SPOOFED_SOURCE, (key, reply)
    real = client_factory(SUPERVISOR, running.endpoint, keys=ClientKeys.load(keys_dir, SUPERVISOR))
    assert real.request(Heartbeat(dst=BROKER), timeout=0.5) is None  # accepted silently
    running.wait_heard(SUPERVISOR)


@pytest.mark.parametrize("systemd", [False, True])
def test_without_llmo_up_the_answer_says_so(broker_factory, client_factory, systemd):
    running = broker_factory(interval=0.2, liveness=100, roles=WORKERS, systemd=systemd)
    tool = client_factory("restart-1", running.endpoint)
    session = Session(Endpoints(running.endpoint, running.pub_endpoint), tool, timeout=5)
    with pytest.raises(ToolError) as refused:
        session.control(ChildRestart(dst=SUPERVISOR, child="cpu-1"))
    text = str(refused.value)
    assert "sudo systemctl restart llmo-worker@NAME" in text
    if systemd:
        assert text.startswith("this rig runs as systemd units, not under `llmo up`")
    else:
        assert text.startswith("no `llmo up` supervisor is connected to the broker at")


def test_a_report_is_published_when_a_child_changes(broker_factory, supervisor, tmp_path: Path):
    from llmo.proto.messages import MsgType
    from llmo.proto.pubsub import Subscriber, topic

    running = broker_factory(interval=0.2, liveness=100, roles=WORKERS)
    sub = Subscriber(running.pub_endpoint, topics=(topic(MsgType.SUPERVISOR_REPORT),))
    link = UpLink(supervisor, running.endpoint, keys=None)
    try:

        def heard() -> SupervisorReport | None:
            link.publish(force=True)
            got = sub.recv(timeout=0.2)
            return got.message if got and isinstance(got.message, SupervisorReport) else None

        report = wait_for(heard, 10, "a published supervisor report")
        assert {c.name: c.state for c in report.children}["cpu-2"] == "given_up"
    finally:
        sub.close()
        link.close()
