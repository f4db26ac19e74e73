"""Bind lists and bind failures: ``llmo broker`` and ``llmo up`` as real processes.

An endpoint flag may name a list (``,`` or ``;`` between endpoints): each one
is checked alone (a plain-TCP bind beyond loopback needs keys or
``--insecure``), and an endpoint that cannot be bound stops the broker with
exit code 2 and one line naming it. ``llmo up`` takes that exit as a
configuration error: it stops the rig and says why instead of restarting.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from llmo.cli.supervisor import CONFIG_ERROR_EXIT, RestartPolicy, Supervisor
from llmo.proto.endpoints import EndpointError, bind_list, local_endpoint
from tests.e2e_fixtures import free_port, llmo_argv
from tests.waiting import wait_for


def broker(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*llmo_argv(), "broker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_bind_list_splits_and_checks_each_endpoint():
    assert bind_list("tcp://127.0.0.1:5555") == ["tcp://127.0.0.1:5555"]
    assert bind_list("tcp://127.0.0.1:5555, ipc:///tmp/b;tcp://10.0.0.2:*") == [
        "tcp://127.0.0.1:5555",
        "ipc:///tmp/b",
        "tcp://10.0.0.2:*",
    ]
    for bad, named in [
        ("tcp://0.0.0.0:5555;127.0.0.1:5556", "127.0.0.1:5556"),  # connect's source;dest form
        ("tcp://127.0.0.1:5555,,tcp://127.0.0.1:5556", "empty"),
        ("tcp://127.0.0.1", "tcp://127.0.0.1"),
        ("tcp://127.0.0.1:99999", "tcp://127.0.0.1:99999"),
        ("udp://127.0.0.1:5555", "udp://127.0.0.1:5555"),
        ("tcp://:5555", "tcp://:5555"),
    ]:
        with pytest.raises(EndpointError, match=named):
            bind_list(bad)


def test_local_endpoint_is_the_loopback_one_of_a_list():
    assert local_endpoint("tcp://10.0.0.2:5555,tcp://127.0.0.1:5557") == "tcp://127.0.0.1:5557"
    assert local_endpoint("tcp://0.0.0.0:5555") == "tcp://127.0.0.1:5555"
    assert local_endpoint("tcp://*:5555;tcp://10.0.0.2:5556") == "tcp://127.0.0.1:5555"
    assert local_endpoint("ipc:///run/llmo/broker") == "ipc:///run/llmo/broker"


def test_broker_refuses_a_list_with_an_exposed_plain_tcp_endpoint():
    exposed = f"tcp://0.0.0.0:{free_port()}"
    loop = f"tcp://127.0.0.1:{free_port()}"
    pub = f"tcp://127.0.0.1:{free_port()}"
    for value in (f"{loop};{exposed}", f"{exposed};{loop}", f"{loop},{exposed}"):
        done = broker("--broker", value, "--pub", pub)
        assert done.returncode == 2, done.stderr
        assert exposed in done.stderr and "without CurveZMQ keys" in done.stderr
    # The source;destination form (meant for connect) is refused, not bound.
    done = broker("--broker", f"{exposed};127.0.0.1:{free_port()}", "--pub", pub)
    assert done.returncode == 2, done.stderr


def test_broker_exits_2_naming_an_endpoint_it_cannot_bind():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
        free = f"tcp://127.0.0.1:{free_port()}"
        pub = f"tcp://127.0.0.1:{free_port()}"
        done = broker("--broker", f"{free},{busy}", "--pub", pub)
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.startswith("llmo broker:")]
        assert len(lines) == 1 and busy in lines[0] and "in use" in lines[0], done.stderr
        unknown = f"tcp://nosuchif0:{free_port()}"
        done = broker("--insecure", "--broker", free, "--pub", f"{pub},{unknown}")
        assert done.returncode == 2, done.stderr
        assert f"cannot bind the PUB endpoint {unknown}" in done.stderr, done.stderr


def test_up_stops_the_rig_when_the_broker_cannot_bind(tmp_path):
    unbindable = f"tcp://nosuchif0:{free_port()}"
    argv = [
        *llmo_argv(),
        "up",
        "--insecure",
        "--workers",
        "0",
        "--no-brain-worker",
        "--model",
        str(tmp_path / "none.gguf"),
        "--rig-dir",
        str(tmp_path / "rig"),
        "--broker",
        f"tcp://127.0.0.1:{free_port()},{unbindable}",
        "--pub",
        f"tcp://127.0.0.1:{free_port()}",
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout
        raise AssertionError(f"llmo up kept running (restart loop?):\n{out}") from None
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "restarting in" not in output, output
    assert unbindable in done.stderr and "broker" in done.stderr, output


def test_supervisor_does_not_restart_a_configuration_error(tmp_path):
    said: list[str] = []
    sup = Supervisor(RestartPolicy(base_delay_s=0.01), say=said.append)
    script = "import sys; print('llmo broker: cannot bind tcp://x:1: No such device'); sys.exit(2)"
    child = sup.add("broker", [sys.executable, "-c", script], tmp_path / "broker.log")

    def stopped() -> bool:
        sup.poll()
        return sup.config_error is not None

    wait_for(stopped, 30, "the supervisor to see the configuration error", poll_s=0.01)
    assert sup.config_error == ("broker", "llmo broker: cannot bind tcp://x:1: No such device")
    assert child.exit_codes == [CONFIG_ERROR_EXIT] and child.restarts == []
    assert "configuration error" in said[-1] and "tcp://x:1" in said[-1]
    for _ in range(3):
        sup.poll()
    assert child.restarts == [] and not child.running
