"""``llmo replay JOURNAL``: the decision trace of a journal, for debugging a real run.

Folds the journal through the core (from its snapshot, if it has one) and
prints one line per event with the commands it produced. Nothing is sent
or written: replay is pure. The journal is streamed (mapped, each record
decoded, folded and printed before the next): its memory is the state's,
not the journal's. A damaged journal is replayed as far as it can
be: every valid record, with a line where each damaged span is; the exit
code is then 1, with the damage named on stderr too. A journal that is
missing, a folder, unreadable or empty (with no snapshot beside it) is refused
with one line naming the path, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("journal", help="the brain's journal file")
    parser.add_argument(
        "--quiet-ticks", action="store_true", help="leave out ticks that decided nothing"
    )
    parser.add_argument("--batch", help="only lines about this batch id")
    parser.add_argument(
        "--no-snapshot", action="store_true", help="ignore the snapshot (start from empty)"
    )


def journal_problem(path: str, use_snapshot: bool) -> str | None:
    """Why ``path`` cannot be replayed at all, or None."""
    if os.path.isdir(path):
        return f"{path} is a folder; give the brain's journal file in it"
    if not os.path.exists(path):
        return f"there is no journal {path}"
    try:
        with open(path, "rb"):
            pass
        size = os.path.getsize(path)
    except OSError as exc:
        return f"cannot read the journal {path}: {exc.strerror or exc}"
    if size == 0 and not (use_snapshot and os.path.exists(path + ".snap")):
        return f"{path} is empty (and has no snapshot): nothing to replay"
    return None


def run(args: argparse.Namespace) -> int:
    from llmo.brain.journal import JournalError
    from llmo.brain.trace import DAMAGE_MARK, replay_lines

    problem = journal_problem(args.journal, not args.no_snapshot)
    if problem is not None:
        print(f"llmo replay: {problem}", file=sys.stderr)
        return 2
    damage: list[str] = []
    try:
        for line in replay_lines(
            args.journal,
            quiet_ticks=args.quiet_ticks,
            batch=args.batch,
            use_snapshot=not args.no_snapshot,
        ):
            print(line)
            if line.startswith(DAMAGE_MARK):
                damage.append(line)
    except (JournalError, OSError) as exc:
        print(f"llmo replay: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    for line in damage:
        print(f"llmo replay: {line}", file=sys.stderr)
    return 1 if damage else 0
