"""Words every actor must agree on, defined once.

The wire schema (``messages``) says what a message holds; this module says
what some of its values mean, where more than one actor acts on them:

- **Liveness.** A peer heartbeats every ``HEARTBEAT_INTERVAL_S`` seconds
  (a worker says its own interval in each heartbeat); one silent for
  ``HEARTBEAT_LIVENESS`` intervals is down. The broker and the brain judge
  with these same figures.
- **Retry later.** A task process that exits with ``EXIT_RETRY_LATER`` (75,
  ``EX_TEMPFAIL``) asks to be run again later without spending an attempt.
- **Rejected.** A task process that exits with ``EXIT_REJECTED`` (65,
  ``EX_DATAERR``) says its input is wrong and trying again cannot help (a
  validator rejecting a candidate): the task fails at once, without the
  retries an ordinary failure gets.
- **Meta commands.** The runtime-control commands a ``meta`` task may name
  (its command's first word), and whether each acts on a split model.
- **Model names.** A worker knows each configured model by its path and by
  its alias (the file name without ``.gguf``). A task or load request names a
  model by either; any other name (another path to a file of the same name,
  say) is not that model.
"""

from __future__ import annotations

import os

HEARTBEAT_INTERVAL_S = 1.0  # seconds between a peer's heartbeats
HEARTBEAT_LIVENESS = 3  # heartbeats a peer may miss before it is declared down
HEARTBEAT_EXPIRY_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS

EXIT_RETRY_LATER = 75
EXIT_REJECTED = 65

MAX_PARALLEL = 256  # LLM sequences one worker may batch (``Heartbeat.llm_slots``)
MAX_LLM_REQUESTS = 1_000_000  # requests one heartbeat may report (``Heartbeat.llm_requests``)

# The result cache's policy for a batch (``worker.cache``): the configuration
# key, its values (auto: greedy requests; seeded: also fixed seeds; off), and
# the variable of the attempt's environment (``TaskAssign.env``) it travels in.
LLM_CACHE_KEY = "LLM_CACHE"
LLM_CACHE_POLICIES = ("auto", "seeded", "off")
LLM_CACHE_ENV = "LLMO_VAR_LLM_CACHE"


def slot_free(*, llm: bool, slots: int, llm_slots: int, llm_used: int, other_used: int) -> int:
    """Free credit on a worker for one more attempt (> 0: it fits).

    LLM attempts first fill the LLM credit (``llm_slots``, the sequences a
    hot model batches); only those beyond it take shell slots, which every
    other attempt uses. The brain places by this and the worker admits by it.
    """
    shell_free = slots - other_used - max(0, llm_used - llm_slots)
    if llm:
        return max(0, llm_slots - llm_used) + max(0, shell_free)
    return shell_free


# Meta commands that load a model, and whether the model is split across GPUs.
META_LOADS: dict[str, bool] = {"load_llm": False, "load_split_llm": True}
# Meta commands that unload (or reset) a runtime, and whether it is a split one.
META_UNLOADS: dict[str, bool] = {
    "unload_llm": False,
    "reset_gpu_runtime": False,
    "unload_split_llm": True,
    "cleanup_split_runtime": True,
    "reset_split_runtime": True,
}
META_COMMANDS: frozenset[str] = frozenset(META_LOADS) | frozenset(META_UNLOADS)


def model_alias(path: str) -> str:
    """The name a model file is known by: its file name without ``.gguf``."""
    base = os.path.basename(path.rstrip("/"))
    return base[:-5] if base.lower().endswith(".gguf") else base


def model_names(path: str) -> tuple[str, str]:
    """Every name a configured model at ``path`` answers to: its alias, then its path."""
    return (model_alias(path), path)


def names_model(requested: str, path: str) -> bool:
    """Whether ``requested`` names the configured model at ``path``."""
    return requested in model_names(path)
