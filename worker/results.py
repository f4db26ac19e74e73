"""What a worker answers for an attempt: started, done or failed, and why.

``result`` turns a shell attempt's ``Outcome`` into ``TaskDone`` or
``TaskFailed``: stopped by the worker (``aborted`` / ``killed``, with the
reason it was stopped; ``interrupted`` when the worker was stopping), exit
code 0 (done), ``EXIT_RETRY_LATER`` (``retry_later``), another exit code,
or a signal the worker did not send (``exit``; SIGXCPU is named as the
class's CPU time limit). An attempt whose log the disk would not take fails
with that reason ("disk full under ...") whatever its exit; output cut at
the cap is said in the log's last line, which the result's ``log_tail``
carries, and in a failure's error. ``Recent`` keeps the last results, so an
assignment or cancel that comes again for an attempt that already ended is
answered with its result.
"""

from __future__ import annotations

import collections
import signal
from typing import TypedDict, Unpack

from llmo.proto.messages import (
    BRAIN,
    FailReason,
    Message,
    TaskAssign,
    TaskDone,
    TaskFailed,
    TaskStarted,
)
from llmo.proto.vocab import EXIT_RETRY_LATER
from llmo.worker.meter import Meter
from llmo.worker.rlimits import Rlimits
from llmo.worker.shell import Outcome

REMEMBERED = 1000


class Ids(TypedDict):
    """The fields that address a result to the attempt it answers."""

    dst: str
    batch_id: str
    task_id: str
    attempt_id: str


class Measured(TypedDict):
    """What every result of a finished process reports, whatever its end."""

    duration_s: float
    peak_rss_mb: float
    tokens: int
    log_tail: str


def ids(a: TaskAssign) -> Ids:
    return {"dst": BRAIN, "batch_id": a.batch_id, "task_id": a.task_id, "attempt_id": a.attempt_id}


def started(a: TaskAssign, pid: int) -> TaskStarted:
    return TaskStarted(**ids(a), pid=pid)


class FailedFields(TypedDict, total=False):
    """What a ``TaskFailed`` may say beside its reason."""

    exit_code: int | None
    signal: int | None
    duration_s: float
    peak_rss_mb: float
    tokens: int
    error: str
    log_tail: str


def failed(a: TaskAssign, reason: FailReason, **fields: Unpack[FailedFields]) -> TaskFailed:
    return TaskFailed(**ids(a), reason=reason, **fields)


def result(
    a: TaskAssign,
    meter: Meter,
    out: Outcome,
    *,
    now: float,
    why: str,
    limits: Rlimits | None,
    interrupted: bool = False,
) -> Message:
    """The answer for an attempt that ended at ``now``; ``why``: why the worker stopped it
    (``interrupted``: because the worker itself was stopping)."""
    common = Measured(
        duration_s=out.duration_s,
        peak_rss_mb=out.peak_rss_mb,
        tokens=meter.tokens,
        log_tail=out.log_tail,
    )
    cut = f"; output truncated: {out.dropped} bytes dropped" if out.dropped else ""
    if out.disk_error and not out.stopped:
        return failed(
            a,
            "exit",
            error=f"the task's output was lost: {out.disk_error}",
            exit_code=out.exit_code,
            signal=out.signal,
            **common,
        )
    if out.stopped:
        how = f"exit code {out.exit_code}" if out.signal is None else f"signal {out.signal}"
        return failed(
            a,
            "interrupted" if interrupted else "killed" if out.stopped == "killed" else "aborted",
            error=f"{out.stopped}: {why} ({how}){cut}",
            exit_code=out.exit_code,
            signal=out.signal,
            **common,
        )
    if out.exit_code == 0:
        return TaskDone(**ids(a), exit_code=0, tok_s=meter.tok_s(now), **common)
    if out.exit_code == EXIT_RETRY_LATER:
        return failed(
            a,
            "retry_later",
            error="exit code 75: the task asks to be tried again later",
            exit_code=EXIT_RETRY_LATER,
            **common,
        )
    error = f"exit code {out.exit_code}" if out.signal is None else signalled(a, out.signal, limits)
    return failed(
        a, "exit", error=error + cut, exit_code=out.exit_code, signal=out.signal, **common
    )


def signalled(a: TaskAssign, number: int, limits: Rlimits | None) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    error = f"ended by {name} ({number}), which the worker did not send"
    if number == signal.SIGXCPU and limits is not None and limits.cpu_s:
        error += f": over the CPU time limit of {limits.cpu_s}s for {a.task_class} tasks"
    return error


class Recent:
    """The results of the last ``REMEMBERED`` attempts that ended, by attempt id."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self.size = size
        self._results: collections.OrderedDict[str, Message] = collections.OrderedDict()

    def add(self, attempt_id: str, msg: Message) -> None:
        self._results[attempt_id] = msg
        while len(self._results) > self.size:
            self._results.popitem(last=False)

    def get(self, attempt_id: str) -> Message | None:
        return self._results.get(attempt_id)
