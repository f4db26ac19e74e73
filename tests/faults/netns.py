"""A rig spread over network namespaces: each actor a host of its own.

Theory of operation
-------------------
``Network`` makes one namespace per host, named ``llmo-p<pid>-<random>-<host>``.
The broker's namespace is the hub: it holds a bridge with the broker's
address (``10.77.0.1/24``), and each other host is joined to it by a veth
pair, the hub's end enslaved to the bridge, the host's end ``eth0`` with an
address of its own in the same /24 (loopback up everywhere). A partition
takes the hub's end of a host's link down (``ip link set ... down``): the
host sees no carrier, nothing it sends arrives, open TCP connections stay
open and retransmit, as when a cable is pulled; ``heal`` sets it up again.

``NetRig`` runs the rig in it with real processes, each started with
``ip netns exec HOST .venv/bin/llmo ...``: the broker binds its hub address
with CurveZMQ keys (``llmo keys generate``), the brain and the workers
connect to it, directly or through ``tests.faults.proxy`` running in the hub,
and the tools (``llmo submit``, ``llmo status``) run on a host of their own,
as on the Pi. Plans and their run histories live in a folder of the host's
filesystem, which every namespace sees.

Clean-up: ``close`` stops every process it started (SIGTERM, then SIGKILL),
kills whatever else still runs in its namespaces (the tasks), and deletes the
namespaces, whatever state the test left. Namespaces left by a run that died
(their creator's pid gone) are swept at the next start, so a crash never
breaks the next run. ``unavailable`` says why namespaces cannot be used here
(not root, no ``ip``, no permission), for a skip.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
PREFIX = "llmo-p"
SUBNET = "10.77.0"
HUB_ADDR = f"{SUBNET}.1"
BROKER_PORT = 5555
PUB_PORT = 5556
STOP_S = 20.0


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why this machine cannot run the namespaced rig, or None when it can."""
    if shutil.which("ip") is None:
        return "network namespaces need the `ip` command (iproute2), not found"
    if os.geteuid() != 0:
        return "network namespaces need root (run the fault suite as root, as CI does)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    done = ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.strip()}"
    try:
        made = ip("-n", probe, "link", "add", "b0", "type", "bridge", check=False)
        if made.returncode != 0:
            return f"cannot create a bridge in a network namespace: {made.stderr.strip()}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def namespaces() -> list[str]:
    done = ip("netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def kill_inside(ns: str) -> None:
    """SIGKILL every process in namespace ``ns``."""
    done = ip("netns", "pids", ns, check=False)
    for pid in done.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def sweep_leftovers() -> list[str]:
    """Delete the namespaces of runs whose process is gone; return their names."""
    swept = []
    for ns in namespaces():
        found = re.match(rf"{re.escape(PREFIX)}(\d+)-", ns)
        if not found:
            continue
        pid = int(found.group(1))
        if os.path.exists(f"/proc/{pid}"):
            continue  # a live run's, this one's included
        kill_inside(ns)
        ip("netns", "del", ns, check=False)
        swept.append(ns)
    return swept


class Network:
    """The hub (the broker's host, with the bridge) and the hosts joined to it."""

    def __init__(self) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}-"
        self.hosts: dict[str, str] = {}  # host -> its address
        self.made: list[str] = []
        self.hub = self._namespace("hub")
        self.hosts["hub"] = HUB_ADDR
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "addr", "add", f"{HUB_ADDR}/24", "dev", "br0")
        ip("-n", self.hub, "link", "set", "br0", "up")

    def ns(self, host: str) -> str:
        return self.prefix + host

    def _namespace(self, host: str) -> str:
        name = self.ns(host)
        ip("netns", "add", name)
        self.made.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def add(self, host: str) -> str:
        """A new host joined to the hub; its address."""
        ns = self._namespace(host)
        address = f"{SUBNET}.{len(self.hosts) + 1}"
        link = self.link(host)
        ip("link", "add", link, "netns", self.hub, "type", "veth", "peer", "eth0", "netns", ns)
        ip("-n", self.hub, "link", "set", link, "master", "br0")
        ip("-n", self.hub, "link", "set", link, "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        self.hosts[host] = address
        return address

    def link(self, host: str) -> str:
        """The hub's end of ``host``'s link (interface names: 15 characters at most)."""
        return f"v-{host}"[:15]

    def cut(self, host: str) -> None:
        ip("-n", self.hub, "link", "set", self.link(host), "down")

    def heal(self, host: str) -> None:
        ip("-n", self.hub, "link", "set", self.link(host), "up")

    def inode(self, host: str) -> int:
        """The namespace's inode: what ``readlink /proc/self/ns/net`` shows inside it."""
        return os.stat(f"/run/netns/{self.ns(host)}").st_ino

    def close(self) -> None:
        for ns in reversed(self.made):
            kill_inside(ns)
        for ns in reversed(self.made):
            ip("netns", "del", ns, check=False)
        self.made.clear()


def llmo() -> str:
    return str(Path(sys.executable).parent / "llmo")


class NetRig:
    """The broker, the brain, workers, a proxy and the tools, each on a host of the network."""

    def __init__(self, net: Network, root: Path, *, interval: float, liveness: int) -> None:
        self.net = net
        self.root = root
        self.interval = interval
        self.liveness = liveness
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.plans_dir = root / "plans"
        self.plans_dir.mkdir(parents=True, exist_ok=True)
        self.keys = root / "keys"
        self.procs: dict[str, subprocess.Popen] = {}
        self.broker = f"tcp://{HUB_ADDR}:{BROKER_PORT}"
        self.pub = f"tcp://{HUB_ADDR}:{PUB_PORT}"
        self.control = root / "proxy.fault"
        self.proxy_ports: dict[str, int] = {}
        self.workers: list[str] = []
        self.submits: list[subprocess.Popen] = []

    @property
    def expiry(self) -> float:
        return self.interval * self.liveness

    # --- processes ------------------------------------------------------------------------

    def spawn(self, name: str, host: str, argv: Sequence[str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.net.ns(host), *argv],
                cwd=self.root,
                env=dict(os.environ, LLMO_KEYS_DIR=str(self.keys)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def start(self, workers: Sequence[str], *, remote: Sequence[str] = ()) -> None:
        """Keys for every name, the broker, then the brain and ``workers`` on hosts of
        their own (``remote`` ones too: names the broker is told of, started later)."""
        names = [*workers, *remote]
        keys = [llmo(), "keys", "generate", str(self.keys)]
        subprocess.run([*keys, *(a for n in names for a in ("--name", n))], check=True)
        for host in ("brain", "pi", *names):
            self.net.add(host)
        self.spawn(
            "broker",
            "hub",
            [
                llmo(),
                "broker",
                "--broker",
                self.broker,
                "--pub",
                self.pub,
                "--interval",
                str(self.interval),
                "--liveness",
                str(self.liveness),
                *(a for n in names for a in ("--worker", n)),
            ],
        )
        wait_for(self.listening, 15, lambda: f"the broker to listen\n{self.log('broker')}")
        self.spawn(
            "brain",
            "brain",
            [
                llmo(),
                "brain",
                "--broker",
                self.via("brain"),
                "--journal",
                str(self.root / "brain.journal"),
                "--tick",
                "0.1",
            ],
        )
        for name in workers:
            self.start_worker(name)
        self.wait_ready(workers)

    def listening(self) -> bool:
        done = subprocess.run(
            ["ip", "netns", "exec", self.net.hub, "ss", "-ltn"], capture_output=True, text=True
        )
        return f"{HUB_ADDR}:{BROKER_PORT}" in done.stdout

    def start_worker(self, name: str, host: str | None = None) -> None:
        self.workers.append(name)
        self.spawn(
            name,
            host or name,
            [
                llmo(),
                "worker",
                "--broker",
                self.via(name),
                "--name",
                name,
                "--slots",
                "2",
                "--interval",
                str(self.interval),
                "--stop-deadline",
                "2",
            ],
        )

    def through_proxy(self, names: Sequence[str]) -> None:
        """Start the proxy in the hub, one port per peer in ``names``, forwarding to the
        broker; those peers, started after this, connect through it."""
        routes = []
        for i, name in enumerate(names):
            port = BROKER_PORT + 100 + i
            self.proxy_ports[name] = port
            routes.append(f"{HUB_ADDR}:{port}={HUB_ADDR}:{BROKER_PORT}")
        self.fault("pass")
        argv = [sys.executable, str(REPO / "tests" / "faults" / "proxy.py")]
        self.spawn("proxy", "hub", [*argv, "--control", str(self.control), *routes])
        wait_for(lambda: self.log("proxy").count("listening") >= len(names), 15, "the proxy")

    def via(self, name: str) -> str:
        """The endpoint ``name`` connects to: the proxy's port for it, else the broker."""
        port = self.proxy_ports.get(name)
        return f"tcp://{HUB_ADDR}:{port}" if port else self.broker

    def fault(self, words: str) -> None:
        """Set the proxy's fault (see ``tests.faults.proxy``)."""
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(words + "\n")
        tmp.replace(self.control)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def all_logs(self, tail: int = 5000) -> str:
        return "\n".join(
            f"==== {p.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.logs.glob("*.log"))
        )

    # --- the tools, on the Pi's host -----------------------------------------------------

    def tool(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.net.ns("pi"),
                llmo(),
                *args,
                "--broker",
                self.broker,
                "--pub",
                self.pub,
            ],
            cwd=self.root,
            env=dict(os.environ, LLMO_KEYS_DIR=str(self.keys)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self) -> dict[str, Any] | None:
        done = self.tool("status", "--json")
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)

    def workers_up(self, names: Sequence[str]) -> bool:
        """Whether the brain answers and has each of ``names`` registered and not down
        (``llmo status --wait-ready``, as an operator would ask)."""
        done = self.tool("status", "--wait-ready", "2", "--expect", ",".join(names))
        return done.returncode == 0

    def wait_ready(self, names: Sequence[str], timeout: float = 60.0) -> None:
        wait_for(lambda: self.workers_up(names), timeout, lambda: f"{names} up\n{self.all_logs()}")

    def submit_background(self, plan: Path) -> subprocess.Popen:
        """``llmo submit --watch`` from the Pi's host, left running; ``reap_submits``
        ends those a test left behind."""
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.net.ns("pi"),
                llmo(),
                "submit",
                str(plan),
                "--watch",
                "--json",
                "--broker",
                self.broker,
                "--pub",
                self.pub,
            ],
            cwd=self.root,
            env=dict(os.environ, LLMO_KEYS_DIR=str(self.keys)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.submits.append(proc)
        return proc

    def reap_submits(self) -> int:
        """Kill the background submits still running (a test that failed before it
        read one), and close every one's pipes; how many were still running."""
        running = 0
        for proc in self.submits:
            if proc.poll() is None:
                running += 1
                proc.kill()
            proc.communicate()
        self.submits.clear()
        return running

    def stop(self) -> list[str]:
        """Stop every process (SIGTERM, then SIGKILL); what needed SIGKILL."""
        self.reap_submits()
        hard = []
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_S
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                hard.append(name)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return hard
