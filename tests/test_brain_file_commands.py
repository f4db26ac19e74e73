"""How the brain's shell carries out a loop turn's history file commands."""

from __future__ import annotations

from llmo.brain.commands import AppendLines, Log, MakeDirs, Send, WriteFile
from llmo.brain.service import append_lines, joined_appends
from llmo.proto.messages import Ack


def test_appends_to_one_file_join_unless_another_file_command_comes_between():
    ack = Send(Ack(dst="w", reply_to="x"))
    commands = [
        AppendLines("h/batch_events.jsonl", ("a",)),
        ack,
        AppendLines("h/batch_events.jsonl", ("b", "c")),
        Log("info", "x"),
        AppendLines("h/other.jsonl", ("o",)),
        AppendLines("h/batch_events.jsonl", ("d",)),
        WriteFile("h/RUN_SUMMARY.json", "{}"),
        AppendLines("h/batch_events.jsonl", ("e",)),
        MakeDirs(("h/logs",)),
    ]
    assert joined_appends(commands) == [
        AppendLines("h/batch_events.jsonl", ("a", "b", "c")),
        ack,
        Log("info", "x"),
        AppendLines("h/other.jsonl", ("o",)),
        AppendLines("h/batch_events.jsonl", ("d",)),
        WriteFile("h/RUN_SUMMARY.json", "{}"),
        AppendLines("h/batch_events.jsonl", ("e",)),
        MakeDirs(("h/logs",)),
    ]


def test_append_lines_makes_the_folder_only_when_it_is_missing(tmp_path):
    path = tmp_path / "history" / "b1" / "batch_events.jsonl"
    append_lines(str(path), ("one",))
    append_lines(str(path), ("two", "three"))
    assert path.read_text() == "one\ntwo\nthree\n"
