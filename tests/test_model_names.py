"""One rule for naming a model, used by the brain's offers, the worker's loads,
its admission of LLM tasks and its OpenAI endpoint."""

from __future__ import annotations

from llmo.brain.models import offers
from llmo.proto.vocab import model_alias, model_names, names_model
from llmo.worker.llm import LoadSpec

PATH = "/models/gemma-3-270m-q4_k_m.gguf"


def test_a_configured_model_answers_to_its_alias_and_its_path_only():
    assert model_alias(PATH) == "gemma-3-270m-q4_k_m"
    assert model_names(PATH) == ("gemma-3-270m-q4_k_m", PATH)
    assert names_model("gemma-3-270m-q4_k_m", PATH)
    assert names_model(PATH, PATH)
    assert not names_model("/other/gemma-3-270m-q4_k_m.gguf", PATH)
    assert not names_model("gemma-3-270m-q4_k_m.gguf", PATH)


def test_the_brain_offers_exactly_what_the_worker_lists():
    listed = model_names(PATH)
    assert offers(listed, PATH) and offers(listed, "gemma-3-270m-q4_k_m")
    assert not offers(listed, "/other/gemma-3-270m-q4_k_m.gguf")


def test_a_loaded_model_with_its_own_alias_also_answers_to_its_file():
    spec = LoadSpec(path=PATH, alias="small")
    assert spec.name == "small"
    assert spec.answers_to("small")
    assert spec.answers_to("gemma-3-270m-q4_k_m")
    assert spec.answers_to(PATH)
    assert not spec.answers_to("/other/gemma-3-270m-q4_k_m.gguf")
    assert not spec.answers_to("qwen-7b")
