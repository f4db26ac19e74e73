"""A batch's result cache policy (config ``LLM_CACHE``) reaches its attempts, or is refused."""

from __future__ import annotations

import pytest

from llmo.proto.messages import PlanAccepted, PlanRejected
from tests.brain_fixtures import Rig, plan_text

pytestmark = pytest.mark.timeout(30)


def test_the_policy_travels_in_every_attempts_environment():
    rig = Rig()
    rig.worker("w", slots=2)
    reply = rig.submit(
        plan_text("a | cpu | echo {X}", "b | cpu | true"),
        config={"X": "1", "LLM_CACHE": "Seeded"},
    )
    assert isinstance(reply, PlanAccepted)
    envs = {a.task_id: a.env for a in rig.assigns()}
    assert envs == {
        "a": {"LLMO_VAR_X": "1", "LLMO_VAR_LLM_CACHE": "seeded"},
        "b": {"LLMO_VAR_LLM_CACHE": "seeded"},
    }


def test_without_the_key_attempts_carry_only_their_values():
    rig = Rig()
    rig.worker("w")
    rig.submit(plan_text("a | cpu | true"))
    assert [a.env for a in rig.assigns()] == [{}]


def test_an_unknown_policy_is_refused_naming_the_key_and_the_choices():
    rig = Rig()
    reply = rig.submit(plan_text("a | cpu | true"), config={"LLM_CACHE": "sometimes"})
    assert isinstance(reply, PlanRejected)
    text = "\n".join(reply.errors)
    assert "LLM_CACHE is 'sometimes'; use one of auto, seeded, off" in text
