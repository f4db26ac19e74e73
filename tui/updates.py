"""The small messages the feed hands the app: plain frozen dataclasses.

The feed thread never touches Textual objects; it builds one ``Update`` at a
time from everything heard since the previous one, with the high-rate parts
already coalesced (the latest heartbeat per worker, the latest progress per
attempt), and posts it only once the app has taken the previous one. So the
app's queue holds at most one update, whatever the link delivers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmo.proto.messages import (
    BatchEvent,
    Heartbeat,
    PeerDown,
    PeerUp,
    SnapshotReply,
    SupervisorReport,
    TaskProgress,
)

LinkState = Literal["connecting", "live", "no_brain", "down"]


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """How the monitor's link to the rig stands.

    ``connecting``: no snapshot yet. ``live``: snapshot taken, publications
    flowing. ``no_brain``: the broker answers but no brain is connected.
    ``down``: nothing published for a while and snapshot requests unanswered;
    ``since`` is when the monitor last heard anything. ``retry_at`` is when
    the next snapshot request goes out (0 when none is waiting).
    """

    state: LinkState = "connecting"
    since: float = 0.0
    detail: str = ""
    retry_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ActionResult:
    """The answer to an operator action (cancel, drain, load, unload: the brain's;
    restart: ``llmo up``'s supervisor's)."""

    label: str
    ok: bool
    text: str


@dataclass(frozen=True, slots=True)
class Update:
    """Everything the feed heard since its previous update, in the order to apply.

    ``snapshots`` come first (a full one, then any narrowed to one batch, as
    ``(batch_id, reply)`` with ``""`` for the full one), then ``events`` in
    publication order, then the latest
    ``heartbeats`` and ``progress``, and the latest ``supervisor`` report of
    ``llmo up`` (its children; None when none was heard). ``oldest_ts`` / ``newest_ts`` are the
    send times of the oldest and newest publication in it (for lag figures).
    """

    snapshots: tuple[tuple[str, SnapshotReply], ...] = ()
    events: tuple[BatchEvent, ...] = ()
    heartbeats: tuple[Heartbeat, ...] = ()
    progress: tuple[TaskProgress, ...] = ()
    peers: tuple[PeerUp | PeerDown, ...] = ()
    link: LinkStatus | None = None
    results: tuple[ActionResult, ...] = ()
    received: int = 0
    oldest_ts: float = 0.0
    newest_ts: float = 0.0
    dropped_events: int = 0
    notes: tuple[str, ...] = ()
    supervisor: SupervisorReport | None = None
