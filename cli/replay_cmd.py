"""``llmo replay JOURNAL``: the decision trace of a journal, for debugging a real run.

Folds the journal through the core (from its snapshot, if it has one) and
prints one line per event with the commands it produced. Nothing is sent
or written: replay is pure. The journal is streamed (mapped, each record
decoded, folded and printed before the next): its memory is the state's,
not the journal's. A damaged journal is replayed as far as it can
be: every valid record, with a line where each damaged span is; the exit
code is then 1, with the damage named on stderr too.
"""

from __future__ import annotations

import argparse
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


def run(args: argparse.Namespace) -> int:
    from llmo.brain.journal import JournalError
    from llmo.brain.trace import DAMAGE_MARK, replay_lines

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
