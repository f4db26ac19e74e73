"""What the operator tools say when the input or the link is wrong: one line, never a traceback."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import zmq

from llmo.cli.watch import BatchView, follow
from llmo.proto.codec import encode
from llmo.proto.pubsub import Subscriber
from tests.test_watch import event, snapshot
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


def llmo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-P", "-m", "llmo.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=50,
        stdin=subprocess.DEVNULL,
    )


def test_host_port_is_taken_as_tcp_and_nonsense_is_named():
    from llmo.proto.endpoints import EndpointError, connect_endpoint

    assert connect_endpoint("127.0.0.1:5555") == "tcp://127.0.0.1:5555"
    assert connect_endpoint(" tcp://rig.local:5555 ") == "tcp://rig.local:5555"
    assert connect_endpoint("ipc:///tmp/llmo.sock") == "ipc:///tmp/llmo.sock"
    for bad in ("127.0.0.1", "http://rig:5555", "tcp://rig:port", "rig:0", ""):
        with pytest.raises(EndpointError) as caught:
            connect_endpoint(bad, "--broker")
        assert "--broker" in str(caught.value) and "tcp://HOST:PORT" in str(caught.value)


@pytest.mark.parametrize("command", ["status", "watch", "cancel", "tui"])
def test_a_bad_endpoint_is_one_line_and_exit_2(command):
    extra = ["B"] if command in ("watch", "cancel") else []
    done = llmo(command, *extra, "--broker", "127.0.0.1", "--timeout", "0.5")
    if command == "tui":
        done = llmo(command, "--broker", "127.0.0.1")
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "'127.0.0.1'" in lines[0] and "tcp://HOST:PORT" in lines[0]


def test_status_without_tcp_prefix_reaches_the_broker(broker_factory):
    broker = broker_factory()
    bare = broker.endpoint.removeprefix("tcp://")
    done = llmo("status", "--broker", bare, "--timeout", "0.5")
    assert "Traceback" not in done.stderr
    assert "no brain is connected" in done.stderr, done.stderr
    assert done.returncode == 1


def test_the_monitor_never_exits_0_after_a_crash(monkeypatch, capsys):
    from llmo.cli import main as cli_main
    from llmo.tui import app as tui_app

    def crash(self, *args, **kwargs):
        raise RuntimeError("the terminal went away")

    monkeypatch.setattr(tui_app.MonitorApp, "run", crash)
    # The monitor quiets llmo's loggers for the screen's sake; in this process the
    # later tests need them as they were (their log capture reads them).
    quiet = logging.getLogger("llmo")
    monkeypatch.setattr(quiet, "propagate", quiet.propagate)
    monkeypatch.setattr(quiet, "handlers", list(quiet.handlers))
    code = cli_main.main(["tui", "--broker", "tcp://127.0.0.1:1"])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the terminal went away" in err[0]


def test_a_malformed_publication_does_not_stop_the_watch():
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    try:
        # PUB drops what is sent before the subscription is in: wait until one gets through.
        assert wait_until(lambda: pub.send_multipart([b"x", b"1"]) or sub.socket.poll(50))
        garbage = [[b"batch.event", b"junk"], [b"batch.event", b"\0" * 8, b"\xc1not msgpack"]]
        for frames in garbage:
            pub.send_multipart(frames)
        good = event(7, name="batch_completed", state="complete", counts={"done": 1})
        pub.send_multipart([b"batch.event", (9).to_bytes(8, "big"), encode(good)])
        snaps = [snapshot(1)]
        view = follow(
            BatchView("B"), sub, lambda: snaps.pop(0) if snaps else None, None, resync_s=30
        )
        assert view.finished and view.state == "complete"
    finally:
        sub.close()
        pub.close(linger=0)


def test_load_reads_the_failure_from_the_snapshot_when_its_event_was_lost():
    from llmo.cli.control_cmd import Follow, _judge_load
    from llmo.proto.messages import WorkerInfo

    follow = Follow(session=None, worker="cpu-1")  # type: ignore[arg-type]
    judge = _judge_load(follow, "/no/model.gguf")
    info = WorkerInfo(
        name="cpu-1",
        state="cold",
        load_failed="/no/model.gguf",
        load_error="model file /no/model.gguf does not exist",
    )
    assert judge(info) == (
        False,
        "cpu-1 failed to load /no/model.gguf: model file /no/model.gguf does not exist",
    )
    # a failure of another model is not this load's outcome
    other = WorkerInfo(name="cpu-1", state="cold", load_failed="x.gguf", load_error="gone")
    assert judge(other) is None


class ScriptedRig:
    """Answers a tool's questions as ``llmo up`` and the brain would: the supervisor's
    report of its children, the brain's snapshot (an in-memory stand-in)."""

    def __init__(self, child_pid: int, workers: tuple) -> None:
        from llmo.proto.messages import ChildInfo, SupervisorReport

        self.report = SupervisorReport(
            reply_to="",
            children=(ChildInfo(name="cpu-1", state="running", pid=child_pid),),
        )
        self.workers = workers

    def ask(self, msg):
        from llmo.proto.messages import SnapshotReply, SnapshotRequest

        if isinstance(msg, SnapshotRequest):
            return SnapshotReply(reply_to="", rev=1, workers=self.workers)
        return self.report


def test_restart_sees_the_worker_back_in_the_snapshot_when_its_event_was_lost(monkeypatch):
    from llmo.cli import restart_cmd
    from llmo.proto.messages import WorkerInfo

    # The worker registered before the subscription took effect: no event comes.
    monkeypatch.setattr(restart_cmd, "_registered", lambda subscriber, name, seconds: False)
    monkeypatch.setattr(restart_cmd, "POLL_S", 0.01)
    back = ScriptedRig(4242, (WorkerInfo(name="cpu-1", state="cold", pid=4242),))
    assert restart_cmd.wait_back(back, None, "cpu-1", 5.0) == (  # type: ignore[arg-type]
        True,
        "cpu-1 registered with the brain again",
    )
    # the brain still lists the process that was given up on: not back yet
    old = WorkerInfo(name="cpu-1", state="down", presence="down", pid=1111)
    ok, sentence = restart_cmd.wait_back(ScriptedRig(4242, (old,)), None, "cpu-1", 0.3)  # type: ignore[arg-type]
    assert not ok and "has not registered with the brain within 0.3 s" in sentence
