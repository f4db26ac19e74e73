"""An llm task naming a model the rig does not have fails at once, with the reason.

Plans are in the original system's format: its own PLAN_FORMAT example names
``llm_model: model_id_here``.
"""

from __future__ import annotations

from llmo.brain.config import BrainConfig
from llmo.proto.messages import ModelLoad, PlanAccepted, Register
from tests.brain_fixtures import Rig, plan_text

PLAN = plan_text(
    "summarize | llm | python summarize.py | none | llm_model=model_id_here",
    "report | cpu | echo report | summarize",
)


def worker_with_models(rig: Rig, name: str, *models: str) -> None:
    register = Register(
        role="worker", slots=1, vram_budget_mb=6000, gpus=(0,), pid=1, models=models
    )
    rig.msg(register, src=name)
    rig.heartbeat(name, state="cold")


def test_a_model_no_worker_has_fails_at_once_naming_the_rigs_models() -> None:
    rig = Rig()
    worker_with_models(rig, "gpu0", "qwen2.5-7b", "/models/qwen2.5-7b.gguf")
    accepted = rig.submit(PLAN)
    assert isinstance(accepted, PlanAccepted)

    rig.tick(0.5)

    summarize = rig.task(accepted.batch_id, "summarize")
    assert summarize.state == "failed"
    assert summarize.attempts == 0  # a definition error: nothing was tried
    assert "definition error: unknown model 'model_id_here'" in summarize.error
    assert "this rig has: qwen2.5-7b" in summarize.error
    assert rig.task(accepted.batch_id, "report").state == "skipped"
    assert rig.state.batches[accepted.batch_id].state == "failed"
    assert rig.of(ModelLoad) == []


def test_a_model_a_worker_offers_is_loaded_not_refused() -> None:
    rig = Rig()
    worker_with_models(rig, "gpu0", "qwen2.5-7b", "/models/qwen2.5-7b.gguf")
    accepted = rig.submit(PLAN.replace("model_id_here", "qwen2.5-7b"))
    rig.tick(0.5)
    assert rig.task(accepted.batch_id, "summarize").state == "ready"
    assert [m.model for m in rig.of(ModelLoad)] == ["qwen2.5-7b"]


def test_configured_models_judge_before_any_worker_registers() -> None:
    rig = Rig(BrainConfig(models=("/models/gemma-3-270m.gguf",)))
    accepted = rig.submit(PLAN.replace("model_id_here", "qwen2.5:7b"))
    rig.tick(0.5)
    summarize = rig.task(accepted.batch_id, "summarize")
    assert summarize.state == "failed"
    assert "unknown model 'qwen2.5:7b'" in summarize.error
    assert "this rig has: gemma-3-270m" in summarize.error


def test_nothing_is_judged_while_the_rig_has_not_said_what_it_has() -> None:
    rig = Rig()
    rig.worker("w1")  # announces no models: what it can load is not known
    accepted = rig.submit(PLAN)
    rig.wait(5)
    assert rig.task(accepted.batch_id, "summarize").state == "ready"
