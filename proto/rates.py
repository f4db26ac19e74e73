"""Tokens per second: one definition, used by every view of a run.

Theory of operation
-------------------
Two figures, and only two, are called tok/s:

- **an attempt's**: the tokens it generated over its generation time, the
  worker meter's ``gen_s`` (the union of its requests' lifetimes, so waiting
  for a slot or a shell step does not count). Workers report it in
  ``TaskProgress.tok_s`` while the attempt runs and in ``TaskDone.tok_s``.
- **a batch's**: the tokens its tasks generated (those that succeeded, as
  counted in ``BatchInfo.tokens`` and RUN_SUMMARY's ``tokens``) over its wall
  time, from its submission to its end (or to now while it runs). This is
  what the batch delivered: ``RUN_SUMMARY`` (``tok_s``), ``submit --watch`` /
  ``watch`` and the monitor all print it with ``tok_s_text``, so the same
  data gives the same figure everywhere.

A worker's heartbeat rate (its recent generation rate, summed over the rig
in the monitor's header as "generating now") is a rate at one moment, not a
batch's figure.
"""

from __future__ import annotations


def attempt_tok_s(tokens: int, gen_s: float) -> float:
    """An attempt's rate: generated tokens over generation time (0 before any)."""
    return tokens / gen_s if gen_s > 0 else 0.0


def batch_tok_s(tokens: int, wall_s: float) -> float:
    """A batch's rate: its generated tokens over its wall time (0 before any)."""
    return tokens / wall_s if wall_s > 0 else 0.0


def batch_wall_s(created_at: float, finished_at: float | None, now: float) -> float:
    """A batch's wall time: submission to end, or to ``now`` while it runs."""
    return max(0.0, (finished_at or now) - created_at)


def tok_s_text(tokens: int, wall_s: float) -> str:
    """How every view prints a batch's figure: ``1234 tokens in 56.7 s, 21.8 tok/s``."""
    return f"{tokens} tokens in {wall_s:.1f} s, {batch_tok_s(tokens, wall_s):.1f} tok/s"
