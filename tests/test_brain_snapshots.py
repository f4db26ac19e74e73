"""Snapshots: when they are due (a fake clock), written by a child while the journal
goes on, installed only once complete, and every older snapshot format still read."""

from __future__ import annotations

import os
import pickle
import zlib

import pytest

import llmo.brain.journal as journal_module
import llmo.brain.snapshot as snapshot_module
from llmo.brain.journal import Journal, load_snapshot_file, read_records
from llmo.brain.snapshot import SNAPSHOT_HEADER, SNAPSHOT_MAGIC, SnapshotPolicy, snapshot_bytes
from llmo.brain.trace import replay_lines
from tests.test_brain_journal import fold, recorded_run, recover, summary

pytestmark = pytest.mark.timeout(60)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def jump(self, seconds: float) -> None:
        self.now += seconds


def test_the_policy_counts_records_bytes_and_time():
    policy = SnapshotPolicy(records=100, size=10_000, interval_s=60.0)
    assert policy.due(0, 0, 3600.0) is None  # nothing written: nothing to snapshot
    assert policy.due(99, 9_999, 59.9) is None
    assert "100 records" in (policy.due(100, 0, 0.0) or "")
    assert "10000 journal bytes" in (policy.due(1, 10_000, 0.0) or "")
    assert "60 s" in (policy.due(1, 10, 60.0) or "")


def journaled(path: str, policy: SnapshotPolicy, clock: FakeClock, *, fork: bool, step_s=1.0):
    """Journal the recorded run as the brain's loop does, asking the policy after each
    event; returns the journal (open), the run and the state folded so far."""
    rig = recorded_run()
    journal = Journal(path, fsync="never", policy=policy, fork=fork)
    state = journal.recover()
    from llmo.brain.core import step

    for now, event in rig.events:
        state, _ = step(state, event, now)
        journal.append(now, event)
        journal.commit()
        clock.jump(step_s)
        journal.maybe_snapshot(state, clock())
    return journal, rig, state


def test_a_snapshot_is_due_by_time_on_a_fake_clock(tmp_path):
    clock = FakeClock()
    path = str(tmp_path / "j")
    policy = SnapshotPolicy(records=10**9, size=10**12, interval_s=30.0)
    journal, rig, state = journaled(path, policy, clock, fork=False, step_s=0.0)
    assert journal.snapshots == 0  # the clock stood still: never due
    clock.jump(29.0)
    assert not journal.maybe_snapshot(state, clock())
    clock.jump(1.0)
    assert journal.maybe_snapshot(state, clock())
    assert journal.snapshots == 1 and journal.since_snapshot == 0
    clock.jump(3600.0)
    assert not journal.maybe_snapshot(state, clock())  # nothing written since
    journal.close()
    assert load_snapshot_file(path + ".snap").events == len(rig.events)
    assert summary(recover(path)) == summary(rig.state)


def test_a_snapshot_is_due_by_records_and_the_tail_stays_bounded(tmp_path):
    clock = FakeClock()
    path = str(tmp_path / "j")
    policy = SnapshotPolicy(records=20, size=10**12, interval_s=10**9)
    journal, rig, _ = journaled(path, policy, clock, fork=False)
    assert journal.snapshots == len(rig.events) // 20
    assert len(read_records(path)[1]) == journal.since_snapshot < 20
    journal.close()
    assert summary(recover(path)) == summary(rig.state)


