"""Admission: whether a worker takes an assignment, and why not.

Theory of operation
-------------------
An assignment is checked in two steps before anything is spawned; a refusal
is answered at once with ``TaskFailed`` and the reason as its error.

1. The command policy (``policy_refusal``, with ``worker.policy.check``:
   plan roots, refused patterns, protected paths). A refusal names the
   rule, has reason ``policy`` (final: the brain does not retry it) and is
   written to the task's log when the log is itself allowed
   (``note_in_log``). A ``meta`` assignment skips it: its command is no
   shell text, and step 2 refuses it.
2. The worker's state (``refusal``, reason ``refused``: the brain may try
   again elsewhere or later): no figures a brain never sends (a negative
   VRAM claim, a timeout or grace that is not a finite number), no ``meta``
   tasks (runtime control is the brain's, through ``ModelLoad`` and
   ``ModelUnload``), nothing while draining, GPU work not while constrained
   (nothing but ``cpu`` while critical), LLM work only with the named model
   hot, and every attempt within the free slots and the VRAM budget (the sum
   of the running attempts' ``vram_mb``).
"""

from __future__ import annotations

import logging
import math
import os

from llmo.proto.messages import TaskAssign
from llmo.proto.vocab import slot_free
from llmo.worker import policy
from llmo.worker.limits import Level
from llmo.worker.llm import Runtime
from llmo.worker.rules import Policy
from llmo.worker.shell import default_log_path, task_env

log = logging.getLogger("llmo.worker.admission")

GPU_CLASSES = frozenset({"script", "llm", "brain"})
LLM_CLASSES = frozenset({"llm", "brain"})


def policy_refusal(a: TaskAssign, rules: Policy, worker: str) -> str | None:
    """The error for an attempt the policy forbids (naming the rule), or None."""
    rule = policy.check(
        a.command,
        a.plan_path,
        a.batch_path,
        rules,
        log_path=a.log_path or default_log_path(a),
        env=task_env(a, base=os.environ),
    )
    return None if rule is None else f"refused by the policy of {worker}: {rule}"


def note_in_log(a: TaskAssign, rules: Policy, header: str, error: str) -> None:
    """Write a policy refusal to the task's log, when the policy allows that log."""
    log_path = a.log_path or default_log_path(a)
    if not policy.writable(log_path, rules):
        return
    try:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        with open(log_path, "a", encoding="utf-8", errors="replace") as f:
            f.write(f"{header}llmo: {error}\n")
    except OSError as exc:
        log.warning("cannot write the refusal to %s: %s", log_path, exc)


def refusal(
    a: TaskAssign,
    *,
    worker: str,
    level: Level,
    draining: bool,
    constraint: str,
    runtime: Runtime,
    slots: int,
    slots_used: int,
    budget_mb: int,
    vram_used: int,
    llm_used: int = 0,
) -> str | None:
    """Why ``worker``, in this state, does not take the assignment; None if it does."""
    cls = a.task_class
    why = absurd(a)
    if why:
        return why
    if cls == "meta":
        return (
            f"{worker} runs no meta tasks ({a.command!r}): the brain runs those "
            "itself, with ModelLoad and ModelUnload"
        )
    if draining:
        return f"{worker} is draining: it takes no new work"
    if level is Level.CRITICAL and cls != "cpu":
        return f"{worker} is {constraint}: all GPU work is stopped"
    if level is Level.CONSTRAINED and cls in GPU_CLASSES:
        return f"{worker} is {constraint}: it takes only cpu work"
    if cls in LLM_CLASSES:
        if runtime.state != "hot":
            return f"no model is hot on {worker} (runtime {runtime.state})"
        spec = runtime.spec
        if a.model and spec is not None and not spec.answers_to(a.model):
            return f"model {a.model!r} is not loaded on {worker} (hot: {runtime.model})"
    llm = cls == "llm"
    free = slot_free(
        llm=llm,
        slots=slots,
        llm_slots=runtime.slots,
        llm_used=llm_used,
        other_used=slots_used - llm_used,
    )
    if free <= 0:
        batched = f", {llm_used} of {runtime.slots} LLM sequences" if llm else ""
        return f"no free slot on {worker} ({slots_used} of {slots} in use{batched})"
    free = budget_mb - vram_used
    if a.vram_mb > free:
        return (
            f"VRAM budget of {worker} exceeded: the task needs {a.vram_mb} MB, "
            f"{free} MB of {budget_mb} MB are free"
        )
    return None


def absurd(a: TaskAssign) -> str:
    """Figures no brain sends: they would corrupt the budget or disarm the timers."""
    if a.vram_mb < 0:
        return f"vram_mb must not be negative, got {a.vram_mb}"
    for name in ("timeout_s", "grace_s"):
        value = getattr(a, name)
        if not math.isfinite(value) or value < 0:
            return f"{name} must be a finite number of seconds, at least 0, got {value}"
    return ""
