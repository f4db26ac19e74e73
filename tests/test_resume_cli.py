"""``llmo submit`` / ``llmo plan check``: RUN_MODE and batch ids checked before anything is
sent, ``--resume`` as the flag form, and llm_model names checked against a rig's llmo.toml.

Plans are in the original system's format (its PLAN_FORMAT example names
``llm_model: model_id_here``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmo.cli.main import main

PLAN = """# Plan: summaries

## Objective
Summarize.

## Tasks

### prepare
- **executor**: worker
- **task_class**: cpu
- **command**: `echo prepare > {BATCH_PATH}/out.txt`
- **depends_on**: none

### summarize
- **executor**: worker
- **task_class**: llm
- **command**: `python {PLAN_PATH}/scripts/summarize.py --batch {BATCH_ID}`
- **depends_on**: prepare
- **llm_model**: model_id_here
"""


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "summaries"
    folder.mkdir()
    (folder / "plan.md").write_text(PLAN)
    return folder


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_bogus_run_mode_is_refused_by_plan_check_and_dry_run(capsys, plan_dir):
    config = '{"RUN_MODE": "bogus"}'
    code, out, _ = run(capsys, "plan", "check", str(plan_dir), "--config", config)
    assert code == 2
    assert "RUN_MODE is 'bogus'; use one of fresh, resume (or leave it out)" in out
    code, _, err = run(capsys, "submit", str(plan_dir), "--dry-run", "--config", config)
    assert code == 2
    assert "RUN_MODE is 'bogus'; use one of fresh, resume" in err
    assert "the plan was not sent" in err


def test_resume_flag_is_checked_like_the_config_keys(capsys, plan_dir):
    code, _, err = run(capsys, "submit", str(plan_dir), "--dry-run", "--resume", "../elsewhere")
    assert code == 2
    assert "RESUME_BATCH_ID is '../elsewhere': a batch id is" in err
    code, out, _ = run(capsys, "submit", str(plan_dir), "--dry-run", "--resume", "20261201_192245")
    assert code == 0, out
    code, _, err = run(
        capsys,
        "submit",
        str(plan_dir),
        "--dry-run",
        "--resume",
        "b1",
        "--config",
        '{"RUN_MODE": "fresh"}',
    )
    assert code == 2
    assert "--resume b1 contradicts the configuration's RUN_MODE" in err


def test_plan_check_with_the_rig_config_warns_about_an_unknown_model(capsys, plan_dir, tmp_path):
    rig = tmp_path / "llmo.toml"
    rig.write_text('[[workers]]\nname = "gpu0"\ngpus = [0]\nmodel = "/models/qwen2.5-7b.gguf"\n')
    code, out, _ = run(capsys, "plan", "check", str(plan_dir), "--config", str(rig))
    assert code == 0, out  # a warning, not an error: the rig may change
    assert (
        "task summarize: llm_model 'model_id_here' matches no model in "
        f"{rig} (it has: qwen2.5-7b); the task would fail at once"
    ) in out
    (plan_dir / "plan.md").write_text(PLAN.replace("model_id_here", "qwen2.5-7b"))
    code, out, _ = run(capsys, "plan", "check", str(plan_dir), "--rig", str(rig))
    assert code == 0 and "matches no model" not in out


def test_the_brain_under_systemd_knows_the_models_of_the_rigs_workers(tmp_path):
    from llmo.cli.brain_cmd import load_settings

    rig = tmp_path / "llmo.toml"
    rig.write_text(
        '[[workers]]\nname = "gpu0"\ngpus = [0]\nmodel = "/models/qwen2.5-7b.gguf"\n'
        '[[workers]]\nname = "gpu1"\ngpus = [1]\nmodel = "/models/qwen2.5-7b.gguf"\n'
    )
    assert load_settings(str(rig))["models"] == ["/models/qwen2.5-7b.gguf"]
