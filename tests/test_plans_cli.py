"""``llmo plan check``: examples pass, broken plans are refused with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmo.cli.main import main

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted(str(p) for p in (ROOT / "plans" / "examples").iterdir() if p.is_dir())
BROKEN = sorted((ROOT / "tests" / "data" / "plans" / "broken").glob("*.md"))


def check(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["plan", "check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_examples_pass(capsys):
    assert len(EXAMPLES) == 3
    code, out, _ = check(capsys, *EXAMPLES)
    assert code == 0, out
    assert "error" not in out
    assert "plan hello" in out and "level 1: greet [cpu, foreach]" in out
    assert "from the configuration: TARGET_COUNT" in out


def test_examples_pass_with_their_configuration(capsys):
    code, out, _ = check(capsys, EXAMPLES[0], "--config", '{"TARGET_COUNT": 4}')
    assert code == 0, out
    assert "goal: target_count {TARGET_COUNT} (tolerance 1) of validate_item" in out


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_plans_are_refused(capsys, path):
    code, out, _ = check(capsys, str(path), "--config", "{}")
    assert code == 2
    first = out.splitlines()[0]
    assert first.startswith(f"error: {path}:"), first
    assert out.rstrip().endswith("the plan cannot run")


def test_undefined_configuration_key_is_an_error_only_with_config(capsys):
    plan = str(ROOT / "tests" / "data" / "plans" / "valid" / "config_placeholders.md")
    code, out, _ = check(capsys, plan)
    assert code == 0 and "from the configuration: MODEL, COUNT" in out
    code, out, _ = check(capsys, plan, "--config", '{"MODEL": "m"}')
    assert code == 2
    assert "task run: command uses {COUNT}, which is not defined" in out
    assert "{MODEL}" not in out.split("the plan cannot run")[0].split("error:")[1]


def test_config_from_a_file(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"TARGET_COUNT": 2}')
    code, _, _ = check(capsys, EXAMPLES[0], "--config", f"@{config}")
    assert code == 0


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ("{not json", "not valid JSON"),
        ("[1]", "give a JSON object"),
        ("@/nonexistent", "cannot read"),
    ],
)
def test_bad_config_is_refused(capsys, config, words):
    code, _, err = check(capsys, EXAMPLES[0], "--config", config)
    assert code == 2 and words in err


def test_json_output(capsys):
    broken = str(BROKEN[0])
    code, out, _ = check(capsys, "--json", EXAMPLES[1], broken)
    assert code == 2
    report = json.loads(out)
    assert report["ok"] is False
    hello, bad = report["plans"]
    assert hello["ok"] is True and hello["name"] == "hello"
    assert hello["levels"] == [["make_manifest"], ["greet"], ["aggregate"]]
    assert hello["placeholders"]["item"] == ["ITEM.id", "ITEM.name"]
    assert hello["classes"] == {"cpu": 3}
    assert bad["ok"] is False and bad["errors"] and bad["errors"][0].startswith(broken)


def test_missing_folder(capsys, tmp_path):
    code, out, _ = check(capsys, str(tmp_path / "nope"))
    assert code == 2 and "there is no plan folder" in out


def test_a_missing_plan_file_is_named_as_given(capsys, tmp_path):
    given = tmp_path / "hello" / "plan.md"
    code, out, _ = check(capsys, str(given))
    assert code == 2
    assert f"{given}:0: there is no plan file {given}" in out
    assert "plan.md/plan.md" not in out


def test_plan_without_action_prints_help(capsys):
    assert main(["plan"]) == 2
    assert "check" in capsys.readouterr().out


ORIGINAL_FOREACH_PLAN = """# Plan: counted

## Objective
Process every item of a manifest written before the run.

## Tasks

### process_item
- **executor**: worker
- **task_class**: cpu
- **command**: `python {PLAN_PATH}/scripts/process.py --item {ITEM.id}`
- **depends_on**: none
- **foreach**: {PLAN_PATH}/manifest.json:items
- **batch_size**: 2

### later
- **executor**: worker
- **task_class**: cpu
- **command**: `python {PLAN_PATH}/scripts/later.py --batch {BATCH_ID}`
- **depends_on**: process_item
- **foreach**: {BATCH_PATH}/found.json:items
"""


def test_dry_run_counts_foreach_items_whose_manifest_exists(capsys, tmp_path):
    (tmp_path / "plan.md").write_text(ORIGINAL_FOREACH_PLAN)
    items = [{"id": f"i{n}"} for n in range(5)]
    (tmp_path / "manifest.json").write_text(json.dumps({"items": items}))
    code = main(["submit", str(tmp_path), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "foreach process_item: over {PLAN_PATH}/manifest.json:items, batch_size 2" in out
    assert "5 items now -> 3 tasks" in out
    assert "foreach later: over {BATCH_PATH}/found.json:items" in out
    assert "counted when it runs" in out
    code = main(["submit", str(tmp_path), "--dry-run", "--json"])
    report = json.loads(capsys.readouterr().out)
    counts = {t["id"]: t.get("foreach_items") for t in report["tasks"]}
    assert counts == {"process_item": 5, "later": None}


def test_dry_run_refuses_an_invalid_priority_as_a_real_submit_does(capsys, tmp_path):
    (tmp_path / "plan.md").write_text(ORIGINAL_FOREACH_PLAN)
    code = main(["submit", str(tmp_path), "--dry-run", "--config", '{"PRIORITY": "asap"}'])
    _, err = capsys.readouterr()
    assert code == 2
    assert "PRIORITY is 'asap'; use one of low, normal, high, urgent" in err
    assert "the plan was not sent" in err
    code = main(["submit", str(tmp_path), "--dry-run", "--config", '{"PRIORITY": "High"}'])
    assert code == 0, capsys.readouterr().err
    # --priority wins over the key, in the brain too, so the key is not checked then.
    bad = '{"PRIORITY": "asap"}'
    code = main(["submit", str(tmp_path), "--dry-run", "--priority", "low", "--config", bad])
    assert code == 0, capsys.readouterr().err


def test_without_config_it_says_it_checked_a_template_and_what_to_pass(capsys):
    goal = str(ROOT / "plans" / "examples" / "goal_example")
    code, out, _ = check(capsys, goal)
    assert code == 0, out
    warning = next(line for line in out.splitlines() if "TARGET_COUNT" in line)
    assert warning.startswith("warning: ") and "undefined" in warning
    assert """--config '{"TARGET_COUNT": ...}'""" in warning
    assert "as a template" in out
    plan = str(ROOT / "tests" / "data" / "plans" / "valid" / "config_placeholders.md")
    code, out, _ = check(capsys, plan)
    assert """--config '{"MODEL": ..., "COUNT": ...}'""" in out
    code, out, _ = check(capsys, plan, "--config", '{"MODEL": "m", "COUNT": 2}')
    assert code == 0 and "template" not in out and "warning" not in out
    code, out, _ = check(capsys, goal, "--json")
    assert json.loads(out)["plans"][0]["template"] is True
