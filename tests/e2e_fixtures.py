"""Fixtures for the end-to-end tests: a whole rig started with ``llmo up``.

``rig_factory`` starts ``llmo up`` as a subprocess on two free loopback ports
(bound to port 0, released, then handed over in LLMO_BROKER / LLMO_PUB), in a
temporary rig folder, and waits for ``llmo status --wait-ready``. A ``Rig``
runs the ``llmo`` commands against it, copies plans into its own ``plans/``
folder (so history never lands in the repository; ``llmo up`` runs beside
that folder, which must not shadow llmo's ``plans`` package), finds its
children by name and kills them. At teardown each rig gets SIGTERM and the
fixture checks that nothing it started is left: not ``llmo up``'s children
(restarted ones included), not a task process of its plans. The rig's logs
are printed at teardown, which pytest shows when the test failed.

Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import wait_for, wait_until

REPO = Path(__file__).resolve().parent.parent
E2E_PLANS = REPO / "tests" / "data" / "e2e"
EXAMPLE_PLANS = REPO / "plans" / "examples"
READY_S = 90.0
STOP_S = 30.0
WORKERS = ("cpu-1", "cpu-2", "brain-llm")


def llmo_argv() -> list[str]:
    script = Path(sys.executable).parent / "llmo"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-P", "-m", "llmo.cli.main"]


def start_brain(endpoint: str, journal: Path, log: Path, *extra: str) -> subprocess.Popen:
    """A real ``llmo brain`` on ``journal`` (ticking every 0.1 s), its output in ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmo.cli.main",
                "brain",
                "--broker",
                endpoint,
                "--journal",
                str(journal),
                "--tick",
                "0.1",
                *extra,
            ],
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _proc_table() -> dict[int, tuple[int, str, list[str]]]:
    """pid -> (parent pid, state, argv) for every process this user can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), fields[0], argv)
    return table


def _child_name(argv: list[str]) -> str | None:
    """The name ``llmo up`` gave a child, from its process title (``llmo-worker cpu-1``,
    ``llmo-brain``) or, without one, its argv (``-m llmo.cli.main <role> ...``)."""
    title = " ".join(argv).split()
    if title and title[0].startswith("llmo-"):
        return title[1] if title[0] == "llmo-worker" and len(title) > 1 else title[0][5:]
    if "llmo.cli.main" not in argv:
        return None
    rest = argv[argv.index("llmo.cli.main") + 1 :]
    if not rest:
        return None
    if rest[0] == "worker" and "--name" in rest:
        return rest[rest.index("--name") + 1]
    return rest[0]


class Rig:
    """One ``llmo up`` and the commands that talk to it."""

    def __init__(
        self,
        root: Path,
        *,
        workers: int = 2,
        brain: dict[str, Any] | None = None,
        up_args: tuple[str, ...] = (),
    ):
        self.root = root
        self.rig_dir = root / "rig"
        self.plans_dir = root / "plans"
        self.plans_dir.mkdir(parents=True, exist_ok=True)
        self.broker = f"tcp://127.0.0.1:{free_port()}"
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.env = dict(os.environ, LLMO_BROKER=self.broker, LLMO_PUB=self.pub)
        self.expected = [f"cpu-{i}" for i in range(1, workers + 1)] + ["brain-llm"]
        argv = [*llmo_argv(), "up", "--workers", str(workers), "--rig-dir", str(self.rig_dir)]
        argv += up_args
        if brain:
            config = root / "llmo.toml"
            lines = ["[brain]"] + [f"{key} = {json.dumps(value)}" for key, value in brain.items()]
            config.write_text("\n".join(lines) + "\n")
            argv += ["--config", str(config)]
        self.up_log = root / "up.log"
        with open(self.up_log, "ab") as out:  # a rig started again on it appends
            self.process = subprocess.Popen(
                argv,
                cwd=root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.seen: dict[int, str] = {}  # every child pid ever seen -> its name

    # --- commands --------------------------------------------------------------------

    def llmo(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*llmo_argv(), *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_ready(self, seconds: float = READY_S) -> None:
        """Wait for ``llmo status --wait-ready``; fail at once if ``llmo up`` exits."""
        expect = ",".join(self.expected)
        deadline = time.monotonic() + seconds
        while True:
            done = self.llmo("status", "--wait-ready", "3", "--expect", expect)
            if done.returncode == 0:
                return
            exited = self.process.poll()
            assert exited is None, f"llmo up exited with {exited}\n{self.logs()}"
            assert time.monotonic() < deadline, f"rig not ready: {done.stderr}\n{self.logs()}"

    def status(self) -> dict[str, Any]:
        done = self.llmo("status", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def plan(self, name: str) -> Path:
        """A fresh copy of a test plan (tests/data/e2e) or an example plan."""
        source = E2E_PLANS / name if (E2E_PLANS / name).is_dir() else EXAMPLE_PLANS / name
        target = self.plans_dir / name
        copies = 1
        while target.exists():
            copies += 1
            target = self.plans_dir / f"{name}-{copies}"
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("history", "__pycache__"))
        return target

    def submit(self, plan: Path, *args: str, timeout: float = 150.0) -> Submitted:
        """``llmo submit PLAN --watch --json``, to the end of the batch."""
        done = self.llmo("submit", str(plan), "--watch", "--json", *args, timeout=timeout)
        return Submitted(done.returncode, done.stdout, done.stderr)

    def submit_background(self, plan: Path, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*llmo_argv(), "submit", str(plan), "--watch", "--json", *args],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # --- processes ---------------------------------------------------------------------

    def children(self) -> dict[str, int]:
        """Name -> pid of ``llmo up``'s live children (broker, brain, cpu-1, ...)."""
        found = {}
        for pid, (ppid, state, argv) in _proc_table().items():
            if ppid != self.process.pid or state == "Z":
                continue
            name = _child_name(argv)
            if name is not None:
                found[name] = pid
                self.seen[pid] = name
        return found

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        pid = self.children()[name]
        os.kill(pid, sig)
        return pid

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 20.0) -> int:

        def restarted() -> int | None:
            pid = self.children().get(name)
            return pid if pid is not None and pid != old_pid else None

        return wait_for(
            restarted, timeout, lambda: f"{name} to be restarted\n{self.logs()}", poll_s=0.1
        )

    def leftovers(self) -> list[str]:
        """Processes still alive that this rig started: its children or its tasks."""
        marks = (str(self.root), self.broker)
        left = []
        for pid, (_, state, argv) in _proc_table().items():
            if state == "Z" or pid == os.getpid():
                continue
            line = " ".join(argv)
            if pid in self.seen or pid == self.process.pid or any(m in line for m in marks):
                left.append(f"{pid} {line}")
        return left

    def stop(self) -> list[str]:
        """SIGTERM ``llmo up``, wait for it, and return what is left running."""
        self.children()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                return [f"llmo up did not stop within {STOP_S} s", *self.leftovers()]
        wait_until(lambda: not self.leftovers(), 5.0, poll_s=0.1)
        left = self.leftovers()
        for line in left:
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except OSError:
                pass
        return left

    def log_files(self) -> list[Path]:
        return [self.up_log, *sorted((self.rig_dir / "logs").glob("*.log"))]

    def log_marks(self) -> dict[Path, int]:
        """How long each log is now, for ``logs(since=...)``."""
        return {log: log.stat().st_size for log in self.log_files() if log.exists()}

    def logs(self, since: dict[Path, int] | None = None) -> str:
        """The rig's logs (the end of each), or what was written to them after ``since``."""
        parts = []
        for log in self.log_files():
            text = _read(log, (since or {}).get(log, 0))
            parts += [f"==== {log}", text if since is not None else text[-6000:]]
        return "\n".join(parts)


