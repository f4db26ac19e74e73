"""Model load and unload decisions, and meta tasks, with a fake clock."""

from __future__ import annotations

import pytest

from llmo.brain.config import BrainConfig
from llmo.proto.messages import Ack, BatchCancel, ModelLoad, ModelStatus, ModelUnload
from llmo.proto.vocab import model_names
from tests.brain_fixtures import Rig, plan_text

pytestmark = pytest.mark.timeout(30)

LLM = "gen{n} | llm | python gen.py {n} | none | llm_model=m"


def llm_plan(count: int) -> str:
    return plan_text(*[LLM.format(n=n) for n in range(count)])


def test_llm_work_loads_one_cold_worker_then_runs_there():
    rig = Rig()
    rig.worker("w1")
    rig.worker("w2")
    rig.submit(llm_plan(1))
    rig.tick(0.5)
    loads = rig.of(ModelLoad)
    assert [(m.dst, m.model) for m in loads] == [("w1", "m")]
    rig.wait(5.0)
    assert len(rig.of(ModelLoad)) == 1  # never two loads racing for one model
    assert rig.assigns() == []  # not while it is still loading
    rig.heartbeat("w1", state="loading")
    assert rig.assigns() == []
    rig.hot("w1", "m")
    assert [(a.dst, a.model) for a in rig.assigns()] == [("w1", "m")]


def test_a_second_worker_loads_only_after_the_first_is_hot_and_demand_remains():
    rig = Rig()
    rig.worker("w1")
    rig.worker("w2")
    rig.submit(llm_plan(4))
    rig.tick(0.5)
    assert [m.dst for m in rig.of(ModelLoad)] == ["w1"]
    rig.hot("w1", "m")
    rig.heartbeat("w1", state="hot", model="m")
    rig.tick(0.5)
    assert [m.dst for m in rig.of(ModelLoad)] == ["w1", "w2"]


def test_max_hot_is_respected():
    rig = Rig(BrainConfig(max_hot=1))
    rig.worker("w1")
    rig.worker("w2")
    rig.submit(llm_plan(4))
    rig.tick(0.5)
    rig.hot("w1", "m")
    rig.heartbeat("w1", state="hot", model="m")
    rig.wait(3.0)
    assert [m.dst for m in rig.of(ModelLoad)] == ["w1"]


def test_failed_load_does_not_fail_the_batch_and_another_worker_tries():
    rig = Rig(BrainConfig(max_load_failures=5))
    rig.worker("w1")
    rig.worker("w2")
    batch = rig.submit(llm_plan(1)).batch_id
    rig.tick(0.5)
    rig.msg(ModelStatus(model="m", state="failed", error="out of memory"), src="w1")
    assert rig.state.batches[batch].state == "running"
    rig.tick(0.5)
    assert [m.dst for m in rig.of(ModelLoad)] == ["w1", "w2"]


def test_a_model_that_never_loads_fails_its_tasks_visibly():
    rig = Rig(BrainConfig(max_load_failures=2, load_retry_s=1.0))
    rig.worker("w1")
    batch = rig.submit(llm_plan(1)).batch_id
    for _ in range(2):
        rig.tick(0.5)
        rig.msg(ModelStatus(model="m", state="failed", error="bad file"), src="w1")
        rig.wait(1.5)
    task = rig.task(batch, "gen0")
    assert task.state == "failed" and "failed to load" in task.error
    assert rig.state.batches[batch].state == "failed"


def test_load_that_never_reports_times_out():
    rig = Rig(BrainConfig(load_timeout_s=10.0))
    rig.worker("w1")
    rig.submit(llm_plan(1))
    rig.tick(0.5)
    rig.wait(11.0)
    assert [m.reason for m in rig.of(ModelUnload)] == ["load timed out"]
    assert rig.state.workers["w1"].loading == ""


def test_idle_hot_worker_is_unloaded_after_no_llm_demand():
    rig = Rig(BrainConfig(unload_idle_s=90.0))
    rig.worker("w1", state="hot", model="m")
    batch = rig.submit(plan_text("s | cpu | true", LLM.format(n=0))).batch_id
    rig.auto()
    assert rig.state.batches[batch].state == "complete"
    rig.wait(80.0)
    assert rig.of(ModelUnload) == []
    rig.wait(11.0)
    assert [m.dst for m in rig.of(ModelUnload)] == ["w1"]
    rig.wait(10.0)
    assert len(rig.of(ModelUnload)) == 1  # not repeated while it unloads


