"""What an earlier run left in a batch folder: whether it exists, and which tasks succeeded.

Theory of operation
-------------------
A submission that names its batch (``BATCH_ID``) or resumes one
(``RUN_MODE: resume``, ``RESUME_BATCH_ID``) makes the brain's shell look at
that folder before the core decides (``ReadPlan.history``); the answer
travels in the journaled ``PlanLoaded`` event, so a replay decides the same.

The tasks that succeeded are read from the two records a run leaves, and
their union is kept:

* ``batch_events.jsonl`` (in the batch folder, or in its ``logs/`` as the
  original system wrote it): every ``task_succeeded`` line, by ``task_id``
  (or the original's ``task_name``). Lines are appended as results arrive,
  so this is the most recent record, including results that came after the
  last summary was written; a line that does not parse is skipped.
* ``RUN_SUMMARY.json``: every task row whose ``state`` is ``done`` (or
  whose ``success`` is true), which also covers a run resumed before, whose
  kept tasks have no ``task_succeeded`` line of their own in this run.

Each source records only tasks that really succeeded, so the union never
keeps a task that did not. The brain prefers its own journaled state for a
batch it still holds (``brain.submit``); this is for a batch it has
forgotten, or one an earlier brain or the original system ran.
"""

from __future__ import annotations

import json
import os
from typing import Any

EVENT_FILES = ("batch_events.jsonl", "logs/batch_events.jsonl")
SUMMARY_FILE = "RUN_SUMMARY.json"


def succeeded_in_events(lines: list[str]) -> set[str]:
    done: set[str] = set()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("event") != "task_succeeded":
            continue
        task_id = record.get("task_id") or record.get("task_name")
        if isinstance(task_id, str) and task_id:
            done.add(task_id)
    return done


def succeeded_in_summary(summary: Any) -> set[str]:
    rows = summary.get("tasks") if isinstance(summary, dict) else None
    if not isinstance(rows, list):
        return set()
    done: set[str] = set()
    for row in rows:
        if not isinstance(row, dict):
            continue
        task_id = row.get("id") or row.get("task_id") or row.get("task_name")
        if not isinstance(task_id, str) or not task_id:
            continue
        if row.get("state") == "done" or row.get("success") is True:
            done.add(task_id)
    return done


def read_prior(folder: str) -> dict[str, Any]:
    """``{"exists", "done", "sources", "problems"}`` for the batch folder ``folder``."""
    if not os.path.isdir(folder):
        return {"exists": False, "done": [], "sources": [], "problems": []}
    done: set[str] = set()
    sources: list[str] = []
    problems: list[str] = []
    for name in EVENT_FILES:
        path = os.path.join(folder, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue  # a link is the other name of a file read already
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                done |= succeeded_in_events(f.read().splitlines())
        except OSError as exc:
            problems.append(f"cannot read {path}: {exc}")
            continue
        sources.append(name)
    path = os.path.join(folder, SUMMARY_FILE)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                done |= succeeded_in_summary(json.load(f))
            sources.append(SUMMARY_FILE)
        except (OSError, ValueError) as exc:
            problems.append(f"cannot read {path}: {exc}")
    return {"exists": True, "done": sorted(done), "sources": sources, "problems": problems}
