"""``llmo submit PLAN_DIR``: check a plan here, send it to the brain, optionally follow it.

The plan is validated locally first, with the same ``plans`` code the brain
runs: a plan with errors or undefined placeholders is refused with every
problem listed and exit code 2, and nothing is sent. ``--dry-run`` shows the
tasks, foreach templates and placeholders without sending anything. A path
to the plan's ``plan.md`` stands for its folder; another file is refused
(exit 2), since a batch runs in its plan's folder.

``--resume BATCH_ID`` re-enters an earlier batch of the plan (the config keys
``RUN_MODE: resume`` and ``RESUME_BATCH_ID``): the brain keeps every task that
succeeded there and runs only the rest, in the same batch folder and with the
same ``{BATCH_ID}``. ``BATCH_ID`` in the configuration names a new batch's
folder instead of the time (refused when it exists).

Otherwise the plan's folder path is sent in a ``PlanSubmit`` and the batch id
printed. ``--watch`` names the rig it talks to (``rig NAME at ENDPOINT``,
else ``broker ENDPOINT``) and follows the batch (``cli.watch``) until it ends,
then prints the paths of ``RUN_SUMMARY.md`` and, for a batch that did not
complete, ``ESCALATION.md``: exit 0 when it completed, 1 when it failed or was
cancelled. ``--json`` prints the
final state (and ``RUN_SUMMARY.json`` when this machine can read it) as JSON.

The brain journals a submission before it answers it, and answers only once
the journal holds it: an answer is the truth. A brain that cannot write its
journal answers ``disk_full``; nothing of that submission was kept, it will
never run, and ``llmo submit`` says so (exit 2). When no answer comes within
``--timeout``, what is known is only that: the submission may have reached the
brain and been journaled, in which case it runs. ``llmo submit`` then says so
(exit 3) and how to find out (``llmo status`` lists the batch under the
plan's name, and its history folder appears under the plan) rather than
claiming a failure; submitting again blindly could run the plan twice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llmo.cli.common import add_endpoint_flags
from llmo.cli.tools import add_tool_flags, fail, open_session, rig_label
from llmo.proto.session import ToolError

PRIORITY_CHOICES = ("low", "normal", "high", "urgent")
UNKNOWN_EXIT = 3  # no answer: the submission may or may not have been journaled


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "plan_dir", metavar="PLAN_DIR", help="the plan folder (holds plan.md), or its plan.md"
    )
    parser.add_argument(
        "--config", help="configuration as a JSON object, or @FILE to read one from a file"
    )
    parser.add_argument("--priority", choices=PRIORITY_CHOICES, help="batch priority")
    parser.add_argument(
        "--resume",
        metavar="BATCH_ID",
        help="re-enter batch BATCH_ID of this plan: keep the tasks that succeeded there and "
        "run only the rest (the same as --config RUN_MODE=resume, RESUME_BATCH_ID=BATCH_ID)",
    )
    parser.add_argument("--dry-run", action="store_true", help="show the plan, send nothing")
    parser.add_argument("--watch", action="store_true", help="follow the batch until it ends")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_endpoint_flags(parser)
    add_tool_flags(parser)


def run(args: argparse.Namespace) -> int:
    from llmo.cli.plan_cmd import check_plan, format_report, plan_folder, read_config

    try:
        config = read_config(args.config) if args.config is not None else {}
    except ValueError as exc:
        return fail("submit", f"--config: {exc}", 2)
    if args.resume is not None:
        given = config.get("RESUME_BATCH_ID") or config.get("BATCH_ID")
        mode = str(config.get("RUN_MODE") or "resume").lower()
        if (given and given != args.resume) or mode != "resume":
            return fail(
                "submit",
                f"--resume {args.resume} contradicts the configuration's RUN_MODE / "
                "RESUME_BATCH_ID / BATCH_ID; give one or the other",
                2,
            )
        config = {**config, "RUN_MODE": "resume", "RESUME_BATCH_ID": args.resume}
    plan_dir = str(Path(plan_folder(args.plan_dir)).resolve())
    if Path(plan_dir).is_file():
        return fail(
            "submit",
            f"{args.plan_dir} is a file: give the plan folder that holds plan.md "
            "(or that plan.md itself); a batch runs in its plan's folder",
            2,
        )
    report = check_plan(plan_dir, config, priority=args.priority or "")
    if report["errors"]:
        print(format_report(report), file=sys.stderr)
        print("llmo submit: the plan was not sent.", file=sys.stderr)
        return 2
    if args.dry_run:
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(format_report(report))
            print("(dry run: nothing was sent)")
        return 0
    return _submit(args, plan_dir, config)


def _submit(args: argparse.Namespace, plan_dir: str, config: dict[str, Any]) -> int:
    from llmo.cli.watch import BatchView, watch_to_end
    from llmo.proto.errors import ErrorCode
    from llmo.proto.messages import (
        BRAIN,
        Error,
        PlanAccepted,
        PlanRejected,
        PlanSubmit,
        SnapshotReply,
        SnapshotRequest,
    )
    from llmo.proto.pubsub import BATCH_EVENT_TOPICS, Subscriber, topic

    session = open_session(args, "submit")
    subscriber = None
    try:
        if args.watch:
            # Subscribe before submitting, so no event of the batch is missed.
            subscriber = Subscriber(
                session.endpoints.pub, topics=(*BATCH_EVENT_TOPICS, topic("task.progress"))
            )
        msg = PlanSubmit(dst=BRAIN, plan_path=plan_dir, config=config, priority=args.priority or "")
        reply = session.client.request(msg, timeout=session.timeout)
        if reply is None:
            print(
                f"llmo submit: no answer within {session.timeout:g} s from the brain (broker "
                f"{session.endpoints.broker}). The plan may have been accepted and journaled, "
                f"and then it runs: check `llmo status` for a batch of this plan, or a new "
                f"folder under {plan_dir}/history, before submitting it again.",
                file=sys.stderr,
            )
            return UNKNOWN_EXIT
        if isinstance(reply, Error) and reply.code == ErrorCode.DISK_FULL:
            print(f"llmo submit: disk_full: {reply.detail}", file=sys.stderr)
            print(f"llmo submit: {plan_dir} was not accepted and will not run", file=sys.stderr)
            return 2
        if isinstance(reply, Error):
            if reply.code == ErrorCode.UNKNOWN_DESTINATION and reply.peer == BRAIN:
                raise ToolError(
                    f"the broker at {session.endpoints.broker} answered, but no brain is "
                    "connected to it: start `llmo brain` (or `llmo up`); the plan was not sent"
                )
            raise ToolError(f"{reply.code}: {reply.detail}")
        if isinstance(reply, PlanRejected):
            for error in reply.errors:
                print(f"error: {error}", file=sys.stderr)
            print(f"llmo submit: the brain refused {plan_dir}", file=sys.stderr)
            return 2
        if not isinstance(reply, PlanAccepted):
            raise ToolError(f"unexpected reply {reply.TYPE.value!r} to a submission")
        for warning in reply.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if not args.watch:
            if args.json:
                print(json.dumps({"batch_id": reply.batch_id, "history": reply.history_path}))
            else:
                print(reply.batch_id)
                print(f"history: {reply.history_path}", file=sys.stderr)
            return 0
        print(
            f"batch {reply.batch_id} accepted by {rig_label(args, session.endpoints)} "
            f"({reply.tasks} tasks); history in {reply.history_path}",
            file=sys.stderr,
        )

        def take_snapshot() -> SnapshotReply | None:
            try:
                answer = session.ask(SnapshotRequest(dst=BRAIN, batch_id=reply.batch_id))
            except ToolError as exc:
                print(f"llmo submit: {exc}", file=sys.stderr)
                return None
            return answer if isinstance(answer, SnapshotReply) else None

        view = BatchView(reply.batch_id, history_path=reply.history_path)
        return watch_to_end(view, subscriber, take_snapshot, args.json)
    except ToolError as exc:
        return fail("submit", exc)
    except KeyboardInterrupt:
        print("\nllmo submit: stopped watching; the batch goes on.", file=sys.stderr)
        return 130
    finally:
        if subscriber is not None:
            subscriber.close()
        session.close()