def test_script_work_after_llm_work_gets_an_unloaded_worker():
    rig = Rig(BrainConfig(unload_idle_s=30.0))
    rig.worker("w1", state="hot", model="m")
    batch = rig.submit(plan_text("s | script | run")).batch_id
    rig.wait(31.0)
    assert [m.dst for m in rig.of(ModelUnload)] == ["w1"]
    rig.msg(ModelStatus(model="", state="cold"), src="w1")
    rig.heartbeat("w1", state="cold", model="")
    assert [a.task_id for a in rig.assigns()] == ["s"]
    assert rig.state.batches[batch].state == "running"


def test_cancelled_batches_create_no_demand():
    rig = Rig()
    rig.worker("w1")
    batch = rig.submit(llm_plan(3)).batch_id
    rig.msg(BatchCancel(batch_id=batch), src="cancel-1")
    rig.wait(3.0)
    assert rig.of(ModelLoad) == []


def test_return_to_default_when_idle():
    rig = Rig(BrainConfig(default_hot=("m",), default_idle_s=90.0, unload_idle_s=30.0))
    rig.worker("w1")
    rig.worker("w2")
    rig.submit(plan_text("a | cpu | a"))
    rig.auto()
    rig.wait(89.0)
    assert rig.of(ModelLoad) == []
    rig.wait(2.0)
    assert [(m.dst, m.model) for m in rig.of(ModelLoad)] == [("w1", "m")]
    rig.hot("w1", "m")
    rig.wait(120.0)
    assert rig.of(ModelUnload) == []  # the default stays hot while the rig is idle
    assert len(rig.of(ModelLoad)) == 1


def test_brain_model_is_loaded_for_brain_tasks():
    rig = Rig(BrainConfig(brain_model="big"))
    rig.worker("brain-llm", role="brain", gpus=(0, 3))
    rig.submit(plan_text("think | brain | think"))
    rig.tick(0.5)
    assert [(m.dst, m.model) for m in rig.of(ModelLoad)] == [("brain-llm", "big")]
    rig.hot("brain-llm", "big")
    assert [a.dst for a in rig.assigns()] == ["brain-llm"]


def test_meta_load_llm_completes_when_the_worker_is_hot():
    rig = Rig(BrainConfig(default_model="m"))
    rig.worker("w1")
    batch = rig.submit(plan_text("load | meta | load_llm", "use | cpu | x | load")).batch_id
    assert [(m.dst, m.model) for m in rig.of(ModelLoad)] == [("w1", "m")]
    assert rig.task(batch, "load").state == "running"
    rig.hot("w1", "m")
    assert rig.task(batch, "load").state == "done"
    assert [a.task_id for a in rig.assigns()] == ["use"]


def test_meta_unload_llm_unloads_hot_workers():
    rig = Rig()
    rig.worker("w1", state="hot", model="m")
    rig.worker("w2")
    batch = rig.submit(plan_text("unload | meta | unload_llm")).batch_id
    assert [m.dst for m in rig.of(ModelUnload)] == ["w1"]
    assert rig.state.batches[batch].state == "complete"


def test_an_executor_brain_meta_task_is_run_by_the_brain_not_assigned():
    """Meta tasks are runtime control the brain turns into ModelLoad/ModelUnload,
    whatever their executor: ``executor: brain`` acts on the brain-role worker."""
    rig = Rig(BrainConfig(brain_model="big", default_model="m"))
    rig.worker("w1")
    rig.worker("brain-llm", role="brain")
    text = plan_text("load | meta | load_split_llm", "unload | meta | unload_llm | load")
    batch = rig.submit(text.replace("**executor**: worker", "**executor**: brain")).batch_id
    assert [(m.dst, m.model) for m in rig.of(ModelLoad)] == [("brain-llm", "big")]
    assert rig.task(batch, "load").state == "running"
    rig.hot("brain-llm", "big")
    assert rig.task(batch, "load").state == "done"
    rig.heartbeat("brain-llm", state="hot", model="big")
    assert [m.dst for m in rig.of(ModelUnload)] == ["brain-llm"]
    assert rig.state.batches[batch].state == "complete"
    assert rig.assigns() == []


def test_operator_load_and_unload_through_the_brain():
    rig = Rig()
    rig.worker("w1")
    rig.msg(ModelLoad(model="m", worker="w1"), src="load-1")
    assert rig.of(Ack)[-1].ok and rig.of(ModelLoad)[-1].dst == "w1"
    rig.msg(ModelLoad(model="m", worker="w1"), src="load-1")
    assert not rig.of(Ack)[-1].ok  # already loading
    rig.msg(ModelUnload(worker="nobody"), src="unload-1")
    assert not rig.of(Ack)[-1].ok


