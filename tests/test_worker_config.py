"""How a worker turns a model request into load parameters (no model is loaded here)."""

from __future__ import annotations

from llmo.proto.messages import ModelLoad
from llmo.worker.config import WorkerConfig


def test_a_split_model_uses_the_configured_shares_else_even_ones():
    even = WorkerConfig(name="brain-llm", gpus=(0, 3), models=("/m/big.gguf",))
    assert even.spec_for("").tensor_split == (1.0, 1.0)
    uneven = WorkerConfig(
        name="brain-llm", gpus=(0, 3), models=("/m/big.gguf",), tensor_split=(3.0, 2.0)
    )
    assert uneven.spec_for("big").tensor_split == (3.0, 2.0)
    # A load that names its own split wins over the worker's.
    load = ModelLoad(model="big", tensor_split=(1.0, 4.0))
    assert uneven.spec_for("big", load).tensor_split == (1.0, 4.0)
    single = WorkerConfig(name="gpu-1", gpus=(1,), models=("/m/small.gguf",))
    assert single.spec_for("").tensor_split == ()


def test_unknown_model_is_named():
    config = WorkerConfig(name="gpu-1", gpus=(1,), models=("/m/small.gguf",))
    assert "unknown model 'other'" in config.spec_for("other")
