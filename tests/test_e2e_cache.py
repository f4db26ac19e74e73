"""End to end: a finished LLM batch run again, after ``llmo up`` restarts, spends no token.

The summarize example (one greedy completion per text) runs on a fresh rig,
the rig stops and starts again on the same folder, and the same plan runs
again: every summary comes from the result cache in the rig folder.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e_fixtures import Rig, rig_factory

__all__ = ["rig_factory"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def summaries(rig: Rig, plan) -> tuple[dict[str, str], dict[str, int], int]:
    run = rig.submit(plan)
    assert run.returncode == 0, run
    assert run.summary["status"] == "complete"
    rows = {k: r for k, r in run.rows().items() if r.get("template") == "summarize"}
    assert rows and all(r["state"] == "done" for r in rows.values()), rows
    texts = {}
    for path in (run.history / "results").glob("*.json"):
        result = json.loads(path.read_text())
        assert result["completion_tokens"] > 0, result
        texts[result["id"]] = result["summary"]
    return texts, {k: r["tokens"] for k, r in rows.items()}, run.summary["tokens"]


def test_a_rerun_of_a_finished_llm_batch_spends_zero_generated_tokens(rig_factory):
    rig = rig_factory()
    plan = rig.plan("summarize")
    first, first_tokens, first_total = summaries(rig, plan)
    assert all(t > 0 for t in first_tokens.values()), first_tokens
    rig.stop()

    again = rig_factory(again=rig)
    second, second_tokens, second_total = summaries(again, plan)

    assert second == first
    assert set(second_tokens) == set(first_tokens)
    assert all(t == 0 for t in second_tokens.values()), second_tokens
    assert second_total == 0 < first_total
    print(f"first run {first_total} tokens; re-run after a restart {second_total}")
    stats = again.llmo("cache", "stats", "--rig-dir", str(again.rig_dir), "--json")
    assert stats.returncode == 0, stats.stderr
    cached = json.loads(stats.stdout)
    assert cached["entries"] == len(first) and cached["hits"] == len(first)
    assert "from the result cache" in again.logs()
