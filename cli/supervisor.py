"""Child processes of ``llmo up``: start, watch, restart with back-off, stop.

Theory of operation
-------------------
``RestartPolicy`` is pure: given the times of a child's earlier restarts and
``now`` it says whether to restart and after what delay. A child may restart
at most ``max_restarts`` times within ``window_s`` (6 in 5 minutes); beyond
that it is left stopped and the operator is told, instead of a relaunch loop.
The delay doubles from ``base_delay_s`` with each restart in the window.

Exit code 2 (``CONFIG_ERROR_EXIT``) is every llmo command's answer to bad
configuration: an endpoint it cannot bind, keys it cannot read, flags that
do not parse. Restarting cannot fix that, so such a child is never
restarted: ``config_error`` names it with the last line of its log (the
reason it printed), and ``llmo up`` stops the rig and shows that line.

``Supervisor`` owns the processes. Each child runs in its own process group
with its output appended to ``<logs>/<name>.log``. ``poll`` reaps exits and
schedules restarts; ``stop`` stops the children in stages, one stage after
the other: SIGTERM to each group of the stage, a wait of up to the stage's
timeout, SIGKILL to what is left, so no child outlives ``llmo up``. While a
stage stops, the children of the later stages keep running and are still
restarted if they die: ``llmo up`` stops the workers first, and the brain
that records their last results must be there to hear them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmo.proto.messages import ChildInfo, ChildState

log = logging.getLogger("llmo.up")

PR_SET_PDEATHSIG = 1
CONFIG_ERROR_EXIT = 2  # a child that exits with this is misconfigured, not crashed
_TAIL_BYTES = 4096
STOP_POLL_S = 0.05


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, however it dies.

    Children run in their own sessions (so a Ctrl-C reaches only ``llmo up``,
    which stops them in order), which also means nothing else would stop them
    if ``llmo up`` were killed with SIGKILL.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    max_restarts: int = 6
    window_s: float = 300.0
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def decide(self, restarts: list[float], now: float) -> float | None:
        """Delay before the next restart, or None when the child must stay stopped."""
        recent = [t for t in restarts if now - t < self.window_s]
        if len(recent) >= self.max_restarts:
            return None
        return min(self.max_delay_s, self.base_delay_s * 2 ** len(recent))


@dataclass(slots=True)
class Child:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)
    restart_at: float | None = None
    given_up: bool = False
    stopping: bool = False  # being stopped: never restarted
    exit_codes: list[int] = field(default_factory=list)
    reason: str = ""  # the last line of its log when it was given up on

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def kind(self) -> Literal["broker", "brain", "worker"]:
        if self.name == "broker":
            return "broker"
        return "brain" if self.name == "brain" else "worker"

    @property
    def state(self) -> ChildState:
        if self.stopping:
            return "stopping"
        if self.given_up:
            return "config_error" if self.exit_codes[-1:] == [CONFIG_ERROR_EXIT] else "given_up"
        if self.restart_at is not None or not self.running:
            return "restarting"  # waiting for its back-off (or not yet reaped)
        return "running"


def restart_refusal(name: str, states: Mapping[str, ChildState]) -> str | None:
    """Why the operator may not restart child ``name`` now (``states``: each child's
    state); None when it may: only a child given up on is restarted."""
    state = states.get(name)
    if state is None:
        known = ", ".join(sorted(states)) or "none"
        return f"no child named {name!r}; this llmo up supervises {known}"
    if state == "given_up":
        return None
    if state == "running":
        return (
            f"{name} is running: only a child the supervisor gave up on is restarted "
            f"(to stop its work, drain it: llmo drain {name})"
        )
    if state == "restarting":
        return f"{name} is restarting already: it crashed and waits for its back-off"
    if state == "config_error":
        return f"{name} has a configuration error: restarting cannot fix it; see its log"
    return f"{name} is stopping with the rig: llmo up is shutting down"


def last_line(path: Path) -> str:
    """The last non-empty line of a log file (its tail only), or ``""``."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Supervisor:
    def __init__(
        self,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        say: Callable[[str], None] = print,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self.children: dict[str, Child] = {}
        self.config_error: tuple[str, str] | None = None  # (child, the reason it gave)
        self._clock = clock
        self._say = say

    def add(
        self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> Child:
        child = Child(name=name, argv=argv, log_path=log_path, env=env)
        self.children[name] = child
        self._spawn(child)
        return child

    def _spawn(self, child: Child) -> None:
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(child.log_path, "ab") as out:
            child.process = subprocess.Popen(
                child.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child.env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        child.restart_at = None

    def poll(self) -> None:
        """Reap children that exited and restart the ones whose delay has passed."""
        now = self._clock()
        for child in self.children.values():
            if child.given_up or child.stopping:
                continue
            if child.process is not None and child.restart_at is None:
                code = child.process.poll()
                if code is None:
                    continue
                child.exit_codes.append(code)
                if code == CONFIG_ERROR_EXIT:
                    child.given_up = True
                    reason = child.reason = last_line(child.log_path)
                    if self.config_error is None:
                        self.config_error = (child.name, reason)
                    self._say(
                        f"llmo up: {child.name} exited with code {code}, a configuration error; "
                        f"not restarting it: {reason or '(nothing in its log)'}"
                    )
                    continue
                delay = self.policy.decide(child.restarts, now)
                if delay is None:
                    child.given_up = True
                    child.reason = last_line(child.log_path)
                    self._say(
                        f"llmo up: {child.name} exited with code {code} and has restarted "
                        f"{self.policy.max_restarts} times in {self.policy.window_s:.0f} s; "
                        f"leaving it stopped (llmo restart {child.name} starts it again). "
                        f"Its log: {child.log_path}"
                    )
                    continue
                child.restart_at = now + delay
                self._say(
                    f"llmo up: {child.name} exited with code {code}; restarting in {delay:.1f} s"
                )
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts.append(now)
                self._spawn(child)

    def report(self) -> tuple[ChildInfo, ...]:
        """Each child as a ``ChildInfo``: state, pid, restarts in the window, reason."""
        now = self._clock()
        out = []
        for child in self.children.values():
            state = child.state
            process = child.process
            running = state in ("running", "stopping") and process is not None
            out.append(
                ChildInfo(
                    name=child.name,
                    kind=child.kind,
                    state=state,
                    pid=process.pid if running and process is not None else 0,
                    restarts=sum(1 for t in child.restarts if now - t < self.policy.window_s),
                    exit_code=child.exit_codes[-1] if child.exit_codes else None,
                    reason=child.reason if child.given_up else "",
                    log_path=str(child.log_path),
                )
            )
        return tuple(out)

    def restart(self, name: str) -> tuple[bool, str]:
        """The operator's restart of a child given up on: (done, what happened or why not)."""
        why = restart_refusal(name, {n: c.state for n, c in self.children.items()})
        if why is not None:
            return False, why
        child = self.children[name]
        child.given_up = False
        child.reason = ""
        child.restarts.clear()  # its restart window starts afresh
        try:
            self._spawn(child)
        except OSError as exc:
            child.given_up = True
            child.reason = f"could not start: {exc}"
            return False, f"{name} could not be started: {exc}"
        pid = child.process.pid if child.process is not None else 0
        self._say(f"llmo up: {name} restarted by the operator (pid {pid})")
        return True, (
            f"{name} restarted (pid {pid}); it may restart {self.policy.max_restarts} more "
            f"times in {self.policy.window_s:g} s before it is given up on again"
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one child's process group (used by fault tests)."""
        process = self.children[name].process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, sig)

    def stop(
        self,
        timeout: float = 10.0,
        order: list[str] | None = None,
        stages: list[tuple[list[str], float]] | None = None,
    ) -> None:
        """Stop every child: the ``stages`` ((names, timeout s) each) one after the
        other, then the rest together (in ``order``) within ``timeout``."""
        staged = [name for names, _ in stages or [] for name in names]
        rest = [n for n in (order or []) if n not in staged]
        rest += [n for n in self.children if n not in staged and n not in rest]
        for names, stage_timeout in [*(stages or []), (rest, timeout)]:
            self._stop_stage([n for n in names if n in self.children], stage_timeout)

    def hurry(self) -> None:
        """SIGTERM again to the children being stopped (a worker asked twice interrupts
        its running tasks at once instead of waiting for their grace)."""
        for child in self.children.values():
            if child.stopping and child.running and child.process is not None:
                try:
                    os.killpg(child.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def _stop_stage(self, names: list[str], timeout: float) -> None:
        """SIGTERM each child's group, wait (still supervising the others), SIGKILL what is left."""
        stage = [self.children[name] for name in names]
        for child in stage:
            child.stopping = True
            child.restart_at = None
            process = child.process
            if process is None or process.poll() is not None:
                continue
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while any(c.running for c in stage) and time.monotonic() < deadline:
            self.poll()  # a later stage's child that died meanwhile is restarted
            time.sleep(STOP_POLL_S)
        for child in stage:
            if child.process is None:
                continue
            if child.running:
                log.warning("%s did not stop within %.0f s; killing it", child.name, timeout)
                self._say(f"llmo up: {child.name} did not stop within {timeout:.0f} s; killing it")
                try:
                    os.killpg(child.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            child.process.wait()
