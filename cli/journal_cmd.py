"""``llmo journal check|repair JOURNAL``: find and contain damage in a brain's journal.

``check`` reads the journal (and its snapshot) without a lock and reports
every damaged span (offset, length, records lost), a torn last record (the
one damage recovery cuts off by itself) and the count of valid records. It
exits 0 when the brain can start on the journal, 1 when it is damaged.

``repair`` salvages every valid record, after any damaged span too (it
resynchronises on record boundaries), keeps the original as
``JOURNAL.damaged-<time>``, writes the repaired journal, and says what was
lost. It takes the journal's lock, so it refuses (exit 1, naming the pid)
while a brain holds it: stop the brain first. It also refuses when the
snapshot is damaged and held events the journal no longer has.
"""

from __future__ import annotations

import argparse
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="report damaged spans and valid records (exit 1 when damaged)",
        description="Report every damaged span of a brain journal and its snapshot.",
    )
    check.add_argument("journal", metavar="JOURNAL", help="the brain's journal file")
    fix = sub.add_parser(
        "repair",
        help="salvage every valid record; keep the original as JOURNAL.damaged-<time>",
        description="Rewrite a damaged journal with every valid record it holds "
        "(the brain must be stopped).",
    )
    fix.add_argument("journal", metavar="JOURNAL", help="the brain's journal file")


def _records(n: int) -> str:
    return f"{n} record" if n == 1 else f"{n} records"


def check(path: str) -> int:
    from llmo.brain.journal import JournalError, load_snapshot_file, read_bytes, scan

    if not os.path.exists(path):
        print(f"llmo journal: no journal at {path}", file=sys.stderr)
        return 1
    found = scan(read_bytes(path))
    first = found.seqs[0] if found.seqs else found.base
    span_text = f" (events {first}..{found.seqs[-1]})" if found.seqs else ""
    kind = ", unframed: written before checksums, damage cannot be detected" * found.legacy
    print(
        f"journal {path}: {found.size} bytes, {len(found.records)} valid records{span_text}{kind}"
    )
    damaged = bool(found.damage)
    if found.base is None and found.size:
        if not found.records:
            damaged = True
            print("damaged: offset 0: no valid record at all (or not a brain journal)")
        else:
            print("header: lost (where the journal starts is taken from the snapshot on repair)")
    for span in found.damage:
        lost = _records(span.lost) + " lost" if span.lost is not None else "records lost: unknown"
        print(f"damaged: offset {span.offset}, {span.length} bytes, {lost}")
    if found.torn is not None and found.records:
        print(
            f"torn last record: offset {found.torn.offset}, {found.torn.length} bytes "
            "(a crash mid-write: recovery cuts it off)"
        )
    snapshot = path + ".snap"
    if os.path.exists(snapshot):
        try:
            state = load_snapshot_file(snapshot)
            print(f"snapshot {snapshot}: {state.events} events, {len(state.batches)} batches")
        except JournalError as exc:
            damaged = True
            print(f"snapshot {snapshot}: {exc}")
    if damaged:
        print(
            f"damaged: {len(found.damage)} span(s), {sum(s.length for s in found.damage)} bytes; "
            f"the brain will not start on it: run `llmo journal repair {path}`"
        )
        return 1
    print("clean: the brain can start on it")
    return 0


def repair(path: str) -> int:
    from llmo.brain.journal import JournalError
    from llmo.brain.journal import repair as repair_journal

    if not os.path.exists(path):
        print(f"llmo journal: no journal at {path}", file=sys.stderr)
        return 1
    try:
        report = repair_journal(path)
    except JournalError as exc:
        print(f"llmo journal: not repaired: {exc}", file=sys.stderr)
        return 1
    if report.snapshot_kept:
        print(f"the damaged snapshot was set aside as {report.snapshot_kept}")
    if report.kept is None:
        print(f"journal {path}: nothing to repair ({_records(report.records)}, all valid)")
        return 0
    spans = ", ".join(f"offset {offset} ({length} bytes)" for offset, length in report.spans)
    lost = f"lost {_records(report.lost_records)}, {report.lost_bytes} bytes"
    if report.unknown:
        lost += f" (and an unknown count in {report.unknown} spans)"
    print(f"repaired {path}: kept {_records(report.records)}; {lost}")
    if spans:
        print(f"damaged spans: {spans}")
    if report.header_lost:
        print("the header was lost: the journal now starts where the snapshot ends (or at 0)")
    if report.torn:
        print(f"cut a torn last record: offset {report.torn[0]} ({report.torn[1]} bytes)")
    print(f"the damaged journal is kept as {report.kept}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "check":
        return check(args.journal)
    return repair(args.journal)
