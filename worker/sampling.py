"""Sampling parameters of one request, checked, and the llama.cpp sampler chain they build.

Theory of operation
-------------------
``SamplingParams.checked`` turns a request's loose values into typed ones and
refuses what cannot be meant (a negative temperature, ``top_k -1``, a seed
that does not fit 32 bits) with a ``ValueError`` that names the field and the
value: the endpoint answers it as 400. Defaults are llama-cpp-python's
``create_completion`` defaults, so a request means what it meant before.

``build_chain`` makes one sampler chain per sequence, in llama-cpp-python's
order: logit bias, repetition penalties, then either greedy (temperature 0)
or top-k, typical, top-p, min-p, temperature and a seeded draw. A chain keeps
its own state (the penalties' recent tokens, the draw's random generator), so
sequences sampled in one batch never share it; the chain is freed when its
sequence ends.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

SEED_MAX = 2**32 - 1
PENALTY_LAST_N = 64


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"'{name}' must be a finite number (got {value!r})")
    if not low <= value <= high:
        raise ValueError(f"'{name}' must be between {low:g} and {high:g} (got {value!r})")
    return float(value)


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"'{name}' must be an integer (got {value!r})")
    if not low <= value <= high:
        raise ValueError(f"'{name}' must be between {low} and {high} (got {value!r})")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class SamplingParams:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40  # 0: off
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # None: a fresh random seed per request
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalised(self) -> bool:
        return (
            self.repeat_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    @classmethod
    def checked(cls, **values: Any) -> SamplingParams:
        """From a request's fields (``None`` means the default); ValueError names a bad one."""
        given = {k: v for k, v in values.items() if v is not None}
        unknown = set(given) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
        out: dict[str, Any] = {}
        if "temperature" in given:
            out["temperature"] = _number("temperature", given["temperature"], 0.0, 100.0)
        if "top_p" in given:
            out["top_p"] = _number("top_p", given["top_p"], 0.0, 1.0)
        if "min_p" in given:
            out["min_p"] = _number("min_p", given["min_p"], 0.0, 1.0)
        if "typical_p" in given:
            out["typical_p"] = _number("typical_p", given["typical_p"], 0.0, 1.0)
        if "top_k" in given:
            out["top_k"] = _integer("top_k", given["top_k"], 0, 1_000_000)
        if "repeat_penalty" in given:
            out["repeat_penalty"] = _number("repeat_penalty", given["repeat_penalty"], 0.01, 100.0)
        for name in ("presence_penalty", "frequency_penalty"):
            if name in given:
                out[name] = _number(name, given[name], -2.0, 2.0)
        if "seed" in given:
            out["seed"] = _integer("seed", given["seed"], 0, SEED_MAX)
        if "logit_bias" in given:
            out["logit_bias"] = _bias(given["logit_bias"])
        return cls(**out)


def _bias(value: Any) -> tuple[tuple[int, float], ...]:
    if isinstance(value, tuple):
        return value
    if not isinstance(value, dict):
        raise ValueError("'logit_bias' maps token ids to numbers")
    try:
        pairs = tuple((int(k), float(v)) for k, v in value.items())
    except (TypeError, ValueError):
        raise ValueError("'logit_bias' maps token ids to numbers") from None
    for token, bias in pairs:
        if token < 0 or not math.isfinite(bias):
            raise ValueError(f"'logit_bias' has a bad entry {token}: {bias}")
    return pairs


def build_chain(params: SamplingParams, n_vocab: int) -> Any:
    """A new llama.cpp sampler chain for ``params`` (free it with ``free_chain``)."""
    import llama_cpp as ll

    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    add = ll.llama_sampler_chain_add
    bias = [(t, b) for t, b in params.logit_bias if t < n_vocab]
    if bias:
        array = (ll.llama_logit_bias * len(bias))()
        for i, (token, value) in enumerate(bias):
            array[i].token = token  # type: ignore[assignment]  # ctypes converts
            array[i].bias = value
        add(chain, ll.llama_sampler_init_logit_bias(n_vocab, len(bias), array))
    if params.penalised:
        add(
            chain,
            ll.llama_sampler_init_penalties(
                n_vocab,
                PENALTY_LAST_N,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            ),
        )
    if params.greedy:
        add(chain, ll.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(chain, ll.llama_sampler_init_top_k(params.top_k))
    if params.typical_p < 1.0:
        add(chain, ll.llama_sampler_init_typical(params.typical_p, 1))
    if params.top_p < 1.0:
        add(chain, ll.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(chain, ll.llama_sampler_init_min_p(params.min_p, 1))
    add(chain, ll.llama_sampler_init_temp(params.temperature))
    seed = params.seed if params.seed is not None else random.randint(0, SEED_MAX - 1)
    add(chain, ll.llama_sampler_init_dist(seed))
    return chain


def free_chain(chain: Any) -> None:
    import llama_cpp as ll

    ll.llama_sampler_free(chain)
