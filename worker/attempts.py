"""The attempts a worker runs: start, cancel, timers and results.

Theory of operation
-------------------
``Attempts.assign`` admits an assignment (``worker.admission``: the command
policy, then the worker's state) and spawns it as a ``ShellAttempt`` with
its class's resource limits (``Policy.rlimits``), confined by the kernel
(``worker.landlock``: writes only beneath its plan roots, batch folder and a
private temporary folder; no reads of the secret paths; ``no_new_privs``),
and as the configured task user when there is one (``worker.taskuser``).
Each attempt has a token
``Meter`` whose key its environment carries, so what it generates through
the endpoint is counted for it and reported in ``TaskProgress`` and the
result. ``meta`` tasks never run here: the brain runs them as ``ModelLoad``
and ``ModelUnload``, which reach the runtime through ``load`` and
``unload``.

Stopping: abort = SIGTERM to the group, and SIGKILL ``grace_s`` (from the
assignment) later if it is still there; kill = SIGKILL at once. A second
abort does not move the kill. An attempt over its ``timeout_s`` is aborted
by the worker itself, as a backstop to the brain's own stuck detection.

Output: each attempt's output pipe sits in the poll set; ``on_fd`` pumps it
into the log (``worker.output``), capped at ``max_output_mb``. A log the
disk will not take aborts the attempt with the reason ("disk full under
..."); it fails like any attempt, and the worker serves on.

Strays: each attempt's environment carries a marker (``worker.strays``);
when it ends, whatever it started that still runs, even outside its session,
gets SIGTERM, and SIGKILL after the grace.

Results (``worker.results``) go through the link (held until delivered).
``TaskStarted`` only informs (the brain counts an attempt started when its
result comes first), so it waits ``START_REPORT_S``: an attempt that ends
sooner sends its result alone. A short task then costs one message through
the broker and the brain instead of two, and a chain's hop does not queue
behind a report of its start. An attempt assigned again while it runs is
confirmed at once. The last results are remembered, so an assignment or cancel that arrives
again for an attempt that already ended is answered with its result instead
of a second run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from llmo.proto.messages import (
    BRAIN,
    Message,
    ModelStatus,
    TaskAssign,
    TaskCancel,
    TaskFailed,
    TaskProgress,
    TaskStarted,
)
from llmo.worker import admission, landlock, results, taskuser
from llmo.worker.cache import POLICY_ENV
from llmo.worker.config import WorkerConfig
from llmo.worker.leftovers import GroupLedger
from llmo.worker.limits import Level
from llmo.worker.llm import LoadSpec, Runtime
from llmo.worker.meter import Meter, Meters
from llmo.worker.shell import ShellAttempt, SpawnError, default_log_path, task_env
from llmo.worker.strays import MARK, Strays, new_mark

log = logging.getLogger("llmo.worker.attempts")

START_REPORT_S = 0.05  # an attempt still running this long after its spawn reports its start


@dataclass(slots=True, eq=False)
class Attempt:
    assign: TaskAssign
    meter: Meter
    started: float
    shell: ShellAttempt
    kill_at: float | None = None
    why: str = ""  # why the worker itself stopped it
    interrupted: bool = False  # stopped because the worker stops: not the task's failure
    reported: int = 0  # tokens in the last TaskProgress
    mark: str = ""  # the marker its processes carry (LLMO_TASK_MARK)
    announced: bool = False  # its TaskStarted has gone to the link

    def announce(self) -> TaskStarted:
        self.announced = True
        return results.started(self.assign, self.shell.pid)

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
        self._by_output: dict[int, Attempt] = {}
        self.strays = Strays(clock=clock)
        self.rulesets = landlock.Rulesets(clock)
        self.ledger: GroupLedger | None = None  # running groups, for a successor to end
        self._recent = results.Recent()
        # Raises TaskUserError (the worker does not start) when the user cannot be used.
        self.task_user = taskuser.resolve(config.task_user) if config.task_user else None
        if self.task_user is not None:
            log.info("tasks run as %s (uid %d)", self.task_user.name, self.task_user.uid)
        self.landlock_abi, why = landlock.probe(config.landlock_abi)
        if self.landlock_abi < 1:
            log.warning(
                "tasks are NOT confined by the kernel: %s; they run with no_new_privs, "
                "and only the command policy's patterns refuse writes to protected paths",
                why,
            )
        else:
            log.info("tasks are confined by Landlock ABI %d", self.landlock_abi)

    # --- capacity ---------------------------------------------------------------------

    @property
    def slots_used(self) -> int:
        return len(self.running)

    @property
    def vram_used(self) -> int:
        return sum(a.assign.vram_mb for a in self.running.values())

    def active(self) -> tuple[str, ...]:
        return tuple(self.running)

    # --- assign ---------------------------------------------------------------------------

    def assign(self, a: TaskAssign, level: Level, draining: bool, constraint: str) -> None:
        if a.attempt_id in self.running:
            log.info("attempt %s assigned again while running; confirming it", a.attempt_id)
            self.deliver(self.running[a.attempt_id].announce())
            return
        known = self._recent.get(a.attempt_id)
        if known is not None:
            log.info("attempt %s assigned again after it ended; its result again", a.attempt_id)
            self.deliver(known)
            return
        if a.task_class != "meta":
            error = admission.policy_refusal(a, self.config.policy, self.config.name)
            if error is not None:
                log.warning("attempt %s %s", a.attempt_id, error)
                admission.note_in_log(a, self.config.policy, self._header(a), error)
                self._end(a, results.failed(a, "policy", error=error, log_tail=f"llmo: {error}"))
                return
        reason = admission.refusal(
            a,
            worker=self.config.name,
            level=level,
            draining=draining,
            constraint=constraint,
            runtime=self.runtime,
            slots=self.config.slots,
            slots_used=self.slots_used,
            budget_mb=self.budget_mb,
            vram_used=self.vram_used,
            llm_used=sum(1 for r in self.running.values() if r.assign.task_class == "llm"),
        )
        if reason is not None:
            log.info("refused %s: %s", a.attempt_id, reason)
            self._end(a, results.failed(a, "refused", error=reason))
            return
        started = self.clock()
        meter = self.meters.add(
            Meter(
                a.attempt_id,
                llm=a.task_class in admission.LLM_CLASSES,
                cache_policy=(a.env or {}).get(POLICY_ENV),
            )
        )
        mark = new_mark(a.attempt_id)
        try:
            shell = ShellAttempt.spawn(
                a.command,
                cwd=a.batch_path or os.getcwd(),
                env=task_env(a, base=os.environ, extra={**self.api_env(meter), MARK: mark}),
                log_path=a.log_path or default_log_path(a),
                header=self._header(a),
                rlimits=self.config.policy.limits_for(a.task_class),
                confine=landlock.for_task(
                    self.config.policy, a.plan_path, a.batch_path, self.landlock_abi
                ),
                user=self.task_user,
                clock=self.clock,
                max_output=int(self.config.max_output_mb * 1024 * 1024),
                rulesets=self.rulesets,
            )
        except SpawnError as exc:
            log.warning("attempt %s not started: %s", a.attempt_id, exc)
            self.meters.remove(a.attempt_id)
            self._end(a, results.failed(a, "spawn_error", error=str(exc)))
            return
        attempt = Attempt(assign=a, meter=meter, started=started, shell=shell, mark=mark)
        self.running[a.attempt_id] = attempt
        if self.ledger is not None:
            self.ledger.add(shell.pid)
        if shell.pidfd >= 0:
            self._by_fd[shell.pidfd] = attempt
            self.watch(shell.pidfd)
        if shell.output is not None:
            self._by_output[shell.output.fd] = attempt
            self.watch(shell.output.fd)

    def _header(self, a: TaskAssign) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        return f"--- llmo: {a.task_id} attempt {a.attempt_id} on {self.config.name} {stamp}\n"

    # --- the runtime, for ModelLoad and ModelUnload ---------------------------------------

    def load(self, spec: LoadSpec) -> None:
        self.runtime.load(spec)
        if self.runtime.state == "loading":
            self.send(ModelStatus(dst=BRAIN, model=spec.name, state="loading"))

    def unload(self) -> None:
        self.runtime.unload()

    # --- cancel and timers -------------------------------------------------------------------

    def cancel(self, msg: TaskCancel) -> None:
        attempt = self.running.get(msg.attempt_id)
        if attempt is None:
            known = self._recent.get(msg.attempt_id)
            if known is not None:
                self.deliver(known)
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
        if mode == "kill":
            attempt.shell.kill()
            return
        attempt.shell.terminate()
        if attempt.kill_at is None:
            grace = attempt.assign.grace_s if grace_s is None else grace_s
            attempt.kill_at = self.clock() + grace

    def stop_all(
        self,
        why: str,
        *,
        classes: frozenset[str] | None = None,
        grace_s: float,
        interrupt: bool = False,
    ) -> int:
        """Abort the running attempts (of ``classes``); ``interrupt``: they are
        reported ``interrupted`` (the worker stops), not ``aborted``."""
        chosen = [
            a for a in self.running.values() if classes is None or a.assign.task_class in classes
        ]
        for attempt in chosen:
            attempt.interrupted = attempt.interrupted or interrupt
            self.stop(attempt, "abort", why, grace_s=grace_s)
        return len(chosen)

    def next_due(self) -> float | None:
        """When the next start report is due (None: none is waiting)."""
        waiting = [a.started for a in self.running.values() if not a.announced]
        return min(waiting) + START_REPORT_S if waiting else None

    def tick(self, now: float) -> None:
        self.strays.tick(now, self.sessions())
        for attempt in list(self.running.values()):
            shell = attempt.shell
            if not attempt.announced and now - attempt.started >= START_REPORT_S:
                self.deliver(attempt.announce())
            if attempt.kill_at is not None and now >= attempt.kill_at and shell.stopped != "killed":
                log.warning("attempt %s ignored SIGTERM; killing its group", attempt.id)
                shell.kill()
            elif attempt.kill_at is None and now - attempt.started > attempt.assign.timeout_s:
                limit = attempt.assign.timeout_s
                self.stop(attempt, "abort", f"no result after its timeout of {limit:.0f}s")

    def on_fd(self, fd: int) -> None:
        """A watched fd is readable: an attempt's output, or its shell's exit."""
        attempt = self._by_output.get(fd)
        if attempt is None:
            self.check_exits(fd)
            return
        output = attempt.shell.output
        assert output is not None
        output.pump()
        if output.eof:
            self._unwatch_output(attempt)
        if output.error and not attempt.shell.stopped:
            log.error("attempt %s: %s; aborting it", attempt.id, output.error)
            self.stop(attempt, "abort", output.error)

    def _unwatch_output(self, attempt: Attempt) -> None:
        output = attempt.shell.output
        if output is not None and self._by_output.pop(output.fd, None) is not None:
            self.unwatch(output.fd)

    def check_exits(self, fd: int | None = None) -> None:
        """Collect attempts whose shell has exited (one pidfd, or all of them)."""
        if fd is not None:
            attempt = self._by_fd.get(fd)
            candidates = [attempt] if attempt is not None else []
        else:
            candidates = list(self.running.values())
        for attempt in candidates:
            if attempt.shell.exited():
                self._finish(attempt)

    def note_rss(self, by_session: dict[int, int]) -> None:
        for attempt in self.running.values():
            if attempt.shell.pid in by_session:
                attempt.shell.note_rss(by_session[attempt.shell.pid])

    def sessions(self) -> list[int]:
        return [a.shell.pid for a in self.running.values()]

    # --- progress and results -----------------------------------------------------------------

    def progress(self, now: float) -> None:
        for attempt in self.running.values():
            meter = attempt.meter
            if meter.tokens != attempt.reported:
                attempt.reported = meter.tokens
                self.send(
                    TaskProgress(
                        **results.ids(attempt.assign), tokens=meter.tokens, tok_s=meter.tok_s(now)
                    )
                )

    def _finish(self, attempt: Attempt) -> None:
        fd = attempt.shell.pidfd
        if fd >= 0:
            self.unwatch(fd)
            self._by_fd.pop(fd, None)
        self._unwatch_output(attempt)
        self.running.pop(attempt.id, None)
        since = self.strays.start_time(attempt.shell.pid)  # read while it is a zombie
        outcome = attempt.shell.reap(clean=False)
        if self.ledger is not None:
            self.ledger.remove(attempt.shell.pid)
        self.meters.remove(attempt.id)
        meter = attempt.meter
        if meter.cache_hits:
            log.info(
                "attempt %s: %d completions (%d tokens) from the result cache, none generated",
                attempt.id,
                meter.cache_hits,
                meter.cache_hit_tokens,
            )
        a = attempt.assign
        limits = self.config.policy.limits_for(a.task_class)
        self._end(
            a,
            results.result(
                a,
                attempt.meter,
                outcome,
                now=self.clock(),
                why=attempt.why,
                limits=limits,
                interrupted=attempt.interrupted,
            ),
        )
        # Its group is dead (``reap``); its TMPDIR goes and what left the group
        # is ended once the result is on its way: neither is on a chain's path.
        attempt.shell.clean(self.rulesets)
        self.sweep(attempt, attempt.assign.grace_s, since)

    def sweep(self, attempt: Attempt, grace_s: float, since: int | None = None) -> int:
        """End what the attempt started that still runs outside its group; ``since``:
        the start time of its shell (read now when not given)."""
        others = [a for a in self.running.values() if a is not attempt]
        return self.strays.sweep(
            attempt.mark,
            grace_s,
            spare=[attempt.shell.pid, *(a.shell.pid for a in others)],
            alone=not others,
            since=self.strays.start_time(attempt.shell.pid) if since is None else since,
            at_once=not others and self.task_user is not None,
        )

    def _end(self, a: TaskAssign, msg: Message) -> None:
        self._recent.add(a.attempt_id, msg)
        self.deliver(msg)
