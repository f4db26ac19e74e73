"""Shell attempts: supervised subprocesses in their own session.

Theory of operation
-------------------
``ShellAttempt.spawn`` runs ``/bin/sh -c <command>`` in a new session (so in
a new process group whose id is the shell's pid), in the batch folder, with
a clean environment (``task_env``), stdin from /dev/null and stdout and
stderr on one pipe that the worker pumps into the task's log
(``worker.output``: capped at ``max_output_mb``, and a failed write to the
log fails the attempt with the reason instead of the worker). The log's
header is written first; a disk that cannot take it is a ``SpawnError``
naming the folder and its free bytes, and nothing the spawn made is left.

The worker learns of the exit without a thread per task: a pidfd (Linux
5.3+) becomes readable when the shell exits and sits in the worker's poll
set. Exit is confirmed with ``waitid(WNOWAIT)``, which leaves the shell a
zombie; while it is one its pid cannot be reused, so ``reap`` can first send
SIGKILL to the whole group (nothing the task started outlives it) and only
then collect the status.

Abort is SIGTERM to the group, kill is SIGKILL to the group plus any process
still in the task's session under another group id (a job-control shell
inside the task makes those). A process that calls ``setsid`` itself leaves
the session and cannot be found this way: ``worker.strays`` sweeps those by the
attempt's marker when the attempt ends.

The shell starts confined and limited without running Python between fork
and exec, so it is started with ``vfork`` (the worker's address space, with
its model, is not copied): the resource limits of the task's class
(``worker.rlimits.Rlimits``) are ``ulimit`` lines the shell runs before the
command, and the kernel confinement (``worker.landlock``: ``no_new_privs``
and the attempt's Landlock ruleset, built in the worker) is set on a thread
that starts the shell, from which the shell inherits it: the kept ruleset's
own thread (``landlock.Rulesets.call``, confined once for all its attempts),
or a short one (``landlock.confined_call``). With a task user (``worker.taskuser``) the child sets,
between fork and exec, the limits, the user (groups, gid, uid, capabilities
dropped), then the confinement. A confined attempt gets a private temporary folder
(``TMPDIR``), created before it starts and removed when it is reaped (or, left
empty, given back to serve a later attempt under a new name:
``landlock.Rulesets.recycle``); with
a task user it belongs to that user and is the task's ``HOME`` as well
(``USER`` and ``LOGNAME`` name the task user).

Peak memory is sampled (``session_rss``) because the kernel's ``ru_maxrss``
for a child includes the RSS of the parent it forked from, here the worker
with its model; a task shorter than one sampling interval reports the
largest sample taken, possibly 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from llmo.proto.messages import TaskAssign
from llmo.worker import landlock
from llmo.worker.output import OutputPump, disk_reason
from llmo.worker.rlimits import Rlimits, preexec, shell_prefix
from llmo.worker.taskuser import TaskUser

log = logging.getLogger("llmo.worker.shell")

# Variables a task inherits from the worker's own environment; nothing else
# leaks in (no broker keys, no tokens, no operator's shell settings).
KEEP_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
)
TAIL_LINES = 20
TAIL_CHARS = 2000
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


class SpawnError(Exception):
    """The attempt could not be started; the message says why."""


def task_env(
    assign: TaskAssign, *, base: Mapping[str, str], extra: Mapping[str, str] = {}
) -> dict[str, str]:
    env = {k: base[k] for k in KEEP_ENV if k in base}
    env.setdefault("PATH", os.defpath)
    env.update(assign.env)
    env.update(
        PLAN_PATH=assign.plan_path,
        BATCH_PATH=assign.batch_path,
        BATCH_ID=assign.batch_id,
        TASK_ID=assign.task_id,
        ATTEMPT_ID=assign.attempt_id,
        WORKER_NAME=assign.dst,  # the original system's name for it
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def default_log_path(assign: TaskAssign) -> str:
    return os.path.join(assign.batch_path or ".", "logs", f"{assign.task_id}.log")


@dataclass(frozen=True, slots=True)
class Outcome:
    exit_code: int | None  # None when a signal ended it
    signal: int | None
    duration_s: float
    peak_rss_mb: float
    log_tail: str
    stopped: str  # "", "aborted" or "killed": what the worker did to it
    dropped: int = 0  # output bytes past the cap, not written to the log
    disk_error: str = ""  # why the log could not be written, "" if it could


class ShellAttempt:
    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        log_path: str,
        log_offset: int,
        clock: Callable[[], float] = time.monotonic,
        tmp: str = "",
        user: TaskUser | None = None,
        output: OutputPump | None = None,
    ) -> None:
        self.proc = proc
        self.output = output  # the pipe from the task to its log
        self.tmp = tmp  # the private temporary folder, removed by clean (at reap)
        self.user = user  # the task's user, None: the worker's
        self.pid = proc.pid
        self.log_path = log_path
        self.log_offset = log_offset
        self.clock = clock
        self.started = clock()
        self.stopped = ""
        self.terminated_at: float | None = None
        self.peak_kb = 0
        self._reaped = False
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self.pidfd = -1  # the loop's periodic check notices the exit instead

    @classmethod
    def spawn(
        cls,
        command: str,
        *,
        cwd: str,
        env: Mapping[str, str],
        log_path: str,
        header: str = "",
        rlimits: Rlimits | None = None,
        confine: landlock.Confinement | None = None,
        user: TaskUser | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_output: int = 0,
        rulesets: landlock.Rulesets | None = None,
    ) -> ShellAttempt:
        if not os.path.isdir(cwd):
            raise SpawnError(f"batch folder {cwd} does not exist or is not a folder")
        offset = _open_log(log_path, header)
        settings = rlimits.settings() if rlimits is not None else ()
        env = dict(env)
        tmp, ruleset, owned = "", -1, False
        limits: Callable[[], None] | None = None
        if user is not None:
            # set*id happens in the child: it forks, and runs Python before exec.
            limits = _then(preexec(settings), user.become)
            env.update(USER=user.name, LOGNAME=user.name)
        else:
            command = shell_prefix(settings) + command
        if confine is not None:
            tmp, ruleset, owned = _confined(confine, env, user, rulesets)
            if user is not None:
                limits = landlock.preexec(ruleset, limits)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                ["/bin/sh", "-c", command],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                # setrlimit, set*id, capset, prctl and Landlock calls only
                preexec_fn=limits,
            )

        try:
            if confine is not None and user is None and rulesets is not None:
                proc = rulesets.call(ruleset, start)  # (a ruleset it does not keep: its own thread)
            elif confine is not None and user is None:
                proc = landlock.confined_call(ruleset, start)
            else:
                proc = start()
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            # ValueError: a NUL byte, or an environment name holding "=".
            os.close(read_end)
            if tmp:
                _remove_tmp(tmp, user)
            raise SpawnError(f"cannot start /bin/sh in {cwd}: {exc}") from None
        finally:
            os.close(write_end)
            if owned and ruleset >= 0:
                os.close(ruleset)
        output = OutputPump(read_end, log_path, max_output)
        return cls(proc, log_path, offset, clock, tmp, user, output)

    # --- state -------------------------------------------------------------------------

    def fileno(self) -> int:
        return self.pidfd

    def exited(self) -> bool:
        if self._reaped:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None and info.si_pid == self.pid

    def elapsed(self) -> float:
        return self.clock() - self.started

    # --- signals ------------------------------------------------------------------------

    def terminate(self) -> None:
        """Abort: SIGTERM to the group. A second abort does not re-arm anything."""
        if self.terminated_at is None:
            self.terminated_at = self.clock()
            self.stopped = self.stopped or "aborted"
        _signal_group(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """Kill: SIGKILL to the group and to any stray in the task's session."""
        self.stopped = "killed"
        if self.terminated_at is None:
            self.terminated_at = self.clock()
        _signal_group(self.pid, signal.SIGKILL)
        for pid in session_members(self.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def note_rss(self, kb: int) -> None:
        self.peak_kb = max(self.peak_kb, kb)

    # --- the end ---------------------------------------------------------------------

    def clean(self, rulesets: landlock.Rulesets | None = None) -> None:
        """Remove the attempt's temporary folder (once), or give it back to ``rulesets``
        for a later attempt when it is empty (``Rulesets.recycle``)."""
        if self.tmp:
            if self.user is not None or rulesets is None or not rulesets.recycle(self.tmp):
                _remove_tmp(self.tmp, self.user)
            self.tmp = ""

    def reap(self, *, clean: bool = True) -> Outcome:
        """Collect the exited shell; anything left in its group is killed first.
        ``clean``: remove its temporary folder now (else call ``clean``)."""
        _signal_group(self.pid, signal.SIGKILL)
        status = 0
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = 0
        self._reaped = True
        if clean:
            self.clean()
        dropped, disk_error = 0, ""
        if self.output is not None:
            self.output.close()
            dropped, disk_error = self.output.dropped, self.output.error
        code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = code
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        return Outcome(
            exit_code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            duration_s=round(self.elapsed(), 3),
            peak_rss_mb=round(self.peak_kb / 1024, 1),
            log_tail=read_tail(self.log_path, self.log_offset),
            stopped=self.stopped,
            dropped=dropped,
            disk_error=disk_error,
        )


def _open_log(log_path: str, header: str) -> int:
    """Create the log's folder, append the header; the offset after it. A log that
    cannot be written is a ``SpawnError`` with the reason, and a log file this
    call created is not left behind empty."""
    made = False
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    try:
        try:
            fd = os.open(log_path, flags)  # a retry's log, already there
        except FileNotFoundError:
            made = True
            try:
                fd = os.open(log_path, flags | os.O_CREAT, 0o644)
            except FileNotFoundError:  # its folder first
                os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
                fd = os.open(log_path, flags | os.O_CREAT, 0o644)
    except ValueError as exc:  # a NUL byte in the path
        raise SpawnError(f"cannot open log {log_path}: {exc}") from None
    except OSError as exc:
        raise SpawnError(f"cannot open log {log_path}: {disk_reason(log_path, exc)}") from None
    try:
        data = memoryview(header.encode("utf-8", "replace"))
        while data:
            data = data[os.write(fd, data) :]
        return os.lseek(fd, 0, os.SEEK_END)
    except OSError as exc:
        if made:
            with contextlib.suppress(OSError):
                os.unlink(log_path)
        raise SpawnError(disk_reason(log_path, exc)) from None
    finally:
        os.close(fd)


def _confined(
    confine: landlock.Confinement,
    env: dict[str, str],
    user: TaskUser | None = None,
    rulesets: landlock.Rulesets | None = None,
) -> tuple[str, int, bool]:
    """The attempt's private temporary folder (set as ``TMPDIR`` in ``env``, and as
    ``HOME`` for a task user), its Landlock ruleset fd (-1 without Landlock) and
    whether that fd is the caller's to close (not when ``rulesets`` keeps it);
    raises ``SpawnError``."""
    if user is None and rulesets is not None:
        try:
            ruleset, root = rulesets.get(confine)
            tmp = rulesets.tmp_in(root)
        except OSError as exc:
            raise SpawnError(f"cannot prepare the task's confinement: {exc}") from None
        env["TMPDIR"] = tmp
        return tmp, ruleset, False
    try:
        tmp = user.make_tmp() if user is not None else tempfile.mkdtemp(prefix="llmo-task-")
    except OSError as exc:
        raise SpawnError(f"cannot make the task's temporary folder: {exc}") from None
    env["TMPDIR"] = tmp
    if user is not None:
        env["HOME"] = tmp  # the task user has no home; the worker's is the rig folder
    try:
        return tmp, confine.ruleset(tmp), True
    except OSError as exc:
        _remove_tmp(tmp, user)
        raise SpawnError(f"cannot build the task's Landlock ruleset: {exc}") from None


def _remove_tmp(tmp: str, user: TaskUser | None) -> None:
    """Remove a private temporary folder; a task user's own files go as that user."""
    if user is not None:
        try:
            user.remove_tmp(tmp)
        except OSError as exc:
            log.warning("cannot remove the task's temporary folder %s: %s", tmp, exc)
        return
    try:
        os.rmdir(tmp)  # most tasks leave it empty
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _then(first: Callable[[], None] | None, second: Callable[[], None]) -> Callable[[], None]:
    """A ``preexec_fn`` that runs ``first`` (if any), then ``second``."""

    def apply() -> None:
        if first is not None:
            first()
        second()

    return apply


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def read_tail(path: str, offset: int = 0) -> str:
    """The last lines an attempt wrote to its log (from ``offset`` on)."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(offset, end - 8192))
            data = f.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()[-TAIL_LINES:]
    return "\n".join(lines)[-TAIL_CHARS:]


# --- /proc ------------------------------------------------------------------------------


def stat_fields(pid: str, proc: str = "/proc") -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].decode().split()


def session_rss(sessions: Iterable[int], proc: str = "/proc") -> dict[int, int]:
    """Resident memory in KiB summed over the processes of each session."""
    wanted = set(sessions)
    totals = dict.fromkeys(wanted, 0)
    if not wanted:
        return totals
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        fields = stat_fields(pid, proc)
        if fields is None or len(fields) < 22:
            continue
        sid = int(fields[3])
        if sid in wanted:
            totals[sid] += int(fields[21]) * PAGE_KB
    return totals


def session_members(sid: int, proc: str = "/proc") -> list[int]:
    members = []
    for pid in os.listdir(proc):
        if pid.isdigit():
            fields = stat_fields(pid, proc)
            if fields is not None and len(fields) > 3 and int(fields[3]) == sid:
                members.append(int(pid))
    return members
