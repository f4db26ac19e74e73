"""Keys on disk, the plain-text bind rule, and how processes and tools find their keys."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth

from llmo.broker.service import Broker
from llmo.cli.main import main
from llmo.cli.tools import add_tool_flags, open_session, tool_setup
from llmo.proto.client import Client
from llmo.proto.endpoints import Endpoints
from llmo.proto.messages import BRAIN, SnapshotRequest
from llmo.proto.security import (
    ClientKeys,
    SecurityError,
    ServerKeys,
    allowed_keys,
    check_bind,
    curve_available,
    generate,
    is_loopback,
    process_keys,
    use_keys,
)
from llmo.proto.session import Session, ToolError

pytestmark = pytest.mark.skipif(not curve_available(), reason="libzmq built without CURVE")

ROOT = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def keys_dir(tmp_path) -> Path:
    folder = tmp_path / "keys"
    generate(folder, ["brain", "gpu-1", "pi"])
    return folder


@pytest.fixture
def no_process_keys(monkeypatch):
    for name in ("LLMO_KEYS_DIR", "LLMO_KEY", "LLMO_CONFIG", "LLMO_BROKER", "LLMO_PUB"):
        monkeypatch.delenv(name, raising=False)
    use_keys(None)
    yield
    use_keys(None)


# --- files -----------------------------------------------------------------------------------


def test_generate_lays_out_pairs_and_the_allow_list(keys_dir):
    names = {p.name for p in keys_dir.iterdir()}
    assert names == {
        "broker.key",
        "broker.key_secret",
        "clients",
        "brain.key_secret",
        "gpu-1.key_secret",
        "pi.key_secret",
    }
    assert {p.name for p in (keys_dir / "clients").iterdir()} == {
        "brain.key",
        "gpu-1.key",
        "pi.key",
    }
    for secret in keys_dir.glob("*.key_secret"):
        assert mode(secret) == 0o600, secret
    assert mode(keys_dir) == 0o700
    # Standard ZeroMQ certificates: pyzmq reads them, and the pairs match.
    public, secret = zmq.auth.load_certificate(keys_dir / "gpu-1.key_secret")
    assert zmq.curve_public(secret) == public
    assert zmq.auth.load_certificate(keys_dir / "clients" / "gpu-1.key") == (public, None)
    assert allowed_keys(keys_dir / "clients")[public] == "gpu-1"


def test_generate_keeps_existing_pairs_unless_forced(keys_dir):
    before = (keys_dir / "pi.key_secret").read_text()
    done = generate(keys_dir, ["brain", "gpu-1", "pi", "gpu-2"])
    assert done == {
        "broker": "kept",
        "brain": "kept",
        "gpu-1": "kept",
        "pi": "kept",
        "gpu-2": "created",
    }
    assert (keys_dir / "pi.key_secret").read_text() == before
    generate(keys_dir, ["pi"], force=True)
    assert (keys_dir / "pi.key_secret").read_text() != before


def test_a_secret_others_can_read_is_refused(keys_dir):
    (keys_dir / "pi.key_secret").chmod(0o644)
    with pytest.raises(SecurityError, match=r"chmod 600 .*pi\.key_secret"):
        ClientKeys.load(keys_dir, "pi")


def test_missing_keys_say_what_to_run(keys_dir, tmp_path):
    with pytest.raises(SecurityError, match=r"no key pair for 'gpu-7'.*llmo keys generate"):
        ClientKeys.load(keys_dir, "gpu-7")
    with pytest.raises(SecurityError, match="no key pair"):
        ServerKeys.load(tmp_path / "elsewhere")
    pi_only = tmp_path / "pi-side"
    pi_only.mkdir()
    (pi_only / "pi.key_secret").write_bytes((keys_dir / "pi.key_secret").read_bytes())
    (pi_only / "pi.key_secret").chmod(0o600)
    with pytest.raises(SecurityError, match="broker public key"):
        ClientKeys.load(pi_only, "pi")


def test_llmo_keys_generate_makes_a_pair_per_worker_of_the_config(tmp_path, capsys):
    folder = tmp_path / "k"
    example = str(ROOT / "deploy" / "llmo.example.toml")
    assert main(["keys", "generate", str(folder), "--config", example, "--name", "laptop"]) == 0
    out = capsys.readouterr().out
    for name in ("broker", "brain", "brain-llm", "gpu-1", "gpu-2", "gpu-4", "pi", "laptop"):
        assert f"created  {name}" in out
        if name != "broker":
            assert (folder / "clients" / f"{name}.key").exists()
    assert "the Pi needs    broker.key pi.key_secret" in out
    assert main(["keys", "generate", str(folder), "--name", "no/slash"]) == 2


# --- binding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.0.0.1:*", True),
        ("tcp://127.3.2.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("tcp://lo:5555", True),
        ("ipc:///tmp/llmo.sock", True),
        ("inproc://broker", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://10.0.0.2:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://[::]:5555", False),
        ("tcp://rig.local:5555", False),
        ("tcp://127.0.0.1;10.0.0.2:5555", False),
        ("udp://127.0.0.1:5555", False),
    ],
)
def test_what_counts_as_loopback(endpoint, loopback):
    assert is_loopback(endpoint) is loopback


def test_a_non_loopback_bind_without_keys_is_refused():
    with pytest.raises(SecurityError, match="--insecure"):
        Broker("tcp://0.0.0.0:*", "tcp://127.0.0.1:*")
    check_bind(["tcp://127.0.0.1:5555", "ipc:///tmp/x"], None, insecure=False)


def test_insecure_or_keys_allow_a_non_loopback_bind(keys_dir):
    for kwargs in ({"insecure": True}, {"keys": ServerKeys.load(keys_dir)}):
        broker = Broker("tcp://0.0.0.0:*", "tcp://0.0.0.0:*", **kwargs)
        try:
            assert broker.router_endpoint.startswith("tcp://0.0.0.0:")
        finally:
            broker.close()


def _free_port() -> int:
    with zmq.Context() as ctx, ctx.socket(zmq.REP) as sock:
        return sock.bind_to_random_port("tcp://127.0.0.1")


def test_llmo_broker_refuses_a_plain_non_loopback_bind_unless_insecure(no_process_keys):
    endpoints = [
        "--broker",
        f"tcp://0.0.0.0:{_free_port()}",
        "--pub",
        f"tcp://0.0.0.0:{_free_port()}",
    ]
    command = [sys.executable, "-m", "llmo.cli.main", "broker", *endpoints]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert refused.returncode == 2
    assert "refusing to bind" in refused.stderr and "--insecure" in refused.stderr

    proc = subprocess.Popen([*command, "--insecure"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stderr is not None
        lines = []
        deadline = time.monotonic() + 30
        # The start-up lines: where it routes, its roles, then whether CurveZMQ is on.
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "CurveZMQ" in line or not line:
                break
        assert any("broker routing on tcp://0.0.0.0:" in line for line in lines), lines
        assert any("CurveZMQ off" in line for line in lines), lines
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()


# --- which keys a process uses ---------------------------------------------------------------


def test_sockets_take_the_process_keys(keys_dir, no_process_keys, zmq_context):
    plain = Client("gpu-1", "tcp://127.0.0.1:1", context=zmq_context)
    assert plain.keys is None and plain.socket.getsockopt(zmq.MECHANISM) == zmq.NULL
    plain.close()
    keys = ClientKeys.load(keys_dir, "gpu-1")
    use_keys(keys)
    client = Client("gpu-1", "tcp://127.0.0.1:1", context=zmq_context)
    try:
        assert client.keys == keys
        assert client.socket.getsockopt(zmq.MECHANISM) == zmq.CURVE
    finally:
        client.close()


def test_the_environment_names_the_keys_of_a_tool(keys_dir, no_process_keys, monkeypatch):
    monkeypatch.setenv("LLMO_KEYS_DIR", str(keys_dir))
    assert process_keys().name == "pi"
    monkeypatch.setenv("LLMO_KEY", "gpu-1")
    assert process_keys().name == "gpu-1"


def _tool_args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--broker")
    parser.add_argument("--pub")
    add_tool_flags(parser)
    return parser.parse_args(list(argv))


def test_tools_read_keys_and_endpoints_from_the_config(keys_dir, no_process_keys, monkeypatch):
    config = keys_dir.parent / "llmo.toml"
    config.write_text(
        '[endpoints]\nbroker = "tcp://10.9.9.9:5555"\npub = "tcp://10.9.9.9:5556"\n'
        '[security]\nkeys_dir = "keys"\n'
    )
    monkeypatch.setenv("LLMO_CONFIG", str(config))
    endpoints, keys = tool_setup(_tool_args())
    assert endpoints.broker == "tcp://10.9.9.9:5555" and keys.name == "pi"
    assert process_keys() == keys  # a Subscriber opened by the tool uses them too
    endpoints, keys = tool_setup(_tool_args("--key", "gpu-1", "--broker", "tcp://127.0.0.1:9"))
    assert endpoints.broker == "tcp://127.0.0.1:9" and keys.name == "gpu-1"
    with pytest.raises(ToolError, match="no key pair for 'nobody'"):
        tool_setup(_tool_args("--key", "nobody"))
    # A tool's own --config (llmo status) wins over $LLMO_CONFIG.
    monkeypatch.setenv("LLMO_CONFIG", str(keys_dir.parent / "missing.toml"))
    args = _tool_args()
    args.config = str(config)
    assert tool_setup(args)[0].broker == "tcp://10.9.9.9:5555"
    args.config = '{"plan": "settings"}'  # llmo submit --config: not an llmo.toml
    with pytest.raises(ToolError, match=r"missing\.toml: no such file"):
        tool_setup(args)


def test_a_tool_with_bad_keys_exits_with_the_reason(keys_dir, no_process_keys, capsys):
    args = _tool_args("--keys-dir", str(keys_dir), "--key", "nobody", "--timeout", "1")
    with pytest.raises(SystemExit) as info:
        open_session(args, "status")
    assert info.value.code == 2
    assert "llmo status: no key pair for 'nobody'" in capsys.readouterr().err


def test_a_silent_broker_gets_a_hint_about_keys(keys_dir, no_process_keys, zmq_context):
    # Nothing listens on the port; the session only claims a remote endpoint in its text.
    silent = f"tcp://127.0.0.1:{_free_port()}"
    remote = Endpoints(broker="tcp://10.0.0.2:5555", pub="tcp://10.0.0.2:5556")
    for keys, hint in ((None, "No CurveZMQ keys were loaded"), (keys_dir, "used the CurveZMQ key")):
        loaded = ClientKeys.load(keys, "pi") if keys else None
        client = Client("status-1", silent, context=zmq_context, keys=loaded)
        session = Session(endpoints=remote, client=client, timeout=0.2)
        try:
            with pytest.raises(ToolError, match=hint):
                session.ask(SnapshotRequest(dst=BRAIN))
        finally:
            session.close()


def test_require_curve_refuses_to_run_without_keys(no_process_keys):
    from llmo.cli.config import client_keys, parse, server_keys

    config = parse({"security": {"require_curve": True}}, "/etc/llmo/llmo.toml")
    with pytest.raises(SecurityError, match="require_curve"):
        server_keys(config)
    with pytest.raises(SecurityError, match="require_curve"):
        client_keys(config, "gpu-1")
    assert client_keys(parse({}), "gpu-1") is None
    assert os.environ.get("LLMO_KEYS_DIR") is None


def test_llmo_up_refuses_a_plain_non_loopback_rig_before_starting_anything(
    tmp_path, keys_dir, no_process_keys
):
    import argparse

    from llmo.cli import up_cmd

    parser = argparse.ArgumentParser()
    up_cmd.configure(parser)
    exposed = ["--broker", "tcp://0.0.0.0:5555", "--rig-dir", str(tmp_path / "rig")]
    with pytest.raises(SecurityError, match="--insecure"):
        up_cmd.plan_children(parser.parse_args(exposed))
    assert not (tmp_path / "rig").exists()
    _, children = up_cmd.plan_children(
        parser.parse_args([*exposed, "--keys-dir", str(keys_dir), "--model", "m.gguf"])
    )
    for name, argv in children:
        assert argv[argv.index("--keys-dir") + 1] == str(keys_dir), name