def test_a_forked_writer_does_not_hold_the_journal_back(tmp_path):
    clock = FakeClock()
    path = str(tmp_path / "j")
    policy = SnapshotPolicy(records=25, size=10**12, interval_s=10**9)
    journal, rig, state = journaled(path, policy, clock, fork=True)
    journal.wait_snapshot()
    assert journal.snapshots >= 1
    snap = load_snapshot_file(path + ".snap")
    # The journal starts where the snapshot ends and holds every record after it,
    # those written while the child was writing included.
    base, records, _ = read_records(path)
    assert base == snap.events and base + len(records) == len(rig.events)
    assert journal.since_snapshot == len(records)
    journal.close()
    recovered = Journal(path)
    again = recovered.recover()
    assert recovered.recovery is not None
    assert recovered.recovery.snapshot_events == snap.events
    assert recovered.recovery.replayed == len(records)
    recovered.close()
    assert summary(again) == summary(state) == summary(rig.state)
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_a_snapshot_written_but_not_installed_is_never_trusted(tmp_path):
    """A brain killed while its child writes: the partial file is removed at the next
    start, and the old snapshot plus the whole journal give the state."""
    clock = FakeClock()
    path = str(tmp_path / "j")
    journal, rig, _ = journaled(path, SnapshotPolicy(records=10**9), clock, fork=False)
    partial = f"{path}.snap.tmp-999999"
    with open(partial, "wb") as handle:
        handle.write(snapshot_bytes(fold(rig.events[:5]))[:100])  # cut short
    journal.close()
    assert summary(recover(path)) == summary(rig.state)
    assert not os.path.exists(partial)


def test_a_failed_writer_keeps_every_record_and_retries_later(tmp_path, monkeypatch, caplog):
    def disk_full(handle, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module, "write_snapshot", disk_full)
    clock = FakeClock()
    path = str(tmp_path / "j")
    policy = SnapshotPolicy(records=10, size=10**12, interval_s=10**9, retry_s=1000.0)
    journal, rig, state = journaled(path, policy, clock, fork=True, step_s=0.0)
    journal.wait_snapshot()
    assert journal.snapshots == 0 and not journal.snapshot_writing
    assert "snapshot writer" in caplog.text and "keeps every record" in caplog.text
    assert not journal.maybe_snapshot(state, clock())  # not before retry_s
    assert not journal.snapshot_writing
    journal.close()
    assert not os.path.exists(path + ".snap")
    assert len(read_records(path)[1]) == len(rig.events)
    assert summary(recover(path)) == summary(rig.state)
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


@pytest.mark.parametrize("version", [1, 2])
def test_older_snapshots_are_still_read(tmp_path, version):
    rig = recorded_run()
    state = fold(rig.events)
    body = pickle.dumps((version, state), protocol=pickle.HIGHEST_PROTOCOL)
    if version == 2:
        body = SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, 2, len(body), zlib.crc32(body)) + body
    path = str(tmp_path / "j")
    with open(path + ".snap", "wb") as handle:
        handle.write(body)
    loaded = load_snapshot_file(path + ".snap")
    assert summary(loaded) == summary(rig.state) and loaded.events == state.events


def test_tasks_in_a_snapshot_keep_every_field(tmp_path):
    rig = recorded_run()
    state = fold(rig.events)
    path = str(tmp_path / "s.snap")
    with open(path, "wb") as handle:
        handle.write(snapshot_bytes(state))
    loaded = load_snapshot_file(path)
    for batch in state.batches.values():
        for task in batch.tasks.values():
            other = loaded.batches[batch.id].tasks[task.id]
            for name in snapshot_module.TASK_FIELDS:
                assert getattr(other, name) == getattr(task, name), (task.id, name)


def test_a_task_field_unknown_to_this_version_is_dropped_and_a_missing_one_defaulted():
    fields = snapshot_module.TASK_FIELDS
    values = {name: None for name in fields}
    values.update(id="t", command="c", spec=None, state="done", attempts=2)
    names = (*[n for n in fields if n != "tokens"], "from_a_later_version")
    task = snapshot_module._task_run(names, (*[values[n] for n in names[:-1]], 1))
    assert task.id == "t" and task.attempts == 2 and task.tokens == 0


def test_replay_reads_a_journal_with_a_snapshot(tmp_path):
    clock = FakeClock()
    path = str(tmp_path / "j")
    journal, _, _ = journaled(path, SnapshotPolicy(records=30), clock, fork=False)
    journal.close()
    lines = list(replay_lines(path))
    assert lines[0].startswith("(from the snapshot: ")
    assert sum(1 for line in lines if line.startswith("+")) == len(read_records(path)[1])
