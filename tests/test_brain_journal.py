"""The journal: append, replay, torn tails, snapshots and the crash windows between them."""

from __future__ import annotations

import os

import pytest

from llmo.brain.core import new_state, step
from llmo.brain.events import Received
from llmo.brain.journal import Journal, JournalError, JournalLocked, events, read_records
from llmo.brain.trace import replay_lines
from tests.brain_fixtures import Rig, plan_text

pytestmark = pytest.mark.timeout(60)


def recorded_run() -> Rig:
    rig = Rig()
    rig.worker("w", slots=2)
    rig.manifests["each"] = [{"id": str(i)} for i in range(5)]
    rig.submit(
        plan_text(
            "a | cpu | a",
            "each | cpu | run {ITEM.id} | a | foreach=m.json:items",
            "z | cpu | z | each",
        )
    )
    rig.auto(lambda a: 3 if a.task_id == "each_2" and a.attempt_id.endswith(":1") else "done")
    return rig


def write(path: str, rig: Rig, upto: int | None = None) -> Journal:
    journal = Journal(path, fsync="never")
    journal.recover()
    for now, event in rig.events[:upto]:
        raw = None
        journal.append(now, event, raw)
    journal.commit()
    return journal


def fold(items) -> object:
    state = new_state()
    for now, event in items:
        state, _ = step(state, event, now)
    return state


def recover(path: str):
    journal = Journal(path)
    try:
        return journal.recover()
    finally:
        journal.close()


def summary(state) -> dict:
    return {
        b.id: (b.state, {t.id: (t.state, t.attempts) for t in b.tasks.values()})
        for b in state.batches.values()
    }


def test_replay_gives_the_same_state(tmp_path):
    rig = recorded_run()
    path = str(tmp_path / "j")
    write(path, rig).close()
    assert len(list(events(path))) == len(rig.events)
    state = recover(path)
    assert summary(state) == summary(rig.state)
    assert state.rev == rig.state.rev and state.events == rig.state.events


def test_a_torn_last_record_is_cut_off(tmp_path):
    rig = recorded_run()
    path = str(tmp_path / "j")
    write(path, rig).close()
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size - 3)
    journal = Journal(path)
    state = journal.recover()
    assert state.events == len(rig.events) - 1
    journal.close()
    _, records, good = read_records(path)
    assert good == os.path.getsize(path) and len(records) == len(rig.events) - 1


@pytest.mark.parametrize("crash", ["none", "before_journal_swap"])
def test_snapshot_then_more_events(tmp_path, crash):
    rig = recorded_run()
    path = str(tmp_path / "j")
    half = len(rig.events) // 2
    journal = write(path, rig, half)
    state = fold(rig.events[:half])
    if crash == "before_journal_swap":
        # the snapshot is in place but the old journal (with those events) remains
        with open(path, "rb") as handle:
            old = handle.read()
        journal.snapshot(state)
        journal.close()
        with open(path, "wb") as handle:
            handle.write(old)
        journal = Journal(path, fsync="never")
        journal.recover()
    else:
        journal.snapshot(state)
    for now, event in rig.events[half:]:
        journal.append(now, event)
    journal.close()
    recovered = recover(path)
    assert summary(recovered) == summary(rig.state)
    assert recovered.events == len(rig.events)


def test_missing_events_are_refused(tmp_path):
    rig = recorded_run()
    path = str(tmp_path / "j")
    journal = write(path, rig, 10)
    journal.snapshot(fold(rig.events[:10]))
    journal.close()
    os.remove(path + ".snap")
    with pytest.raises(JournalError, match="missing"):
        recover(path)


def test_replay_tool_prints_the_decisions(tmp_path):
    rig = recorded_run()
    path = str(tmp_path / "j")
    write(path, rig).close()
    lines = list(replay_lines(path, quiet_ticks=True))
    text = "\n".join(lines)
    assert "recv plan.submit" in text
    assert "send task.assign" in text and "to w" in text
    assert "event task_succeeded" in text and "event batch_completed" in text
    assert "recv task.failed" in text and "event task_retried" in text


def test_received_messages_keep_their_wire_bytes(tmp_path):
    rig = recorded_run()
    path = str(tmp_path / "j")
    journal = Journal(path)
    journal.recover()
    now, event = next((n, e) for n, e in rig.events if isinstance(e, Received))
    from llmo.proto.codec import encode

    journal.append(now, event, encode(event.msg))
    journal.close()
    assert list(events(path)) == [(now, event)]


def test_interval_policy_hands_every_commit_to_the_os_and_fsyncs_at_most_per_interval(
    tmp_path, monkeypatch
):
    from llmo.brain import journal as journal_module

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    rig = recorded_run()
    path = str(tmp_path / "brain.journal")
    journal = Journal(path)  # the default policy
    assert journal.fsync == "interval"
    journal.recover()
    synced.clear()
    journal._synced_at = float("inf")  # as if it had just synced: none due for a while
    for now, event in rig.events:
        journal.append(now, event)
        journal.commit()
        # What a kill -9 would leave: every committed record is readable already.
        assert len(read_records(path)[1]) == journal.since_snapshot
    assert synced == [] and journal.unsynced  # many commits, no fsync yet
    journal._synced_at = 0.0  # the interval has passed
    journal.sync_due()
    assert len(synced) == 1 and not journal.unsynced
    journal.close()
    assert summary(recover(path)) == summary(fold(rig.events))


def test_a_held_journal_is_refused_naming_its_holder_before_anything_is_read(tmp_path):
    rig = recorded_run()
    path = str(tmp_path / "brain.journal")
    holder = Journal(path)
    holder.recover({"broker": "tcp://10.0.0.1:5555"})
    for now, event in rig.events:
        holder.append(now, event)
    holder.commit()
    with open(path, "ab") as handle:
        handle.write(b"\x93")  # a torn record the refused journal must not cut off
    size = os.path.getsize(path)

    second = Journal(path)
    with pytest.raises(JournalLocked) as refused:
        second.recover({"broker": "tcp://10.0.0.2:5555"})

    assert str(refused.value) == (
        f"journal {path} is in use by brain pid {os.getpid()} (broker tcp://10.0.0.1:5555)"
    )
    assert os.path.getsize(path) == size and second.handle is None and second.lock is None
    # reading takes no lock: the replay tool works beside the live brain
    assert any("event batch_completed" in line for line in replay_lines(path))
    holder.close()
    assert summary(recover(path)) == summary(rig.state)  # closed: free for the next brain


def test_the_lock_outlives_a_snapshot_that_replaces_the_journal_file(tmp_path):
    rig = recorded_run()
    path = str(tmp_path / "brain.journal")
    holder = write(path, rig)
    holder.snapshot(fold(rig.events))
    with pytest.raises(JournalLocked, match=f"pid {os.getpid()}"):
        Journal(path).recover()
    holder.close()
    assert recover(path).events == len(rig.events)


def test_a_journal_that_cannot_be_recovered_lets_go_of_its_lock(tmp_path):
    rig = recorded_run()
    path = str(tmp_path / "j")
    journal = write(path, rig, 10)
    journal.snapshot(fold(rig.events[:10]))
    journal.close()
    os.remove(path + ".snap")
    failed = Journal(path)
    with pytest.raises(JournalError, match="missing"):
        failed.recover()
    assert failed.lock is None
    with pytest.raises(JournalError, match="missing"):  # not JournalLocked
        recover(path)
