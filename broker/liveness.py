"""Peer liveness, as a pure tracker: time arrives as an argument.

A peer is tracked from its first heartbeat on (short-lived tools that never
heartbeat are routed but not watched). After that, any message from it counts
as a sign of life. A tracked peer silent for ``interval x liveness`` seconds
(by default ``proto.vocab.HEARTBEAT_EXPIRY_S``) is declared down; when it
speaks again it is up again.

The tracker judges only silence it was awake to hear: when two checks are
further apart than the expiry (the broker was paused, the host slept, the
clock jumped), messages that queued meanwhile may not be read yet, so every
tracked peer's silence counts from the end of that gap, less all but
``JUMP_INTERVALS`` of its expiry; a peer heard within those intervals never
went down. ``jumped`` holds the last such gap, for the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmo.proto.vocab import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS

JUMP_INTERVALS = 2  # heartbeat intervals a peer has to be heard after the broker stood still


@dataclass(slots=True)
class Liveness:
    interval: float = HEARTBEAT_INTERVAL_S
    liveness: int = HEARTBEAT_LIVENESS
    forget_after: float = 3600.0  # a peer down this long is dropped from memory
    last_seen: dict[str, float] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    last_check: float = 0.0
    jumped: float = 0.0  # the last gap between checks that was past the expiry

    @property
    def expiry(self) -> float:
        return self.interval * self.liveness

    def seen(self, peer: str, now: float, *, heartbeat: bool) -> bool:
        """Record a message from ``peer``. True when this makes it (again) up."""
        if peer not in self.last_seen and not heartbeat:
            return False
        came_up = peer not in self.last_seen or peer in self.down
        self.last_seen[peer] = now
        self.down.discard(peer)
        return came_up

    def expire(self, now: float) -> list[tuple[str, float]]:
        """Peers that have just gone silent past the expiry, with their silence."""
        gone = []
        stale = []
        gap = now - self.last_check if self.last_check else 0.0
        self.last_check = max(self.last_check, now)
        if gap > self.expiry:
            self.jumped = gap
            floor = now - self.interval * max(0, self.liveness - JUMP_INTERVALS)
            for peer, seen in self.last_seen.items():
                if peer not in self.down:
                    self.last_seen[peer] = max(seen, floor)
        for peer, seen in self.last_seen.items():
            silent = now - seen
            if peer not in self.down:
                if silent > self.expiry:
                    self.down.add(peer)
                    gone.append((peer, silent))
            elif silent > self.forget_after:
                stale.append(peer)
        for peer in stale:
            self.forget(peer)
        return gone

    def forget(self, peer: str) -> None:
        self.last_seen.pop(peer, None)
        self.down.discard(peer)
