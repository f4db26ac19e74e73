"""``llmo watch BATCH``: follow a batch again, e.g. after the submitting terminal closed.

The same view and exit codes as ``llmo submit --watch`` (``cli.watch``):
progress per task group and the live tok/s until the batch ends, then
``batch ID STATE`` and the summary's path; exit 0 when it completed, 1 when
it failed or was cancelled. ``--json`` prints the same final object as
``submit --watch --json`` (state, the batch's counts, ``RUN_SUMMARY.json``
when this machine can read it). A batch that already ended is shown at once,
with its exit code. A batch the brain does not know is refused (exit 2),
naming it; Ctrl-C stops watching, never the batch (exit 130).
"""

from __future__ import annotations

import argparse
import sys

from llmo.cli.common import add_endpoint_flags
from llmo.cli.tools import add_tool_flags, fail, open_session, rig_label
from llmo.proto.session import ToolError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("batch_id", metavar="BATCH", help="the batch id (`llmo status` lists them)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_endpoint_flags(parser)
    add_tool_flags(parser)


def run(args: argparse.Namespace) -> int:
    from llmo.cli.watch import BatchView, watch_to_end
    from llmo.proto.messages import BRAIN, SnapshotReply, SnapshotRequest
    from llmo.proto.pubsub import BATCH_EVENT_TOPICS, Subscriber, topic

    session = open_session(args, "watch")
    subscriber = None
    batch_id = args.batch_id
    try:
        # Subscribe first, so no event falls between the snapshot and the stream.
        subscriber = Subscriber(
            session.endpoints.pub, topics=(*BATCH_EVENT_TOPICS, topic("task.progress"))
        )

        def ask() -> SnapshotReply:
            answer = session.ask(SnapshotRequest(dst=BRAIN, batch_id=batch_id))
            if not isinstance(answer, SnapshotReply):
                raise ToolError(f"unexpected reply {answer.TYPE.value!r} to a snapshot request")
            return answer

        view = BatchView(batch_id)
        if not view.seed(ask()):
            known = ", ".join(b.id for b in ask().batches) or "none"
            return fail("watch", f"the brain knows no batch {batch_id!r} (batches: {known})", 2)

        def take_snapshot() -> SnapshotReply | None:
            try:
                return ask()
            except ToolError as exc:
                print(f"llmo watch: {exc}", file=sys.stderr)
                return None

        where = rig_label(args, session.endpoints)
        print(
            f"watching batch {batch_id} on {where}; history in {view.history_path}",
            file=sys.stderr,
        )
        return watch_to_end(view, subscriber, take_snapshot, args.json)
    except ToolError as exc:
        return fail("watch", exc)
    except KeyboardInterrupt:
        print("\nllmo watch: stopped watching; the batch goes on.", file=sys.stderr)
        return 130
    finally:
        if subscriber is not None:
            subscriber.close()
        session.close()
