"""Decision traces: events and the commands they produced, one readable line each.

Used by ``llmo replay`` (a real journal) and by the message replay tests,
which keep a captured event stream and its trace in ``tests/data/brain/`` and
check that the core still decides the same. A trace line is::

    +12.500 recv task.done from gpu-1 [b:t:1]
        send task.assign to gpu-2 [b:u:1] "python u.py"
        event task_succeeded b/t

Replay of a damaged journal folds every valid record and says, in its place
in the trace, where each damaged span is and how many records it lost
(``!! journal damaged at offset ...``), and where a torn last record was.

Replay streams: the journal is mapped, not read, and each record is decoded,
folded and printed before the next is read, so its memory is the state's,
whatever the journal's length.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping

from llmo.brain.commands import (
    AppendLines,
    Command,
    LinkFile,
    Log,
    MakeDirs,
    ReadManifest,
    ReadPlan,
    RemoveFile,
    Send,
    WriteEnvManifest,
    WriteFile,
)
from llmo.brain.core import new_state, step
from llmo.brain.events import (
    Configure,
    Event,
    ManifestRead,
    PlanLoaded,
    Received,
    Resumed,
    Stopped,
    Tick,
)
from llmo.brain.journal import (
    Buffer,
    JournalDamaged,
    Span,
    event_of,
    load_snapshot_file,
    mapped,
    scan,
    walk,
)
from llmo.brain.state import BrainState
from llmo.proto.messages import BatchEvent, Message


def describe_message(msg: Message) -> str:
    parts = [msg.TYPE.value]
    attempt = getattr(msg, "attempt_id", "")
    names = ("reason", "mode", "exit_code", "state", "model", "peer", "batch_id", "task_id", "ok")
    for name in names:
        value = getattr(msg, name, None)
        if value not in (None, "", ()) and not (name in ("batch_id", "task_id") and attempt):
            parts.append(f"{name}={value}")
    if attempt:
        parts.append(f"[{attempt}]")
    return " ".join(parts)


def describe_event(event: Event) -> str:
    match event:
        case Received(msg=msg):
            return f"recv {describe_message(msg)} from {msg.src}"
        case Tick():
            return "tick"
        case Resumed():
            return "resumed"
        case Stopped(why=why):
            return f"stopped ({why})"
        case Configure(settings=settings):
            return "configure " + json.dumps(settings, sort_keys=True)[:200]
        case PlanLoaded(request_id=request_id, text=text, error=error):
            size = len(text) if text is not None else 0
            return f"plan-loaded {request_id} ({size} chars) {error}".rstrip()
        case ManifestRead(batch_id=batch_id, task_id=task_id, items=items, error=error):
            count = len(items) if items is not None else 0
            return f"manifest {batch_id}/{task_id}: {count} items {error}".rstrip()
    return repr(event)


def describe_command(command: Command) -> str:
    match command:
        case Send(msg=BatchEvent() as msg):
            where = f"{msg.batch_id}/{msg.task_id}" if msg.task_id else msg.batch_id or msg.worker
            why = msg.detail.get("reason") or msg.detail.get("error") or ""
            return f"event {msg.event} {where} {why}".rstrip()
        case Send(msg=msg):
            text = f"send {describe_message(msg)} to {msg.dst}"
            command_text = getattr(msg, "command", "")
            text = f'{text} "{command_text[:60]}"' if command_text else text
            env = getattr(msg, "env", None)
            return f"{text} env {json.dumps(env, ensure_ascii=False)[:200]}" if env else text
        case WriteFile(path=path):
            return f"write {path}"
        case RemoveFile(path=path):
            return f"remove {path}"
        case AppendLines(path=path, lines=lines):
            return f"append {len(lines)} lines to {path}"
        case MakeDirs(paths=paths):
            return f"mkdir {' '.join(paths)}"
        case LinkFile(path=path, target=target):
            return f"link {path} -> {target}"
        case WriteEnvManifest(path=path):
            return f"write-env-manifest {path}"
        case ReadPlan(plan_path=plan_path):
            return f"read-plan {plan_path}"
        case ReadManifest(batch_id=batch_id, task_id=task_id, spec=spec):
            return f"read-manifest {batch_id}/{task_id} {spec}"
        case Log(level=level, text=text):
            return f"log {level}: {text}"
    return repr(command)


def trace(
    state: BrainState,
    events: Iterable[tuple[float, Event] | str],
    *,
    quiet_ticks: bool = False,
    batch: str | None = None,
    notes: Mapping[int, list[str]] | None = None,
) -> Iterator[str]:
    """The trace of ``events`` from ``state``, folded as they come (a stream: nothing
    is kept but the state). A string among the events is a line said in its place,
    whatever the filters; so are ``notes[i]``, before event ``i`` (``notes[n]`` after
    the last of ``n``)."""
    notes = notes or {}
    start: float | None = None
    index = 0
    for item in events:
        if isinstance(item, str):
            yield item
            continue
        now, event = item
        yield from notes.get(index, [])
        index += 1
        if start is None:
            start = now
        state, commands = step(state, event, now)
        if quiet_ticks and isinstance(event, Tick) and not commands:
            continue
        lines = [describe_command(c) for c in commands]
        head = f"+{now - start:.3f} {describe_event(event)}"
        if batch and batch not in head and not any(batch in line for line in lines):
            continue
        yield head
        for line in lines:
            yield "    " + line
    yield from notes.get(index, [])


DAMAGE_MARK = "!! journal damaged"


def damage_line(path: str, span: Span) -> str:
    if span.torn:
        return (
            f"!! the last record is cut short at offset {span.offset} "
            f"({span.length} bytes): a crash mid-write; recovery cuts it off"
        )
    count = "1 record" if span.lost == 1 else f"{span.lost} records"
    lost = f"{count} lost" if span.lost is not None else "records lost: unknown"
    return (
        f"{DAMAGE_MARK} at offset {span.offset} ({span.length} bytes, {lost}): "
        f"run `llmo journal repair {path}`"
    )


def journal_items(path: str, data: Buffer, skip_before: int) -> Iterator[tuple[float, Event] | str]:
    """The events of a journal's bytes from sequence number ``skip_before`` on (those a
    snapshot does not hold), with a line in place of each damaged span."""
    if data[:1] == b"\x92":  # unframed: read whole (journals from before framing)
        found = scan(bytes(data))
        records = [
            r for r, seq in zip(found.records, found.seqs, strict=True) if seq >= skip_before
        ]
        yield from (event_of(record) for record in records)
        if found.torn is not None:
            yield damage_line(path, found.torn)
        return
    header = False
    for item in walk(data):
        if isinstance(item, Span):
            yield damage_line(path, item)
        elif item.record[0] == "h" and not header:
            header = True
        elif item.seq >= skip_before:
            yield event_of(item.record)


def replay_lines(
    path: str, *, quiet_ticks: bool = False, batch: str | None = None, use_snapshot: bool = True
) -> Iterator[str]:
    """``llmo replay``: the trace of a journal from its snapshot, streamed from the file:
    memory holds the state, not the journal."""
    state = new_state()
    if use_snapshot:
        try:
            state = load_snapshot_file(path + ".snap")
        except JournalDamaged as exc:
            yield f"{DAMAGE_MARK}: {exc} (replaying the journal alone)"
    if use_snapshot and state.events:
        yield f"(from the snapshot: {state.events} events, {len(state.batches)} batches)"
    # By sequence number: the records the snapshot already holds, even past damage.
    skip_before = state.events if use_snapshot else 0
    with mapped(path) as data:
        items = journal_items(path, data, skip_before)
        yield from trace(state, items, quiet_ticks=quiet_ticks, batch=batch)
