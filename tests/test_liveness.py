"""Liveness as a pure tracker, driven by a fake clock."""

from __future__ import annotations

from llmo.broker.liveness import Liveness
from llmo.proto.vocab import HEARTBEAT_EXPIRY_S, HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS


def test_expiry_is_interval_times_liveness():
    expiry = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
    assert Liveness().expiry == HEARTBEAT_EXPIRY_S == expiry == 3.0


def test_untracked_until_first_heartbeat():
    live = Liveness()
    assert live.seen("submit-1", 0.0, heartbeat=False) is False
    assert live.expire(100.0) == []
    assert live.seen("gpu-1", 0.0, heartbeat=True) is True
    assert live.seen("gpu-1", 1.0, heartbeat=False) is False  # any message counts


def test_down_after_expiry_once_then_up_again():
    live = Liveness(interval=1.0, liveness=3)
    live.seen("gpu-1", 10.0, heartbeat=True)
    assert live.expire(13.0) == []  # exactly at expiry: still alive
    assert live.expire(13.5) == [("gpu-1", 3.5)]
    assert live.expire(20.0) == []  # reported once
    assert live.seen("gpu-1", 21.0, heartbeat=False) is True
    assert live.expire(23.0) == []


def test_long_dead_peers_are_forgotten():
    live = Liveness(interval=1.0, liveness=3, forget_after=60.0)
    live.seen("tool-1", 0.0, heartbeat=True)
    assert live.expire(4.0) == [("tool-1", 4.0)]
    live.expire(100.0)
    assert "tool-1" not in live.last_seen and "tool-1" not in live.down
