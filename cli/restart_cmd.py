"""``llmo restart NAME``: start again a child that ``llmo up`` gave up on, and wait for it.

Theory of operation
-------------------
``llmo up`` leaves a child that crashed more than its restart policy allows
stopped ("given up"). This command asks ``llmo up``'s supervisor, through the
broker (``cli.up_link``), to restart it: the supervisor restarts only a child
it gave up on, by name, with its restart window reset, and answers with an
``Ack``; a refusal (no such child, one that runs, one with a configuration
error) is printed with exit code 1. A rig without ``llmo up`` (systemd units)
has no supervisor: the answer says so, with the ``systemctl`` command to use.

Then it waits for the outcome, which the supervisor cannot see. A worker is
back when the brain publishes ``worker_registered`` for it, or (each poll)
when the brain's snapshot lists it registered from the very process the
supervisor reports running and not down: a SUB socket connects in the
background, so the event can go out before the subscription takes effect,
and the snapshot is the answer that does not depend on it. The brain is
back when it answers a snapshot again. Each poll also asks the supervisor
how the child fares: one that crashes again until it is given up on again
fails the command with the last line of its log. Exit 0 once registered, 1 on a
refusal, a new give-up, or when ``--timeout`` seconds pass first;
``--no-wait`` returns once the supervisor restarted it.
"""

from __future__ import annotations

import argparse
import time

from llmo.cli.common import add_endpoint_flags
from llmo.cli.status_cmd import snapshot
from llmo.cli.tools import DEFAULT_TIMEOUT, add_tool_flags, fail, open_session, publications
from llmo.proto.messages import (
    BRAIN,
    SUPERVISOR,
    BatchEvent,
    ChildInfo,
    ChildRestart,
    SupervisorQuery,
    SupervisorReport,
)
from llmo.proto.pubsub import BATCH_EVENT_TOPICS, Subscriber
from llmo.proto.session import Session, ToolError

RESTART_TIMEOUT_S = 120.0
POLL_S = 0.5


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("worker", help="the child's name, e.g. cpu-1 (or brain)")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the supervisor restarted it, without waiting for it to register",
    )
    add_endpoint_flags(parser)
    add_tool_flags(
        parser,
        timeout=RESTART_TIMEOUT_S,
        timeout_help="seconds to wait for it to register again "
        f"(default {RESTART_TIMEOUT_S:g}); each request waits at most {DEFAULT_TIMEOUT:g}",
    )


def children(session: Session) -> SupervisorReport:
    """``llmo up``'s report of its children; raises ``ToolError`` (no supervisor: why)."""
    reply = session.ask(SupervisorQuery(dst=SUPERVISOR))
    if not isinstance(reply, SupervisorReport):
        raise ToolError(f"unexpected reply {reply.TYPE.value!r} to a supervisor query")
    return reply


def child_of(report: SupervisorReport, name: str) -> ChildInfo | None:
    return next((c for c in report.children if c.name == name), None)


def given_up_text(child: ChildInfo, report: SupervisorReport) -> str:
    """Why a child is stopped, in a sentence: its exit, its restarts, its log's last line."""
    code = f"exit code {child.exit_code}" if child.exit_code is not None else "no exit code"
    if child.state == "config_error":
        head = f"configuration error ({code})"
    else:
        head = f"given up after {child.restarts} restarts in {report.window_s:g} s ({code})"
    return f"{head}: {child.reason or 'nothing in its log'}"


def run(args: argparse.Namespace) -> int:
    name = args.worker
    session = open_session(args, "restart")
    session.timeout = min(args.timeout, DEFAULT_TIMEOUT)
    subscriber: Subscriber | None = None
    try:
        if not args.no_wait:
            subscriber = Subscriber(session.endpoints.pub, topics=BATCH_EVENT_TOPICS)
            children(session)  # the supervisor is there before anything is asked of it
        detail = session.control(ChildRestart(dst=SUPERVISOR, child=name))
        print(detail, flush=True)
        if subscriber is None:
            return 0
        ok, sentence = wait_back(session, subscriber, name, args.timeout)
        if not ok:
            return fail("restart", sentence)
        print(sentence)
        return 0
    except ToolError as exc:
        return fail("restart", exc)
    finally:
        if subscriber is not None:
            subscriber.close()
        session.close()


def wait_back(
    session: Session, subscriber: Subscriber, name: str, timeout: float
) -> tuple[bool, str]:
    """Wait until ``name`` is back with the brain, or crashed until given up again."""
    deadline = time.monotonic() + timeout
    brain = name == BRAIN
    while (left := deadline - time.monotonic()) > 0:
        if brain and _brain_answers(session):
            return True, "brain answering again"
        if _registered(subscriber, name, min(POLL_S, left)):
            return True, f"{name} registered with the brain again"
        try:
            report = children(session)
        except ToolError:
            continue  # the supervisor busy or the link slow: ask again
        child = child_of(report, name)
        if child is not None and child.state in ("given_up", "config_error"):
            return False, f"{name} crashed again: {given_up_text(child, report)}"
        if not brain and child is not None and _listed(session, name, child.pid):
            return True, f"{name} registered with the brain again"
    return False, (
        f"{name} was restarted but has not registered with the brain within {timeout:g} s; "
        f"see its log (llmo status shows it)"
    )


def _registered(subscriber: Subscriber, name: str, seconds: float) -> bool:
    return any(
        isinstance(msg, BatchEvent) and msg.event == "worker_registered" and msg.worker == name
        for msg in publications(subscriber, seconds)
    )


def _listed(session: Session, name: str, pid: int) -> bool:
    """Whether the brain's snapshot lists ``name`` registered from process ``pid``
    and not down."""
    if pid <= 0:
        return False
    try:
        reply = snapshot(session)
    except ToolError:
        return False
    return any(w.name == name and w.pid == pid and w.presence != "down" for w in reply.workers)


def _brain_answers(session: Session) -> bool:
    try:
        snapshot(session)
    except ToolError:
        return False
    return True
