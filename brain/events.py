"""What the core consumes. Every event is journaled before its commands run.

``Received`` wraps a decoded message; ``Tick`` lets time pass (timeouts,
backoff, liveness, model policy); ``PlanLoaded`` and ``ManifestRead`` carry
what the shell read from the shared drive because the core asked
(``ReadPlan`` / ``ReadManifest``); ``Configure`` sets the settings, first in
every journal and again whenever the brain starts; ``Resumed`` marks a
restart from the journal; ``Stopped`` marks an orderly stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmo.proto.messages import Message


@dataclass(frozen=True, slots=True)
class Configure:
    settings: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Received:
    msg: Message


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class Resumed:
    """The brain restarted from its journal. Workers get a fresh expiry window
    (they could not reach the brain while it was down), and reads that were
    asked for but never answered are asked for again."""


@dataclass(frozen=True, slots=True)
class Stopped:
    """The brain is stopping in order (SIGTERM, Ctrl-C), ``why`` says how: every
    unfinished batch is marked interrupted (``batch_interrupted``, its summary
    rewritten) and resumes when the brain starts again from the journal."""

    why: str


@dataclass(frozen=True, slots=True)
class PlanLoaded:
    """The text of ``plan.md`` for a pending submission, or why it could not be read.

    ``prior`` answers a ``ReadPlan`` that named a batch folder: what
    ``brain.prior.read_prior`` found there (None when no folder was named)."""

    request_id: str
    text: str | None
    error: str = ""
    prior: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ManifestRead:
    """The items of a foreach source, or the reason there are none."""

    batch_id: str
    task_id: str
    items: tuple[object, ...] | None  # JSON values
    error: str = ""


Event = Configure | Received | Tick | Resumed | Stopped | PlanLoaded | ManifestRead
