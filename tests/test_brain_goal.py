"""Goal-driven plans: rounds until the target, or the attempt cap."""

from __future__ import annotations

import pytest

from llmo.brain.commands import WriteFile
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
    rig.worker("w", slots=4)
    rig.manifests["validate"] = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    batch = rig.submit(goal_plan(), config={"TARGET_COUNT": 4}).batch_id
    rig.auto(lambda a: "done" if good(a) else 1)
    return batch


def test_goal_reached_over_several_rounds():
    rig = Rig()
    batch = run(rig, lambda a: not a.task_id.endswith("_c"))  # 2 of 3 candidates pass
    b = rig.state.batches[batch]
    assert b.goal.state == "reached" and b.goal.succeeded == 4 and b.goal.round == 2
    assert rig.task(batch, "report").state == "done"
    assert "discover.r2" in b.tasks and "validate.r2_a" in b.tasks
    assert b.state == "complete"  # rejected candidates do not fail the batch
    order = [a.task_id for a in rig.assigns()]
    assert order[-1] == "report"


def test_goal_exhausts_its_attempt_cap():
    rig = Rig()
    batch = run(rig, lambda a: not a.task_id.startswith("validate"))
    b = rig.state.batches[batch]
    assert b.goal.state == "exhausted" and b.goal.tried == 12 and b.goal.round == 4
    assert rig.task(batch, "report").state == "skipped"
    assert b.state == "failed"
    escalation = [c for c in rig.commands if isinstance(c, WriteFile) and "ESCALATION" in c.path]
    assert "goal was not reached" in escalation[-1].text


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
