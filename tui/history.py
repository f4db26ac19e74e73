"""A task's attempts, read back from its batch's ``batch_events.jsonl``.

The monitor only saw what happened since it joined; the brain's append-only
event file on the shared drive has every attempt. ``attempts`` folds the
records of one task into one summary per attempt (worker, start, outcome,
why), in the order they began. It is pure; ``read_attempts`` does the file
reading (in the log screen's thread worker, never on the UI thread), with a
substring test before any JSON parsing so a large file is cheap to scan.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

MAX_SCAN_BYTES = 64 * 1024 * 1024  # a larger file is read from its last 64 MB
ENDINGS = {
    "task_succeeded": "done",
    "task_failed": "failed",
    "task_abandoned": "failed",
    "task_cancelled": "cancelled",
    "task_killing": "killed",
    "task_aborting": "aborting",
}


@dataclass(slots=True)
class Attempt:
    attempt_id: str
    number: int = 0
    worker: str = ""
    started: float | None = None
    ended: float | None = None
    outcome: str = "running"
    why: str = ""


def attempts(records: list[dict[str, Any]], task_id: str) -> list[Attempt]:
    """One ``Attempt`` per attempt id of ``task_id``, in the order they started."""
    found: dict[str, Attempt] = {}
    last: Attempt | None = None
    for rec in records:
        if rec.get("task_id") != task_id:
            continue
        event = rec.get("event", "")
        attempt_id = rec.get("attempt_id") or ""
        if attempt_id:
            last = found.get(attempt_id)
            if last is None:
                last = found[attempt_id] = Attempt(attempt_id, number=len(found) + 1)
            if isinstance(rec.get("attempt"), int) and rec["attempt"] > 0:
                last.number = rec["attempt"]
            last.worker = rec.get("worker") or last.worker
        if last is None:
            continue
        ts = rec.get("ts") if isinstance(rec.get("ts"), int | float) else None
        if event == "task_started":
            last.started = ts
        elif event in ENDINGS and (attempt_id or event == "task_cancelled"):
            last.outcome = ENDINGS[event]
            last.ended = ts
            reason = rec.get("error") or rec.get("reason") or ""
            if rec.get("exit_code") not in (None, 0) and not reason:
                reason = f"exit code {rec['exit_code']}"
            last.why = str(reason or last.why)
        elif event == "task_retried" and last.outcome in ("running", "failed"):
            last.outcome = "failed, retried" if last.outcome == "failed" else "retried"
            last.why = str(rec.get("reason") or last.why)
    return list(found.values())


def read_attempts(path: str, task_id: str) -> tuple[list[Attempt], str]:
    """The attempts of ``task_id`` from the file at ``path``, or why there are none."""
    needle = f'"task_id":"{task_id}"'
    records: list[dict[str, Any]] = []
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_SCAN_BYTES:
                handle.seek(size - MAX_SCAN_BYTES)
                handle.readline()  # a cut line
            for raw in handle:
                line = raw.decode("utf-8", "replace")
                if needle not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    records.append(rec)
    except FileNotFoundError:
        return [], f"no {os.path.basename(path)} yet"
    except OSError as exc:
        return [], f"cannot read {path}: {exc.strerror or exc}"
    return attempts(records, task_id), ""