class Submitted:
    """What ``llmo submit --watch --json`` said: exit code, final state, summary."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        try:
            self.data = json.loads(stdout) if stdout.strip() else {}
        except ValueError:
            self.data = {}

    @property
    def state(self) -> str:
        return self.data.get("state", "")

    @property
    def summary(self) -> dict[str, Any]:
        return self.data.get("summary") or {}

    @property
    def history(self) -> Path:
        return Path(self.data["batch"]["history_path"])

    def rows(self) -> dict[str, dict[str, Any]]:
        """RUN_SUMMARY.json's task rows by task id."""
        return {row["id"]: row for row in self.summary.get("tasks", [])}

    def events(self) -> list[dict[str, Any]]:
        path = self.history / "batch_events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def __repr__(self) -> str:
        return f"exit {self.returncode}, state {self.state!r}\n{self.stderr}\n{self.stdout[-3000:]}"


def _read(path: Path, offset: int = 0) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError as exc:
        return f"({exc})"


def events_of(events: list[dict[str, Any]], name: str, task: str = "") -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name and (not task or e.get("task_id") == task)]


def running_attempt(rig: Rig, plan: Path, task: str, timeout: float = 30.0) -> dict[str, Any]:
    """The task_started event of ``task``'s latest attempt, once it is running."""

    def started() -> dict[str, Any] | None:
        for folder in (plan / "history").glob("*"):
            path = folder / "batch_events.jsonl"
            if not path.exists():
                continue
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            hits = events_of(lines, "task_started", task)
            if hits:
                return hits[-1] | {"history": str(folder)}
        return None

    return wait_for(started, timeout, lambda: f"{task} to start\n{rig.logs()}")


def _factory(root: Callable[[], Path]) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def start(
        *,
        workers: int = 2,
        brain: dict[str, Any] | None = None,
        again: Rig | None = None,
        up_args: tuple[str, ...] = (),
    ) -> Rig:
        """A new rig, or (``again``) ``llmo up`` once more on a stopped rig's folders;
        ``up_args``: more flags for ``llmo up``."""
        root_dir = again.root if again is not None else root()
        rig = Rig(root_dir, workers=workers, brain=brain, up_args=up_args)
        rigs.append(rig)
        rig.wait_ready()
        rig.children()
        return rig

    yield start
    problems = []
    for rig in reversed(rigs):  # a rig started again on a folder stops before the first one
        left = rig.stop()
        print(rig.logs())
        if left:
            problems.append(f"left running after llmo up stopped ({rig.root}):\n" + "\n".join(left))
    assert not problems, "\n".join(problems)


@pytest.fixture
def rig_factory(tmp_path_factory) -> Iterator[Callable[..., Rig]]:
    """Start ``llmo up``: ``start(workers=2, brain={...}, again=rig)``; stopped and
    checked at teardown."""
    yield from _factory(lambda: tmp_path_factory.mktemp("rig"))


@pytest.fixture(scope="module")
def module_rig_factory(tmp_path_factory) -> Iterator[Callable[..., Rig]]:
    """The same, for a rig that several tests of a module share (see ``one_test``)."""
    yield from _factory(lambda: tmp_path_factory.mktemp("rig"))


def one_test(rig: Rig) -> Iterator[Rig]:
    """Lend a shared rig to one test; print what its logs got meanwhile, which
    pytest shows if that test fails."""
    marks = rig.log_marks()
    yield rig
    print(rig.logs(since=marks))
