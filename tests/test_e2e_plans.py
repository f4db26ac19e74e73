"""End to end: the example plans through ``llmo up`` + ``llmo submit --watch --json``,
and a plan with undefined placeholders refused before anything is sent.

One rig (two CPU workers and the brain-role worker, the embedded Gemma)
serves the whole module; each test runs its own copy of a plan.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e_fixtures import Rig, events_of, llmo_argv, module_rig_factory, one_test

__all__ = ["module_rig_factory"]

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def shared_rig(module_rig_factory) -> Rig:
    return module_rig_factory()


@pytest.fixture
def rig(shared_rig) -> Iterator[Rig]:
    yield from one_test(shared_rig)


def test_hello_greets_every_name_and_gathers_them(rig):
    """Also a regression: ``llmo up`` runs from a folder that holds a ``plans/``
    folder (the plan copies), which its children once imported instead of
    llmo's own ``plans`` package, so the brain could not parse any plan."""
    plan = rig.plan("hello")
    assert plan.parent == rig.root / "plans"

    run = rig.submit(plan)

    assert run.returncode == 0, run
    assert run.state == "complete"
    summary = run.summary
    assert summary["status"] == "complete"
    rows = run.rows()
    items = ["greet_batch_0001_0002", "greet_batch_0003_0004", "greet_batch_0005_0005"]
    assert set(rows) == {"make_manifest", "greet", *items, "aggregate"}
    assert all(row["state"] == "done" for row in rows.values()), rows
    assert summary["counts"] == {"done": 6}
    assert all(rows[t]["attempts"] == 1 for t in ("make_manifest", *items, "aggregate"))
    manifest = json.loads((run.history / "manifest.json").read_text())
    greetings = json.loads((run.history / "output" / "greetings.json").read_text())
    assert len(manifest["items"]) == 5
    assert len(greetings["greetings"]) == 5
    for item, greeting in zip(manifest["items"], greetings["greetings"], strict=True):
        assert item["name"] in json.dumps(greeting)
    assert (run.history / "RUN_SUMMARY.md").read_text().startswith("# Run summary: hello")
    for task in ("make_manifest", *items, "aggregate"):
        assert (run.history / "logs" / f"{task}.log").exists(), task
    assert not list(plan.parent.parent.glob("**/ESCALATION.md"))


@pytest.mark.slow
def test_summarize_writes_one_summary_per_text_with_the_real_model(rig):
    plan = rig.plan("summarize")
    texts = json.loads((plan / "inputs" / "texts.json").read_text())["texts"]

    run = rig.submit(plan)

    assert run.returncode == 0, run
    assert run.summary["status"] == "complete"
    rows = run.rows()
    llm_rows = [row for row in rows.values() if row.get("template") == "summarize"]
    assert len(llm_rows) == len(texts)
    for text in texts:
        result = json.loads((run.history / "results" / f"{text['id']}.json").read_text())
        assert result["summary"].strip(), result
        assert result["completion_tokens"] > 0, result
        row = rows[f"summarize_{text['id']}"]
        assert row["state"] == "done"
        assert row["tokens"] > 0, row
        assert row["worker"].startswith("cpu-"), row
    assert run.summary["tokens"] >= sum(row["tokens"] for row in llm_rows) > 0
    assert run.summary["tok_s"] > 0
    gathered = json.loads((run.history / "output" / "summaries.json").read_text())
    assert gathered["count"] == len(texts)
    assert (run.history / "output" / "summaries.md").read_text().startswith("# Summaries")


def test_goal_plan_keeps_discovering_until_the_target_is_met(rig):
    plan = rig.plan("goal_example")

    run = rig.submit(plan, "--config", json.dumps({"TARGET_COUNT": 3}))

    assert run.returncode == 0, run
    summary = run.summary
    assert summary["status"] == "complete"
    goal = summary["goal"]
    assert goal["target"] == 3
    assert goal["state"] == "reached", goal
    assert goal["succeeded"] >= 3 - goal["tolerance"]
    report = json.loads((run.history / "output" / "report.json").read_text())
    assert report["target"] == 3
    assert report["accepted"] == goal["succeeded"]
    assert all(p > 1 and all(p % d for d in range(2, p)) for p in report["primes"]), report
    assert run.rows()["report"]["state"] == "done"
    assert events_of(run.events(), "batch_completed")


