"""Goal-driven plans: rounds until the target, or the attempt cap."""

from __future__ import annotations

import pytest

from llmo.brain.commands import WriteFile
from llmo.plans import has_errors, parse_plan
from tests.brain_fixtures import Rig, plan_text

pytestmark = pytest.mark.timeout(30)

GOAL = """- **type**: target_count
- **target**: {TARGET_COUNT}
- **tolerance**: {tolerance}
- **tracked_task**: validate
- **discovery_tasks**: discover
- **max_attempts_multiplier**: 3"""


def goal_plan(tolerance: int = 0) -> str:
    return plan_text(
        "discover | cpu | discover",
        "validate | cpu | validate {ITEM.id} | discover | foreach={BATCH_PATH}/c.json:items",
        "report | cpu | report | validate",
        goal=GOAL.replace("{tolerance}", str(tolerance)),
    )


def run(rig: Rig, good) -> str:
    """Three new candidates (``<round>a``, ``b``, ``c``) each time discovery runs."""
    rig.worker("w", slots=4)
    outcome = fresh_candidates(rig, [[{"id": f"{n}{k}"} for k in "abc"] for n in range(1, 20)])
    batch = rig.submit(goal_plan(), config={"TARGET_COUNT": 4}).batch_id
    rig.auto(lambda a: "done" if good(outcome(a)) else 1)
    return batch


def test_goal_reached_over_several_rounds():
    rig = Rig()
    batch = run(rig, lambda a: not a.task_id.endswith("c"))  # 2 of 3 candidates pass
    b = rig.state.batches[batch]
    assert b.goal.state == "reached" and b.goal.succeeded == 4 and b.goal.round == 2
    assert rig.task(batch, "report").state == "done"
    assert "discover_round_0002" in b.tasks and "validate_2a" in b.tasks
    assert b.state == "complete"  # rejected candidates do not fail the batch
    order = [a.task_id for a in rig.assigns()]
    assert order[-1] == "report"


def test_goal_within_tolerance_ends_the_round():
    rig = Rig()
    rig.worker("w", slots=4)
    rig.manifests["validate"] = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    text = goal_plan(tolerance=1)
    batch = rig.submit(text, config={"TARGET_COUNT": 4}).batch_id
    rig.auto(lambda a: "done")  # 3 of 4 in round one: within tolerance 1
    b = rig.state.batches[batch]
    assert b.goal.state == "reached" and b.goal.round == 1 and b.state == "complete"


def test_goal_plan_starts_at_submission():
    rig = Rig()
    reply = rig.submit(goal_plan(), config={"TARGET_COUNT": "5"})
    assert reply.TYPE.value == "plan.accepted", reply
    assert rig.state.batches[reply.batch_id].goal.cap == 15


# --- the original system's goal semantics --------------------------------------------

ORIGINAL_GOAL = """- **type**: target_count
- **target**: {TARGET_COUNT}
- **tolerance**: 0
- **tracked_task**: validate
- **max_attempts_multiplier**: 3"""


def original_plan(goal: str = ORIGINAL_GOAL) -> str:
    """A goal plan in the original's format: no discovery_tasks, the pipeline inferred."""
    return plan_text(
        "discover | cpu | discover",
        "validate | cpu | validate {ITEM.id} | discover | foreach={BATCH_PATH}/c.json:items",
        "report | cpu | report | validate",
        goal=goal,
    )


def fresh_candidates(rig: Rig, per_round):
    """An outcome that gives the validator new items each time discovery runs."""
    rounds = iter(per_round)

    def outcome(a):
        if a.task_id.startswith("discover"):
            rig.manifests["validate"] = next(rounds)
        return a

    return outcome


def events(rig: Rig, name: str) -> list:
    return [m for m in rig.sent if getattr(m, "event", None) == name]


def test_discovery_is_inferred_and_no_candidate_is_counted_twice():
    rig = Rig()
    rig.worker("w", slots=4)
    rig.manifests["validate"] = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    batch = rig.submit(original_plan(), config={"TARGET_COUNT": 4}).batch_id
    rig.auto(lambda a: 1 if a.task_id == "validate_c" else "done")
    b = rig.state.batches[batch]
    validations = [a.task_id for a in rig.assigns() if a.task_id.startswith("validate")]
    assert sorted(set(validations)) == ["validate_a", "validate_b", "validate_c"], validations
    assert "discover_round_0002" in b.tasks  # discovery ran again, inferred from the plan
    assert b.goal.succeeded == 2 and b.goal.tried == 3, b.goal
    assert b.goal.state == "exhausted"


def test_rounds_take_the_original_names():
    rig = Rig()
    rig.worker("w", slots=4)
    text = plan_text(
        "discover | cpu | discover",
        "validate | cpu | validate {ITEM} | discover | foreach={BATCH_PATH}/c.json:items",
        "report | cpu | report | validate",
        goal=ORIGINAL_GOAL,
    )
    outcome = fresh_candidates(rig, [["p", "q"], ["q", "s", "t"]])
    batch = rig.submit(text, config={"TARGET_COUNT": 4}).batch_id
    rig.auto(lambda a: "done" if outcome(a) else 1)
    b = rig.state.batches[batch]
    assert {"discover", "discover_round_0002", "validate_round_0002"} <= set(b.tasks)
    round_two = sorted(t for t in b.tasks if t.startswith("validate_r2"))
    assert round_two == ["validate_r2c1", "validate_r2c2"], sorted(b.tasks)  # "q" was tried
    assert b.goal.state == "reached" and b.goal.succeeded == 4 and b.state == "complete"
    assert rig.task(batch, "report").state == "done"


