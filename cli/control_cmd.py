"""``llmo cancel | retry | drain | load | unload``: one request to the brain, and its outcome.

Theory of operation
-------------------
Each request is answered by the brain with an ``Ack``; a refusal (unknown
batch or worker, a worker with no model to unload, a load already under way)
is printed with exit code 1. ``cancel`` ends there, and so does ``retry``
(a failed task re-opened: the brain answers once the task, its skipped
dependents and its batch run again; a refusal says why, e.g. a task that
has not failed). ``load``, ``unload`` and
``drain`` then wait for what the worker really did, which the brain learns
later: the command subscribes to the brain's published events before it
sends the request, and polls the brain's snapshot of the worker as well.
The snapshot is what counts: a SUB socket's subscription takes effect in the
background, so an outcome published at once (a load refused on the spot) can
be missed, and the snapshot names the worker's last failed load and why
(``WorkerInfo.load_failed``), a worker gone down, or a model now hot.

* ``load``: done when the worker reports itself hot (``model_hot``); failed
  when it reports ``model_failed`` (its reason is printed), or when the
  brain stops waiting for the load without the worker being hot.
* ``unload``: done when the worker reports itself cold.
* ``drain``: done when the worker reports draining with no attempt left
  running; ``drain --undo`` when it no longer reports draining.

Exit 0 on the outcome asked for; 1 on a refusal, a failure (with the
reason), a worker gone down, or when ``--timeout`` seconds pass first (the
message says what is still under way: the load, the tasks still running on
a draining worker). ``--no-wait`` prints the brain's answer and returns at
once (``drain --no-wait`` also lists what still runs there).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llmo.cli.common import add_endpoint_flags
from llmo.cli.status_cmd import snapshot
from llmo.cli.tools import DEFAULT_TIMEOUT, add_tool_flags, fail, open_session, publications
from llmo.proto.messages import (
    BRAIN,
    BatchCancel,
    BatchEvent,
    Message,
    ModelLoad,
    ModelUnload,
    SnapshotReply,
    TaskRetry,
    WorkerDrain,
    WorkerInfo,
)
from llmo.proto.pubsub import BATCH_EVENT_TOPICS, Subscriber
from llmo.proto.session import Session, ToolError

POLL_S = 0.5
# How long a settled snapshot waits for the event that says why (it travels
# through the broker's PUB socket, the snapshot's reply through its ROUTER).
REASON_GRACE_S = 1.0
LOAD_TIMEOUT_S = 600.0
UNLOAD_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 600.0

# (ok, sentence) when the outcome is known; None while it is not.
Verdict = tuple[bool, str] | None


def _send(args: argparse.Namespace, command: str, msg: Message) -> int:
    session = open_session(args, command)
    try:
        detail = session.control(msg)
    except ToolError as exc:
        return fail(command, exc)
    finally:
        session.close()
    print(detail or "ok")
    return 0


@dataclass(slots=True)
class Follow:
    """The brain's view of one worker after a request: its snapshot row and the
    model events published about it since the request was sent."""

    session: Session
    worker: str
    subscriber: Subscriber | None = None
    events: list[BatchEvent] = field(default_factory=list)
    snapshot: SnapshotReply | None = None

    def start(self) -> None:
        self.subscriber = Subscriber(self.session.endpoints.pub, topics=BATCH_EVENT_TOPICS)
        # A first round trip through the broker, which gives the subscription time to
        # take effect (it is not proof: the snapshot is what ``wait`` relies on).
        self.info()

    def info(self) -> WorkerInfo | None:
        reply = self.snapshot = snapshot(self.session)
        return next((w for w in reply.workers if w.name == self.worker), None)

    def listen(self, seconds: float) -> None:
        """Collect this worker's model events for up to ``seconds``."""
        subscriber = self.subscriber
        if subscriber is None:
            return
        for msg in publications(subscriber, seconds):
            if (
                isinstance(msg, BatchEvent)
                and msg.worker == self.worker
                and msg.event.startswith("model_")
            ):
                self.events.append(msg)

    def event(self, name: str) -> BatchEvent | None:
        return next((e for e in self.events if e.event == name), None)

    def wait(self, judge: Callable[[WorkerInfo | None], Verdict], timeout: float) -> Verdict:
        """Poll until ``judge`` settles; None when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while True:
            verdict = judge(self.info())
            if verdict is not None:
                return verdict
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.listen(min(POLL_S, left))

    def running(self, info: WorkerInfo) -> str:
        """The tasks still running on the worker, by task id where the brain knows it."""
        tasks = self.snapshot.tasks if self.snapshot is not None else ()
        by_attempt = {t.attempt_id: f"{t.batch_id}/{t.id}" for t in tasks if t.attempt_id}
        return ", ".join(by_attempt.get(a, f"attempt {a}") for a in info.attempts)

    def close(self) -> None:
        if self.subscriber is not None:
            self.subscriber.close()


def _gone(worker: str, info: WorkerInfo | None) -> Verdict:
    if info is None:
        return False, f"the brain no longer knows worker {worker}"
    if info.presence == "down" or info.state == "down":
        return False, f"{worker} went down"
    return None


def _judge_load(follow: Follow, model: str) -> Callable[[WorkerInfo | None], Verdict]:
    settled_at: list[float] = []

    def judge(info: WorkerInfo | None) -> Verdict:
        worker = follow.worker
        failed = follow.event("model_failed")
        if failed is not None:
            error = failed.detail.get("error") or "the load failed"
            return False, f"{worker} failed to load {model}: {error}"
        hot = follow.event("model_hot")
        if hot is not None:
            return True, f"{worker} hot with {hot.detail.get('model') or model}"
        gone = _gone(worker, info)
        if gone is not None or info is None:
            return gone
        if info.loading:
            return None
        if info.state == "hot":
            return True, f"{worker} hot with {info.model or model}"
        if info.load_failed == model:
            return False, f"{worker} failed to load {model}: {info.load_error or 'the load failed'}"
        # The brain stopped waiting; give the event that says why a moment to arrive.
        if not settled_at:
            settled_at.append(time.monotonic())
        if time.monotonic() - settled_at[0] < REASON_GRACE_S:
            return None
        return False, (
            f"{worker} did not load {model} (it reports {info.state or 'nothing'}); "
            "the brain's log says why"
        )

    return judge


def _judge_unload(follow: Follow) -> Callable[[WorkerInfo | None], Verdict]:
    def judge(info: WorkerInfo | None) -> Verdict:
        worker = follow.worker
        cold = follow.event("model_cold")
        if cold is not None:
            model = cold.detail.get("model")
            return True, f"{worker} unloaded{f' {model}' if model else ''}: cold"
        gone = _gone(worker, info)
        if gone is not None or info is None:
            return gone
        if info.state == "cold" and not info.loading:
            return True, f"{worker} unloaded: cold"
        return None

    return judge


def _judge_drain(follow: Follow, drain: bool) -> Callable[[WorkerInfo | None], Verdict]:
    def judge(info: WorkerInfo | None) -> Verdict:
        worker = follow.worker
        gone = _gone(worker, info)
        if gone is not None or info is None:
            return gone
        if not drain:
            return None if info.state == "draining" else (True, f"{worker} back in service")
        if info.state == "draining" and not info.attempts:
            return True, f"{worker} drained: nothing running, it takes no new work"
        return None

    return judge


def _act(
    args: argparse.Namespace,
    command: str,
    msg: Message,
    worker: str,
    judge: Callable[[Follow], Callable[[WorkerInfo | None], Verdict]],
    pending: Callable[[Follow, WorkerInfo | None], str],
) -> int:
    """Send ``msg`` for ``worker`` and, unless ``--no-wait``, wait for its outcome."""
    session = open_session(args, command)
    session.timeout = min(args.timeout, DEFAULT_TIMEOUT)
    follow = Follow(session=session, worker=worker)
    try:
        if not args.no_wait:
            follow.start()
        detail = session.control(msg)
        print(detail or "ok", flush=True)
        if args.no_wait:
            if command == "drain" and getattr(args, "undo", False) is False:
                left = pending(follow, follow.info())
                if left:
                    print(left)
            return 0
        verdict = follow.wait(judge(follow), args.timeout)
        if verdict is None:
            return fail(
                command, f"no outcome within {args.timeout:g} s: {pending(follow, follow.info())}"
            )
        ok, sentence = verdict
        if not ok:
            return fail(command, sentence)
        print(sentence)
        return 0
    except ToolError as exc:
        return fail(command, exc)
    finally:
        follow.close()
        session.close()


def _configure(parser: argparse.ArgumentParser, wait_s: float | None = None) -> None:
    add_endpoint_flags(parser)
    if wait_s is None:
        add_tool_flags(parser)
        return
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the brain has accepted the request, without waiting for the worker",
    )
    add_tool_flags(
        parser,
        timeout=wait_s,
        timeout_help=f"seconds to wait for the worker's outcome (default {wait_s:g}); "
        f"each request to the brain waits at most {DEFAULT_TIMEOUT:g}",
    )


class Cancel:
    @staticmethod
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("batch", help="the batch id, as printed by llmo submit")
        parser.add_argument("--reason", default="cancelled by the operator")
        _configure(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        return _send(
            args, "cancel", BatchCancel(dst=BRAIN, batch_id=args.batch, reason=args.reason)
        )


class Retry:
    @staticmethod
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("batch", help="the batch id, as printed by llmo submit")
        parser.add_argument("task", help="the id of a task of that batch that failed for good")
        parser.add_argument("--reason", default="retried by the operator")
        _configure(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        msg = TaskRetry(dst=BRAIN, batch_id=args.batch, task_id=args.task, reason=args.reason)
        return _send(args, "retry", msg)


class Drain:
    @staticmethod
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("worker", help="the worker's name, e.g. gpu-1")
        parser.add_argument(
            "--undo", action="store_true", help="return a drained worker to service"
        )
        _configure(parser, DRAIN_TIMEOUT_S)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        def pending(follow: Follow, info: WorkerInfo | None) -> str:
            if info is None:
                return f"the brain no longer knows worker {args.worker}"
            if args.undo:
                return f"{args.worker} still reports {info.state}"
            if info.state != "draining":
                return f"{args.worker} has not reported draining yet (it reports {info.state})"
            running = follow.running(info)
            return f"{args.worker} still runs {running}" if running else ""

        msg = WorkerDrain(dst=BRAIN, worker=args.worker, drain=not args.undo)
        return _act(
            args, "drain", msg, args.worker, lambda f: _judge_drain(f, not args.undo), pending
        )


class Load:
    @staticmethod
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("worker", help="the worker's name, e.g. gpu-1")
        parser.add_argument("model", help="path of the GGUF model on the worker's machine")
        _configure(parser, LOAD_TIMEOUT_S)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        def pending(follow: Follow, info: WorkerInfo | None) -> str:
            state = info.state if info is not None else "unknown"
            return f"{args.worker} is still loading {args.model} (it reports {state})"

        msg = ModelLoad(dst=BRAIN, worker=args.worker, model=args.model)
        return _act(args, "load", msg, args.worker, lambda f: _judge_load(f, args.model), pending)


class Unload:
    @staticmethod
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("worker", help="the worker's name, e.g. gpu-1")
        _configure(parser, UNLOAD_TIMEOUT_S)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        def pending(follow: Follow, info: WorkerInfo | None) -> str:
            state = info.state if info is not None else "unknown"
            return f"{args.worker} has not reported cold yet (it reports {state})"

        msg = ModelUnload(dst=BRAIN, worker=args.worker, reason="asked by the operator")
        return _act(args, "unload", msg, args.worker, _judge_unload, pending)