def test_unload_of_a_worker_with_nothing_loaded_is_refused_and_nothing_is_sent():
    rig = Rig()
    rig.worker("w1")
    rig.msg(ModelUnload(worker="w1"), src="unload-1")
    ack = rig.of(Ack)[-1]
    assert not ack.ok and ack.detail == "w1 has no model loaded"
    assert not [m for m in rig.of(ModelUnload) if m.dst == "w1"]
    rig.msg(ModelStatus(model="m", state="hot"), src="w1")
    rig.msg(ModelUnload(worker="w1"), src="unload-1")
    assert rig.of(Ack)[-1].ok and rig.of(ModelUnload)[-1].dst == "w1"


def _two_workers(rig, w1_model: str) -> None:
    """w1 configured with ``w1_model`` (listed as a real worker lists it), w2 with another."""
    from llmo.proto.messages import Register

    for name, gpu, models in (("w1", 0, model_names(w1_model)), ("w2", 1, ("qwen-7b",))):
        rig.msg(
            Register(
                role="worker", slots=1, vram_budget_mb=6000, gpus=(gpu,), pid=gpu + 1, models=models
            ),
            src=name,
        )
        rig.heartbeat(name, state="cold")


def test_a_model_named_by_path_loads_on_the_worker_configured_with_that_path():
    path = "/models/gemma-3-270m-q4_k_m.gguf"
    rig = Rig(BrainConfig(default_model=path))
    _two_workers(rig, path)
    rig.submit(plan_text("gen | llm | python gen.py | none"))
    rig.tick(0.5)
    assert [(m.dst, m.model) for m in rig.of(ModelLoad)] == [("w1", path)]


def test_a_model_named_by_alias_loads_on_the_worker_configured_with_its_path():
    rig = Rig(BrainConfig(default_model="gemma-3-270m-q4_k_m"))
    _two_workers(rig, "/models/gemma-3-270m-q4_k_m.gguf")
    rig.submit(plan_text("gen | llm | python gen.py | none"))
    rig.tick(0.5)
    assert [(m.dst, m.model) for m in rig.of(ModelLoad)] == [("w1", "gemma-3-270m-q4_k_m")]


def test_another_path_to_a_file_of_the_same_name_is_not_offered():
    # The worker would refuse to load /other/... (not configured): the brain
    # must not send it there in the first place.
    rig = Rig(BrainConfig(default_model="/other/gemma-3-270m-q4_k_m.gguf"))
    _two_workers(rig, "/models/gemma-3-270m-q4_k_m.gguf")
    rig.submit(plan_text("gen | llm | python gen.py | none"))
    rig.tick(0.5)
    assert rig.of(ModelLoad) == []


def test_a_worker_serving_requests_is_not_unloaded_and_idle_counts_from_the_last():
    """A model loaded by an operator (no batch wants it) that serves requests
    on its endpoint stays hot; the idle time starts when the requests stop."""
    rig = Rig(BrainConfig(unload_idle_s=30.0))
    rig.worker("w1", state="hot", model="m")
    for _ in range(60):  # a minute of requests in flight, heartbeat after heartbeat
        rig.tick(1.0)
        rig.heartbeat("w1", llm_requests=2)
    assert rig.of(ModelUnload) == []
    rig.wait(29.0)
    assert rig.of(ModelUnload) == []
    rig.wait(2.0)
    assert [m.dst for m in rig.of(ModelUnload)] == ["w1"]


def test_an_absurd_request_count_is_ignored_and_named():
    rig = Rig()
    rig.worker("w1", state="hot", model="m")
    rig.heartbeat("w1", llm_requests=-3)
    assert rig.state.workers["w1"].llm_requests == 0
    assert any("llm_requests" in c.text for c in rig.commands if type(c).__name__ == "Log")


def test_a_failed_load_and_its_reason_are_in_the_workers_view_until_the_next_load():
    # ``llmo load`` reads why a load failed from the brain's snapshot: the
    # published ``model_failed`` event can be lost to a subscription not yet in effect.
    from llmo.brain.view import worker_view

    rig = Rig(BrainConfig(max_load_failures=5, load_retry_s=1.0))
    rig.worker("w1")
    rig.submit(llm_plan(1))
    rig.tick(0.5)
    rig.msg(ModelStatus(model="m", state="failed", error="model file m does not exist"), src="w1")
    info = worker_view(rig.state.workers["w1"])
    assert (info.loading, info.load_failed, info.load_error) == (
        "",
        "m",
        "model file m does not exist",
    )
    rig.wait(2.0)
    assert [m.dst for m in rig.of(ModelLoad)] == ["w1", "w1"]  # asked again: under way
    info = worker_view(rig.state.workers["w1"])
    assert (info.loading, info.load_failed, info.load_error) == ("m", "", "")