def test_goal_plan_in_the_original_format_runs_rounds_under_its_names(rig):
    """The goal example as the original wrote goals: no discovery_tasks, and its pool
    and cycle fields. Round 1 finds 3 primes of 6, round 2 another 3 (ids r2_NN):
    6 of 7 is within the tolerance of 1, so the goal ends with round 2."""
    plan = rig.plan("goal_example")
    text = (plan / "plan.md").read_text()
    text = text.replace("- **discovery_tasks**: discover_items, score_items\n", "")
    extra = "- **max_validations_per_cycle**: 3\n- **discovery_pool_cap**: 40\n"
    text = text.replace(
        "- **max_attempts_multiplier**: 5\n", "- **max_attempts_multiplier**: 5\n" + extra
    )
    (plan / "plan.md").write_text(text)
    check = rig.llmo("plan", "check", str(plan))
    assert check.returncode == 0, check
    assert "unknown goal field" not in check.stdout + check.stderr
    assert "discover_items, score_items (inferred)" in check.stdout, check.stdout

    run = rig.submit(plan, "--config", json.dumps({"TARGET_COUNT": 7}))

    assert run.returncode == 0, run
    goal = run.summary["goal"]
    assert (goal["state"], goal["succeeded"], goal["tried"], goal["rounds"]) == (
        "reached",
        6,
        12,
        2,
    ), goal
    rows = run.rows()
    for name in ("discover_items_round_0002", "score_items_round_0002", "validate_item_r2_01"):
        assert rows[name]["state"] == "done", rows[name]
    validations = [r for r in rows.values() if re.fullmatch(r"validate_item_r\d+_\d+", r["id"])]
    assert len(validations) == 12  # every candidate once: 6 per round
    rejected = [r for r in validations if r["state"] == "failed"]
    assert len(rejected) == 6 and all(r["attempts"] == 1 for r in rejected), rejected
    accepted = sorted(p.stem for p in (run.history / "accepted").glob("*.json"))
    report = json.loads((run.history / "output" / "report.json").read_text())
    assert report["accepted"] == len(accepted) == goal["succeeded"]
    assert rows["report"]["state"] == "done"
    assert events_of(run.events(), "goal_reached")


def test_undefined_placeholders_are_refused_with_every_name_and_nothing_is_sent(rig):
    plan = rig.plan("undefined")
    before = {b["id"] for b in rig.status()["batches"]}

    done = rig.llmo("submit", str(plan), "--watch", "--json", "--config", '{"AUDIENCE": "x"}')
    bare = rig.llmo("submit", str(plan))

    assert done.returncode == 2, done
    for name in ("GREETING", "OUTPUT_DIR"):
        assert f"{{{name}}}" in done.stderr, done.stderr
    assert "{AUDIENCE}" not in done.stderr
    assert "not sent" in done.stderr
    assert bare.returncode == 2, bare
    for name in ("GREETING", "AUDIENCE", "OUTPUT_DIR"):
        assert f"{{{name}}}" in bare.stderr, bare.stderr
    assert not (plan / "history").exists()
    batches = rig.status()["batches"]
    assert {b["id"] for b in batches} == before
    assert all(b["plan"] != "undefined" for b in batches)


def test_a_second_llmo_up_on_the_same_endpoints_refuses_and_leaves_the_first_alone(rig, tmp_path):
    before = rig.children()
    second = subprocess.Popen(
        [*llmo_argv(), "up", "--rig-dir", str(tmp_path / "rig")],
        cwd=tmp_path,
        env=rig.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = second.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        second.send_signal(signal.SIGTERM)
        out, err = second.communicate(timeout=30)
        pytest.fail(f"a second llmo up on {rig.broker} kept running:\n{out}\n{err}")

    assert second.returncode == 2, (out, err)
    assert rig.broker in err and rig.pub in err
    assert not (tmp_path / "rig" / "logs").exists()  # nothing was started
    assert rig.children() == before
    rig.wait_ready(10)
    run = rig.submit(rig.plan("hello"))
    assert run.returncode == 0, run
