"""Task attempts on one worker: admission, start, cancel, timers and results.

Theory of operation
-------------------
``refusal`` decides whether an assignment fits: not while draining, GPU work
not while constrained (nothing but ``cpu`` and unloads while critical), LLM
work only with the named model hot, and every non-``meta`` attempt within
the free slots and the VRAM budget (the sum of the running attempts'
``vram_mb``). A refused assignment is answered at once with ``TaskFailed``
reason ``refused`` and the reason as its error.

Before that, a shell attempt must pass the worker's command policy
(``worker.policy.check``: plan roots, refused patterns, protected paths);
a refusal names the rule, is written to the task's log when the log is
itself allowed, and is answered the same way. The spawned shell gets its
class's resource limits (``Policy.rlimits``).

A shell attempt is a ``ShellAttempt``; a ``meta`` attempt is a runtime
command (``load_llm`` ..., see PLAN_FORMAT.md) that ends when the runtime
reports the transition it asked for. Each attempt has a token ``Meter``
whose key its environment carries, so what it generates through the
endpoint is counted for it and reported in ``TaskProgress`` and the result.

Stopping: abort = SIGTERM to the group, and SIGKILL ``grace_s`` (from the
assignment) later if it is still there; kill = SIGKILL at once. A second
abort does not move the kill. An attempt over its ``timeout_s`` is aborted
by the worker itself, as a backstop to the brain's own stuck detection.

Results go through the link (held until delivered). The last results are
remembered, so an assignment or cancel that arrives again for an attempt
that already ended is answered with its result instead of a second run.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from llmo.proto.messages import (
    BRAIN,
    Message,
    ModelStatus,
    TaskAssign,
    TaskCancel,
    TaskDone,
    TaskFailed,
    TaskProgress,
    TaskStarted,
)
from llmo.proto.vocab import EXIT_RETRY_LATER, META_LOADS, META_UNLOADS
from llmo.worker import policy
from llmo.worker.config import WorkerConfig
from llmo.worker.leftovers import GroupLedger
from llmo.worker.limits import Level
from llmo.worker.llm import LoadSpec, Runtime, RuntimeEvent
from llmo.worker.meter import Meter, Meters
from llmo.worker.shell import Outcome, ShellAttempt, SpawnError, default_log_path, task_env

log = logging.getLogger("llmo.worker.attempts")

GPU_CLASSES = frozenset({"script", "llm", "brain"})
LLM_CLASSES = frozenset({"llm", "brain"})
LOAD_COMMANDS = frozenset(META_LOADS)
UNLOAD_COMMANDS = frozenset(META_UNLOADS)
REMEMBERED = 1000


@dataclass(slots=True, eq=False)
class Attempt:
    assign: TaskAssign
    meter: Meter
    started: float
    shell: ShellAttempt | None = None
    waits_for: str = ""  # meta: the runtime state it waits for ("hot" / "cold")
    model: str = ""  # meta load: the model name it waits for
    kill_at: float | None = None
    why: str = ""  # why the worker itself stopped it
    reported: int = 0  # tokens in the last TaskProgress

    @property
    def id(self) -> str:
        return self.assign.attempt_id


class Attempts:
    def __init__(
        self,
        config: WorkerConfig,
        runtime: Runtime,
        meters: Meters,
        *,
        deliver: Callable[[Message], None],
        send: Callable[[Message], object],
        api_env: Callable[[Meter], dict[str, str]],
        budget_mb: int,
        watch: Callable[[int], None] = lambda fd: None,
        unwatch: Callable[[int], None] = lambda fd: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.meters = meters
        self.deliver = deliver
        self.send = send
        self.api_env = api_env
        self.budget_mb = budget_mb
        self.watch = watch
        self.unwatch = unwatch
        self.clock = clock
        self.running: dict[str, Attempt] = {}
        self._by_fd: dict[int, Attempt] = {}
        self.ledger: GroupLedger | None = None  # running groups, for a successor to end
        self._recent: collections.OrderedDict[str, Message] = collections.OrderedDict()

    # --- capacity ---------------------------------------------------------------------

    @property
    def slots_used(self) -> int:
        return sum(1 for a in self.running.values() if a.assign.task_class != "meta")

    @property
    def vram_used(self) -> int:
        return sum(a.assign.vram_mb for a in self.running.values())

    def active(self) -> tuple[str, ...]:
        return tuple(self.running)

    def refusal(self, a: TaskAssign, level: Level, draining: bool, constraint: str) -> str | None:
        cls = a.task_class
        absurd = _absurd(a)
        if absurd:
            return absurd
        if draining:
            return f"{self.config.name} is draining: it takes no new work"
        if cls == "meta":
            name = a.command.split()[0] if a.command.split() else ""
            if name not in LOAD_COMMANDS | UNLOAD_COMMANDS:
                return f"unknown meta command {a.command!r}"
            if name in LOAD_COMMANDS:
                if level is not Level.OK:
                    return f"{self.config.name} is {constraint}: no model loads now"
                spec = self._meta_spec(a)
                if isinstance(spec, str):
                    return spec
            return None
        if level is Level.CRITICAL and cls != "cpu":
            return f"{self.config.name} is {constraint}: all GPU work is stopped"
        if level is Level.CONSTRAINED and cls in GPU_CLASSES:
            return f"{self.config.name} is {constraint}: it takes only cpu and meta work"
        if cls in LLM_CLASSES:
            rt = self.runtime
            if rt.state != "hot":
                return f"no model is hot on {self.config.name} (runtime {rt.state})"
            if a.model and rt.spec is not None and a.model not in (rt.spec.name, rt.spec.path):
                return f"model {a.model!r} is not loaded on {self.config.name} (hot: {rt.model})"
        used, slots = self.slots_used, self.config.slots
        if used >= slots:
            return f"no free slot on {self.config.name} ({used} of {slots} in use)"
        free = self.budget_mb - self.vram_used
        if a.vram_mb > free:
            return (
                f"VRAM budget of {self.config.name} exceeded: the task needs {a.vram_mb} MB, "
                f"{free} MB of {self.budget_mb} MB are free"
            )
        return None

    # --- assign ---------------------------------------------------------------------------

    def assign(self, a: TaskAssign, level: Level, draining: bool, constraint: str) -> None:
        if a.attempt_id in self.running:
            log.info("attempt %s assigned again while running; confirming it", a.attempt_id)
            self.deliver(_started(a, self.running[a.attempt_id]))
            return
        if a.attempt_id in self._recent:
            log.info("attempt %s assigned again after it ended; its result again", a.attempt_id)
            self.deliver(self._recent[a.attempt_id])
            return
        if a.task_class != "meta":
            env = task_env(a, base=os.environ)
            rule = policy.check(
                a.command,
                a.plan_path,
                a.batch_path,
                self.config.policy,
                log_path=a.log_path or default_log_path(a),
                env=env,
            )
            if rule is not None:
                self._refuse_by_policy(a, rule)
                return
        reason = self.refusal(a, level, draining, constraint)
        if reason is not None:
            log.info("refused %s: %s", a.attempt_id, reason)
            self._end(a, _failed(a, "refused", error=reason))
            return
        attempt = Attempt(
            assign=a,
            meter=self.meters.add(Meter(a.attempt_id, llm=a.task_class in LLM_CLASSES)),
            started=self.clock(),
        )
        if a.task_class == "meta":
            self._start_meta(attempt)
            return
        env = task_env(a, base=os.environ, extra=self.api_env(attempt.meter))
        log_path = a.log_path or default_log_path(a)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        header = f"--- llmo: {a.task_id} attempt {a.attempt_id} on {self.config.name} {stamp}\n"
        try:
            attempt.shell = ShellAttempt.spawn(
                a.command,
                cwd=a.batch_path or os.getcwd(),
                env=env,
                log_path=log_path,
                header=header,
                rlimits=self.config.policy.limits_for(a.task_class),
                clock=self.clock,
            )
        except SpawnError as exc:
            self.meters.remove(a.attempt_id)
            self._end(a, _failed(a, "spawn_error", error=str(exc)))
            return
        self.running[a.attempt_id] = attempt
        if self.ledger is not None:
            self.ledger.add(attempt.shell.pid)
        if attempt.shell.pidfd >= 0:
            self._by_fd[attempt.shell.pidfd] = attempt
            self.watch(attempt.shell.pidfd)
        self.deliver(_started(a, attempt))

    def _refuse_by_policy(self, a: TaskAssign, rule: str) -> None:
        """Refuse an attempt the policy forbids: the reason in its log (when the log
        itself is allowed) and in the ``TaskFailed`` that answers it."""
        error = f"refused by the policy of {self.config.name}: {rule}"
        log.warning("attempt %s %s", a.attempt_id, error)
        log_path = a.log_path or default_log_path(a)
        if policy.writable(log_path, self.config.policy):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            text = (
                f"--- llmo: {a.task_id} attempt {a.attempt_id} on {self.config.name} {stamp}\n"
                f"llmo: {error}\n"
            )
            try:
                os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
                with open(log_path, "a", encoding="utf-8", errors="replace") as f:
                    f.write(text)
            except OSError as exc:
                log.warning("cannot write the refusal to %s: %s", log_path, exc)
        self._end(a, _failed(a, "policy", error=error, log_tail=f"llmo: {error}"))

    def _start_meta(self, attempt: Attempt) -> None:
        a = attempt.assign
        words = a.command.split()
        self.running[a.attempt_id] = attempt
        self.deliver(_started(a, attempt))
        rt = self.runtime
        if words[0] in LOAD_COMMANDS:
            spec = self._meta_spec(a)
            assert not isinstance(spec, str)  # refusal() turned those away
            attempt.waits_for, attempt.model = "hot", spec.name
            self.load(spec)
        else:
            if rt.state == "cold" and rt.spec is None:
                self._finish_meta(attempt)
                return
            attempt.waits_for = "cold"
            self.unload()

    def _meta_spec(self, a: TaskAssign) -> LoadSpec | str:
        """``load_llm [MODEL]``: the task's model, else the word after, else the default."""
        words = a.command.split()
        return self.config.spec_for(a.model or (words[1] if len(words) > 1 else ""))

    def load(self, spec: LoadSpec) -> None:
        self.runtime.load(spec)
        if self.runtime.state == "loading":
            self.send(ModelStatus(dst=BRAIN, model=spec.name, state="loading"))

    def unload(self) -> None:
        self.runtime.unload()

    def on_runtime(self, event: RuntimeEvent) -> None:
        for attempt in list(self.running.values()):
            if not attempt.waits_for:
                continue
            if attempt.waits_for == "hot" and event.model == attempt.model:
                if event.state == "hot":
                    self._finish_meta(attempt)
                elif event.state == "failed":
                    self._finish_meta(attempt, error=event.error)
            elif attempt.waits_for == "cold" and event.state == "cold":
                self._finish_meta(attempt)

    def _finish_meta(self, attempt: Attempt, error: str = "", reason: str = "exit") -> None:
        a = attempt.assign
        self.running.pop(a.attempt_id, None)
        self.meters.remove(a.attempt_id)
        duration = round(self.clock() - attempt.started, 3)
        if error:
            code = 1 if reason == "exit" else None
            msg: Message = _failed(a, reason, error=error, duration_s=duration, exit_code=code)
        else:
            msg = TaskDone(**_ids(a), duration_s=duration)
        self._end(a, msg)

    # --- cancel and timers -------------------------------------------------------------------

    def cancel(self, msg: TaskCancel) -> None:
        attempt = self.running.get(msg.attempt_id)
        if attempt is None:
            if msg.attempt_id in self._recent:
                self.deliver(self._recent[msg.attempt_id])
                return
            error = f"{self.config.name} does not know attempt {msg.attempt_id}"
            self.deliver(
                TaskFailed(
                    dst=BRAIN,
                    batch_id=msg.batch_id,
                    task_id=msg.task_id,
                    attempt_id=msg.attempt_id,
                    reason="lost",
                    error=error,
                )
            )
            return
        why = msg.reason or f"{msg.mode} requested"
        self.stop(attempt, msg.mode, why)

    def stop(self, attempt: Attempt, mode: str, why: str, grace_s: float | None = None) -> None:
        attempt.why = attempt.why or why
        if attempt.shell is None:  # a meta attempt: stop waiting, the runtime goes on
            self._finish_meta(attempt, error=f"aborted: {attempt.why}", reason="aborted")
            return
        if mode == "kill":
            attempt.shell.kill()
            return
        attempt.shell.terminate()
        if attempt.kill_at is None:
            grace = attempt.assign.grace_s if grace_s is None else grace_s
            attempt.kill_at = self.clock() + grace

    def stop_all(self, why: str, *, classes: frozenset[str] | None = None, grace_s: float) -> int:
        chosen = [
            a for a in self.running.values() if classes is None or a.assign.task_class in classes
        ]
        for attempt in chosen:
            self.stop(attempt, "abort", why, grace_s=grace_s)
        return len(chosen)

    def tick(self, now: float) -> None:
        for attempt in list(self.running.values()):
            shell = attempt.shell
            if shell is None:
                continue
            if attempt.kill_at is not None and now >= attempt.kill_at and shell.stopped != "killed":
                log.warning("attempt %s ignored SIGTERM; killing its group", attempt.id)
                shell.kill()
            elif attempt.kill_at is None and now - attempt.started > attempt.assign.timeout_s:
                limit = attempt.assign.timeout_s
                self.stop(attempt, "abort", f"no result after its timeout of {limit:.0f}s")

    def check_exits(self, fd: int | None = None) -> None:
        """Collect attempts whose shell has exited (one pidfd, or all of them)."""
        if fd is not None:
            attempt = self._by_fd.get(fd)
            candidates = [attempt] if attempt is not None else []
        else:
            candidates = [a for a in self.running.values() if a.shell is not None]
        for attempt in candidates:
            if attempt.shell is not None and attempt.shell.exited():
                self._finish_shell(attempt)

    def note_rss(self, by_session: dict[int, int]) -> None:
        for attempt in self.running.values():
            if attempt.shell is not None and attempt.shell.pid in by_session:
                attempt.shell.note_rss(by_session[attempt.shell.pid])

    def sessions(self) -> list[int]:
        return [a.shell.pid for a in self.running.values() if a.shell is not None]

    # --- progress and results -----------------------------------------------------------------

    def progress(self, now: float) -> None:
        for attempt in self.running.values():
            meter = attempt.meter
            if meter.tokens != attempt.reported:
                attempt.reported = meter.tokens
                self.send(
                    TaskProgress(
                        **_ids(attempt.assign), tokens=meter.tokens, tok_s=meter.tok_s(now)
                    )
                )

    def _finish_shell(self, attempt: Attempt) -> None:
        assert attempt.shell is not None
        fd = attempt.shell.pidfd
        if fd >= 0:
            self.unwatch(fd)
            self._by_fd.pop(fd, None)
        outcome = attempt.shell.reap()
        if self.ledger is not None:
            self.ledger.remove(attempt.shell.pid)
        self.running.pop(attempt.id, None)
        self.meters.remove(attempt.id)
        self._end(attempt.assign, self._result(attempt, outcome))

    def _result(self, attempt: Attempt, out: Outcome) -> Message:
        a, meter = attempt.assign, attempt.meter
        common = {
            "duration_s": out.duration_s,
            "peak_rss_mb": out.peak_rss_mb,
            "tokens": meter.tokens,
            "log_tail": out.log_tail,
        }
        if out.stopped:
            how = f"exit code {out.exit_code}" if out.signal is None else f"signal {out.signal}"
            return _failed(
                a,
                "killed" if out.stopped == "killed" else "aborted",
                error=f"{out.stopped}: {attempt.why} ({how})",
                exit_code=out.exit_code,
                signal=out.signal,
                **common,
            )
        if out.exit_code == 0:
            return TaskDone(**_ids(a), exit_code=0, tok_s=meter.tok_s(self.clock()), **common)
        if out.exit_code == EXIT_RETRY_LATER:
            return _failed(
                a,
                "retry_later",
                error="exit code 75: the task asks to be tried again later",
                exit_code=EXIT_RETRY_LATER,
                **common,
            )
        if out.signal is None:
            error = f"exit code {out.exit_code}"
        else:
            error = self._signalled(a, out.signal)
        return _failed(a, "exit", error=error, exit_code=out.exit_code, signal=out.signal, **common)

    def _signalled(self, a: TaskAssign, number: int) -> str:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        error = f"ended by {name} ({number}), which the worker did not send"
        limits = self.config.policy.limits_for(a.task_class)
        if number == signal.SIGXCPU and limits is not None and limits.cpu_s:
            error += f": over the CPU time limit of {limits.cpu_s}s for {a.task_class} tasks"
        return error

    def _end(self, a: TaskAssign, msg: Message) -> None:
        self._recent[a.attempt_id] = msg
        while len(self._recent) > REMEMBERED:
            self._recent.popitem(last=False)
        self.deliver(msg)


def _absurd(a: TaskAssign) -> str:
    """Figures no brain sends: they would corrupt the budget or disarm the timers."""
    if a.vram_mb < 0:
        return f"vram_mb must not be negative, got {a.vram_mb}"
    for name in ("timeout_s", "grace_s"):
        value = getattr(a, name)
        if not math.isfinite(value) or value < 0:
            return f"{name} must be a finite number of seconds, at least 0, got {value}"
    return ""


def _ids(a: TaskAssign) -> dict[str, str]:
    return {"dst": BRAIN, "batch_id": a.batch_id, "task_id": a.task_id, "attempt_id": a.attempt_id}


def _started(a: TaskAssign, attempt: Attempt) -> TaskStarted:
    return TaskStarted(**_ids(a), pid=attempt.shell.pid if attempt.shell is not None else 0)


def _failed(a: TaskAssign, reason: str, **fields: object) -> TaskFailed:
    return TaskFailed(**_ids(a), reason=reason, **fields)  # type: ignore[arg-type]
