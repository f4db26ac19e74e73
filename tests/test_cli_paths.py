"""Paths an operator types: a plan given by its ``plan.md`` file, and a journal
that is missing, a folder or empty. Each is taken as meant or refused with a
line naming the path, never accepted only to fail later."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmo.cli.main import main

ROOT = Path(__file__).parent.parent
HELLO = ROOT / "plans" / "examples" / "hello"


def test_submit_dry_run_of_a_plan_md_takes_its_folder(capsys):
    code = main(["submit", str(HELLO / "plan.md"), "--dry-run", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["plan_dir"] == str(HELLO.resolve())


def test_submit_refuses_another_file_naming_it(capsys, tmp_path):
    other = tmp_path / "hello.md"
    shutil.copy(HELLO / "plan.md", other)
    code = main(["submit", str(other), "--dry-run"])
    _, err = capsys.readouterr()
    assert code == 2
    assert f"{other} is a file" in err and "plan.md" in err


def test_plan_check_of_a_plan_md_takes_its_folder(capsys):
    code = main(["plan", "check", str(HELLO / "plan.md"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["plans"][0]["plan_dir"] == str(HELLO.resolve())


def replay(capsys, path: Path | str) -> tuple[int, str, str]:
    code = main(["replay", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_replay_of_a_missing_journal_names_it(capsys, tmp_path):
    missing = tmp_path / "no" / "such" / "journal"
    code, out, err = replay(capsys, missing)
    assert code == 2 and out == ""
    assert err.strip() == f"llmo replay: there is no journal {missing}"


def test_replay_of_a_folder_says_so(capsys, tmp_path):
    code, out, err = replay(capsys, tmp_path)
    assert code == 2 and out == ""
    assert err.strip() == (
        f"llmo replay: {tmp_path} is a folder; give the brain's journal file in it"
    )


def test_replay_of_an_empty_journal_says_so(capsys, tmp_path):
    empty = tmp_path / "brain.journal"
    empty.touch()
    code, out, err = replay(capsys, empty)
    assert code == 2 and out == ""
    assert err.strip() == f"llmo replay: {empty} is empty (and has no snapshot): nothing to replay"
