"""Which folder ``llmo demo`` runs its default example in."""

from __future__ import annotations

from pathlib import Path

from llmo.cli.demo_cmd import EXAMPLES, example


def test_an_example_outside_the_environment_runs_where_it_is(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    assert example("summarize", venv, tmp_path / "copies") == EXAMPLES / "summarize"
    assert not (tmp_path / "copies").exists()


def test_an_example_installed_in_the_environment_runs_from_a_fresh_copy(tmp_path):
    venv = tmp_path / "venv"
    installed = venv / "lib" / "site-packages" / "llmo" / "plans" / "examples"
    (installed / "summarize" / "history" / "old").mkdir(parents=True)
    (installed / "summarize" / "plan.md").write_text("# Plan: summarize\n")
    copies = tmp_path / "llmo-examples"

    plan = example("summarize", venv, copies, installed)

    assert plan == copies / "summarize"
    assert (plan / "plan.md").read_text() == "# Plan: summarize\n"
    assert not (plan / "history").exists()  # the package's history is not carried over
    assert venv not in Path(plan).parents
    (plan / "history").mkdir()  # a second demo keeps the copy's own history
    assert example("summarize", venv, copies, installed) == plan
    assert (plan / "history").is_dir()