def test_an_exhausted_goal_still_releases_the_report_and_records_its_outcome():
    rig = Rig()
    rig.worker("w", slots=4)
    per_round = [[{"id": f"r{n}_{k}"} for k in "abc"] for n in range(1, 20)]
    rig.manifests["validate"] = per_round[0]
    outcome = fresh_candidates(rig, per_round)
    batch = rig.submit(goal_plan(), config={"TARGET_COUNT": 4}).batch_id
    rig.auto(lambda a: 65 if outcome(a).task_id.startswith("validate") else "done")
    b = rig.state.batches[batch]
    assert b.goal.state == "exhausted" and b.goal.tried == 12 and b.goal.round == 4
    assert rig.task(batch, "report").state == "done"  # released, as the original did
    (exhausted,) = events(rig, "goal_exhausted")
    assert exhausted.detail["succeeded"] == 0 and exhausted.detail["tried"] == 12
    summaries = [c for c in rig.commands if isinstance(c, WriteFile)]
    final = [c for c in summaries if c.path.endswith("RUN_SUMMARY.json")][-1]
    assert '"exhausted"' in final.text
    escalation = [c for c in summaries if "ESCALATION" in c.path]
    assert "goal was not reached" in escalation[-1].text


def test_a_rejection_is_not_retried_but_a_crash_is():
    rig = Rig()
    rig.worker("w", slots=4)
    rig.manifests["validate"] = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    batch = rig.submit(original_plan(), config={"TARGET_COUNT": 1}).batch_id
    codes = {"validate_a": 65, "validate_b": 1, "validate_c": 65}
    rig.auto(lambda a: codes.get(a.task_id, "done"))
    tries = [a.task_id for a in rig.assigns() if a.task_id.startswith("validate")]
    assert tries.count("validate_a") == 1 and tries.count("validate_c") == 1, tries
    assert tries.count("validate_b") == 3, tries  # an ordinary failure keeps its retries
    assert rig.task(batch, "validate_a").state == "failed"
    assert "rejected" in rig.task(batch, "validate_a").error


def test_a_static_pool_ends_when_it_runs_dry():
    rig = Rig()
    rig.worker("w", slots=4)
    rig.manifests["validate"] = [{"id": "a"}, {"id": "b"}]
    text = plan_text(
        "validate | cpu | validate {ITEM.id} | | foreach={PLAN_PATH}/pool.json:items",
        "report | cpu | report | validate",
        goal=ORIGINAL_GOAL,
    )
    batch = rig.submit(text, config={"TARGET_COUNT": 5}).batch_id
    rig.auto()
    b = rig.state.batches[batch]
    assert b.goal.state == "exhausted" and b.goal.round == 1 and b.goal.succeeded == 2
    assert rig.task(batch, "report").state == "done"


def test_the_original_goal_fields_are_read_not_ignored_as_unknown():
    text = original_plan(
        ORIGINAL_GOAL
        + """
- **discovery_round_multiplier**: 3
- **max_validations_per_cycle**: 3
- **discovery_pool_cap**: 40
- **discovery_pool_multiplier**: 2
- **discovery_prefill_divisor**: 4
- **discovery_refill_divisor**: 4"""
    )
    plan, problems = parse_plan(text, "plan.md")
    messages = [p.message for p in problems]
    assert not [m for m in messages if "unknown" in m], messages
    assert not has_errors(problems), messages
    for name in (
        "max_validations_per_cycle",
        "discovery_pool_cap",
        "discovery_pool_multiplier",
        "discovery_prefill_divisor",
        "discovery_refill_divisor",
    ):
        (said,) = [m for m in messages if name in m]
        assert "not supported here" in said, said
    assert plan.goal.discovery_tasks == ("discover",)  # inferred: validate's upstream
    assert plan.goal.round_multiplier == 3


def test_the_round_cap_of_the_original_ends_a_goal_that_finds_nothing_new():
    rig = Rig()
    rig.worker("w", slots=4)
    rig.manifests["validate"] = [{"id": "a"}]
    text = original_plan(ORIGINAL_GOAL + "\n- **discovery_round_multiplier**: 1")
    batch = rig.submit(text, config={"TARGET_COUNT": 2}).batch_id
    rig.auto()
    b = rig.state.batches[batch]
    assert b.goal.state == "exhausted" and b.goal.round == 2 and b.goal.succeeded == 1
    (exhausted,) = events(rig, "goal_exhausted")
    assert "round" in exhausted.detail["reason"], exhausted.detail


def test_a_goal_from_an_older_snapshot_loads_with_the_new_fields_defaulted():
    from llmo.brain.state import GoalRun

    old = GoalRun(target=3, tolerance=0, tracked="v", pipeline=("d", "v"), cap=15)
    _, fields = old.__reduce_ex__(5)[2]
    newer = ("round_cap", "discovery", "seen", "reason")
    loaded = GoalRun.__new__(GoalRun)
    loaded.__setstate__((None, {k: v for k, v in fields.items() if k not in newer}))
    assert (loaded.round_cap, loaded.discovery, loaded.seen, loaded.reason) == (
        0,
        ("d", "v"),
        {},
        "",
    )
