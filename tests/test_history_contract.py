"""The history contract of ``docs/history.md``, checked against a real run.

A plan in the original system's format runs through ``llmo up`` and ends
failed (one check fails, the report after it is skipped); every field the
contract's tables list must be present in the files it wrote, with the type
given. The shell's side (the events link, artifact counts, env_manifest)
also has tests of its own on a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmo.brain import histfiles
from llmo.brain.commands import LinkFile, WriteEnvManifest, WriteFile
from llmo.brain.service import write_files
from tests.e2e_fixtures import Rig, events_of, rig_factory

__all__ = ["rig_factory"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "history.md"
TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def contract() -> dict[str, list[tuple[str, str, bool]]]:
    """Table name -> (field, type, optional) rows, from ``<!-- contract: NAME -->`` tables."""
    tables: dict[str, list[tuple[str, str, bool]]] = {}
    name = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        marker = re.fullmatch(r"<!-- contract: ([\w.]+) -->", line.strip())
        if marker:
            name = marker.group(1)
            tables[name] = []
            continue
        if name and line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] in ("field", "---"):
                continue
            tables[name].append((cells[0], cells[1], cells[3].startswith("only ")))
        elif name and tables[name]:
            name = ""
    return tables


def check(record: dict[str, Any], table: list[tuple[str, str, bool]], where: str) -> int:
    """Every field of ``table`` in ``record`` with its type; returns the fields checked."""
    checked = 0
    for field, kind, optional in table:
        if field not in record:
            assert optional, f"{where}: no {field!r} ({kind}) in {sorted(record)}"
            continue
        allowed = tuple(t for part in kind.split(" or ") for t in TYPES[part.strip()])
        value = record[field]
        ok = isinstance(value, allowed) and not (
            isinstance(value, bool) and bool not in allowed  # a bool is not a number here
        )
        assert ok, f"{where}: {field}={value!r} is not {kind}"
        checked += 1
    return checked


def test_the_contract_names_every_table_the_tests_check():
    tables = contract()
    expected = {
        "events.all",
        "events.task",
        "events.ending",
        "events.task_ending",
        "summary",
        "summary.failure",
        "batch_failure",
        "env_manifest",
    }
    assert set(tables) == expected, sorted(tables)
    assert all(tables.values())
    origins = "\n".join(DOC.read_text().splitlines())
    for field in ("recorded_at", "task_name", "success", "error_type", "plan_name", "failure"):
        assert re.search(rf"^\| {field} \| [^|]+ \| original \|", origins, re.M), field


@pytest.fixture
def rig(rig_factory) -> Iterator[Rig]:
    yield rig_factory(brain={"backoff_base_s": 0.2, "max_attempts": 2})


@pytest.mark.timeout(240)
def test_an_aborted_run_leaves_every_file_the_contract_lists(rig):
    plan = rig.plan("original_history")
    run = rig.submit(plan)
    assert run.state == "failed", run
    history = run.history
    tables = contract()
    checked = 0

    # one file, two names
    link = history / "logs" / "batch_events.jsonl"
    assert link.is_symlink() and os.readlink(link) == "../batch_events.jsonl"
    assert link.read_bytes() == (history / "batch_events.jsonl").read_bytes()
    lines = run.events()
    assert lines, "no events"
    for line in lines:
        where = f"event {line['event']}"
        checked += check(line, tables["events.all"], where)
        if line["event"].startswith("task_"):
            checked += check(line, tables["events.task"], where)
        if "success" in line or line["event"] in ("task_succeeded", "batch_aborted"):
            checked += check(line, tables["events.ending"], where)
            if line["event"].startswith("task_"):
                checked += check(line, tables["events.task_ending"], where)
    names = [e["event"] for e in lines]
    for name in ("task_released", "task_started", "task_succeeded", "task_failed"):
        assert name in names, name
    for name in ("task_retried", "task_abandoned", "batch_failed", "batch_aborted"):
        assert name in names, name
    assert "summary_refreshed" in names
    released = {e["task_name"] for e in events_of(lines, "task_released")}
    assert {"process_item_alpha", "process_item_beta", "process_item_gamma"} <= released
    abandoned = events_of(lines, "task_abandoned", "check_data")[0]
    assert abandoned["error_type"] == "exit" and abandoned["success"] is False

    summary = json.loads((history / "RUN_SUMMARY.json").read_text())
    checked += check(summary, tables["summary"], "RUN_SUMMARY.json")
    checked += check(summary["failure"], tables["summary.failure"], "RUN_SUMMARY failure")
    assert summary["status"] == "failed" and summary["state"] == "failed"
    assert summary["failure"]["task_id"] == "check_data"
    assert summary["failure"]["exit_code"] == 3 and summary["failure"]["attempts"] == 2
    assert summary["artifact_counts"]["output"] == 3, summary["artifact_counts"]
    assert summary["artifact_counts"]["results"] == 1  # batch_failure.json
    assert summary["event_counts"]["batch_aborted"] == 1
    assert summary["live_counts"] == {}
    assert "manifest.json" in summary["important_artifacts"]

    failure = json.loads((history / "results" / "batch_failure.json").read_text())
    checked += check(failure, tables["batch_failure"], "batch_failure.json")
    assert [t["task_id"] for t in failure["failed_tasks"]] == ["check_data"]
    assert failure["skipped_tasks"] == ["report"]

    manifest = json.loads((history / "env_manifest.json").read_text())
    checked += check(manifest, tables["env_manifest"], "env_manifest.json")
    modules = {m["module"]: m for m in manifest["modules"]}
    assert modules["json"]["kind"] == "stdlib" and modules["json"]["available"]
    assert modules["helpers"]["kind"] == "local" and modules["helpers"]["available"]
    assert modules["zmq"]["kind"] == "third" and modules["zmq"]["available"]
    assert manifest["missing"] == ["llmo_no_such_module"]
    assert modules["llmo_no_such_module"]["imported_by"] == ["scripts/check.py"]
    print(f"contract: {checked} field checks over {len(lines)} event lines and 4 files")


# --- the shell's side, on a temporary folder ------------------------------------------


def test_the_link_is_relative_and_a_second_one_is_left_alone(tmp_path):
    history = tmp_path / "b"
    write_files(LinkFile(str(history / "logs" / "batch_events.jsonl"), "../batch_events.jsonl"))
    (history / "batch_events.jsonl").write_text('{"event": "x"}\n')
    link = history / "logs" / "batch_events.jsonl"
    assert link.read_text() == '{"event": "x"}\n'
    assert histfiles.link_file(str(link), "../batch_events.jsonl") == "exists"
    moved = tmp_path / "moved"
    history.rename(moved)  # a relative link survives moving the batch folder
    assert (moved / "logs" / "batch_events.jsonl").read_text() == '{"event": "x"}\n'


def test_a_file_system_without_symlinks_gets_a_hard_link(tmp_path, monkeypatch):
    def refuse(*_: object) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "symlink", refuse)
    path = tmp_path / "logs" / "batch_events.jsonl"
    assert histfiles.link_file(str(path), "../batch_events.jsonl") == "hardlink"
    with open(tmp_path / "batch_events.jsonl", "a") as handle:
        handle.write("line\n")
    assert path.read_text() == "line\n"


def test_artifacts_are_counted_only_when_asked(tmp_path):
    for name in ("output/a.txt", "output/sub/b.txt", "results/r.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    summary = tmp_path / "RUN_SUMMARY.json"
    write_files(WriteFile(str(summary), '{"status": "failed"}\n', "count"))
    data = json.loads(summary.read_text())
    assert data == {"artifact_counts": {"output": 2, "results": 1, "logs": 0}, "status": "failed"}
    write_files(WriteFile(str(summary), '{"status": "running"}\n', "none"))
    assert json.loads(summary.read_text()) == {"artifact_counts": {}, "status": "running"}


def test_env_manifest_lists_imports_and_says_what_cannot_be_read(tmp_path):
    (tmp_path / "scripts").mkdir()
    source = "import os.path\nfrom yaml import x\nfrom . import b\n"
    (tmp_path / "scripts" / "a.py").write_text(source)
    (tmp_path / "scripts" / "bad.py").write_text("def (:\n")
    (tmp_path / "history" / "old").mkdir(parents=True)
    (tmp_path / "history" / "old" / "c.py").write_text("import never_scanned\n")
    out = tmp_path / "history" / "b1" / "env_manifest.json"
    write_files(WriteEnvManifest(str(tmp_path), str(out)))
    data = json.loads(out.read_text())
    assert data["scripts"] == ["scripts/a.py", "scripts/bad.py"]
    assert [m["module"] for m in data["modules"]] == ["os", "yaml"]
    assert data["unreadable"][0]["script"] == "scripts/bad.py"
    assert "never_scanned" not in json.dumps(data)
