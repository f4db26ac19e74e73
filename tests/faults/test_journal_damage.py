"""A damaged journal: detected, refused, checked, repaired; a torn tail is still cut silently.

Process level: a real broker (in a thread), ``llmo brain`` as a subprocess,
fake workers over real sockets. A 20-task batch runs to the end, the brain
stops, and one byte in the middle of its journal is changed. The brain then
refuses to start (exit 2, naming the journal and the offset) and leaves the
file as it is; ``llmo journal check`` reports the span; ``llmo journal
repair`` salvages every record after it, and the brain starts on the repaired
journal with the batch finished. A journal whose last record is cut short (a
crash mid-write) is recovered as before, with a log line.

Unit level: resynchronisation on record boundaries with damage at the start,
in the middle, at the end, and in a length field.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from llmo.brain.journal import (
    HEADER,
    Journal,
    JournalDamaged,
    JournalError,
    repair,
    scan,
)
from llmo.brain.trace import replay_lines
from llmo.proto.client import Client
from llmo.proto.messages import PlanAccepted, PlanSubmit, SnapshotReply, SnapshotRequest
from tests.brain_fixtures import FakeWorker, plan_text
from tests.e2e_fixtures import llmo_argv, start_brain
from tests.test_brain_journal import fold, recorded_run, summary, write
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

TICK_RECORD = b"\x92\xa1t\xcb"  # msgpack ["t", <float64>]: a tick, in either journal format
EXIT_S = 30.0  # bounds a hang: a refusal comes before anything starts
TASKS = 20


@pytest.fixture
def broker(broker_factory):
    return broker_factory(interval=0.3).broker


def snapshot(client: Client, batch_id: str) -> SnapshotReply | None:
    reply = client.request(SnapshotRequest(dst="brain", batch_id=batch_id), timeout=1.0)
    return reply if isinstance(reply, SnapshotReply) and reply.batches else None


def stop(brain: subprocess.Popen) -> None:
    if brain.poll() is None:
        brain.send_signal(signal.SIGTERM)
        try:
            brain.wait(10)
        except subprocess.TimeoutExpired:
            brain.kill()
            brain.wait(5)


def llmo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*llmo_argv(), *args], capture_output=True, text=True, timeout=EXIT_S, check=False
    )


def finished_batch(broker, tmp_path: Path) -> tuple[Path, str, Path]:
    """A real brain runs a 20-task batch to the end and stops: its journal, batch, log."""
    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    (plan_dir / "plan.md").write_text(
        plan_text(*[f"t{i} | cpu | work {i} | none" for i in range(TASKS)])
    )
    journal = tmp_path / "rig" / "brain.journal"
    log = tmp_path / "brain.log"
    endpoint = broker.router_endpoint
    brain = start_brain(endpoint, journal, log)
    workers = [FakeWorker(f"fw-{i}", endpoint, slots=2, run_s=0.05).start() for i in range(2)]
    tool = Client("submit-test", endpoint)
    try:

        def accepted() -> PlanAccepted | None:
            reply = tool.request(PlanSubmit(dst="brain", plan_path=str(plan_dir)), timeout=1.0)
            return reply if isinstance(reply, PlanAccepted) else None

        batch_id = wait_for(accepted, 20, "the brain to accept the plan").batch_id

        def ended() -> SnapshotReply | None:
            snap = snapshot(tool, batch_id)
            return snap if snap and snap.batches[0].state != "running" else None

        snap = wait_for(ended, 60, lambda: f"the batch to end\n{log.read_text()[-3000:]}")
        assert snap.batches[0].counts == {"done": TASKS}
    finally:
        tool.close()
        for w in workers:
            w.stop()
        stop(brain)
    return journal, batch_id, log


def finished_after_restart(
    broker, journal: Path, batch_id: str, log: Path, while_running=None
) -> SnapshotReply:
    brain = start_brain(broker.router_endpoint, journal, log)
    tool = Client("status-test", broker.router_endpoint)
    try:
        snap = wait_for(
            lambda: snapshot(tool, batch_id),
            30,
            lambda: f"the restarted brain to answer\n{log.read_text()[-3000:]}",
        )
        if while_running is not None:
            while_running(brain)
        return snap
    finally:
        tool.close()
        stop(brain)


def test_a_bad_byte_mid_journal_is_refused_checked_and_repaired(broker, tmp_path, fault_table):
    journal, batch_id, log = finished_batch(broker, tmp_path)
    data = bytearray(journal.read_bytes())
    # One bad byte in a tick record a third of the way in, well before the batch ended.
    where = data.index(TICK_RECORD, len(data) // 3)
    data[where + 3] = 0xC1  # the float's type byte: no longer a float
    journal.write_bytes(bytes(data))
    damaged = bytes(data)

    refused = subprocess.run(
        [*llmo_argv(), "brain", "--broker", broker.router_endpoint, "--journal", str(journal)],
        capture_output=True,
        text=True,
        timeout=EXIT_S,
        check=False,
    )
    said = refused.stdout + refused.stderr
    print(said)
    assert refused.returncode == 2, said
    assert str(journal) in said and "llmo journal repair" in said, said
    offset = int(re.search(r"offset (\d+)", said).group(1))
    assert where - HEADER.size <= offset <= where, (offset, where)
    assert journal.read_bytes() == damaged  # not truncated, not touched

    check = llmo("journal", "check", str(journal))
    print(check.stdout, check.stderr)
    assert check.returncode == 1
    assert f"offset {offset}" in check.stdout and "valid records" in check.stdout

    replay = llmo("replay", str(journal))
    assert f"offset {offset}" in replay.stdout + replay.stderr
    assert f"event batch_completed {batch_id}" in replay.stdout  # after the damage: shown

    fixed = llmo("journal", "repair", str(journal))
    print(fixed.stdout, fixed.stderr)
    assert fixed.returncode == 0, fixed.stderr
    assert "lost 1 record" in fixed.stdout and f"offset {offset}" in fixed.stdout
    kept = [p for p in journal.parent.iterdir() if p.name.startswith("brain.journal.damaged-")]
    assert len(kept) == 1 and kept[0].read_bytes() == damaged
    assert llmo("journal", "check", str(journal)).returncode == 0

    snap = finished_after_restart(broker, journal, batch_id, log)
    lost = TASKS - snap.batches[0].counts.get("done", 0)
    fault_table.row("one bad byte mid-journal, then repair", lost=lost, rerun=0)
    assert snap.batches[0].state == "complete" and snap.batches[0].counts == {"done": TASKS}


def test_a_torn_last_record_is_still_cut_with_a_log_line(broker, tmp_path, fault_table):
    journal, batch_id, log = finished_batch(broker, tmp_path)
    found = scan(journal.read_bytes())
    last = found.offsets[-1]
    end = os.path.getsize(journal)
    with open(journal, "r+b") as handle:
        handle.truncate(last + (end - last) // 2)  # the last record, cut halfway

    def repair_is_refused(brain: subprocess.Popen) -> None:
        size = os.path.getsize(journal)
        refused = llmo("journal", "repair", str(journal))
        assert refused.returncode == 1 and f"pid {brain.pid}" in refused.stderr, refused.stderr
        assert not list(journal.parent.glob("brain.journal.damaged-*"))
        assert os.path.getsize(journal) >= size

    snap = finished_after_restart(broker, journal, batch_id, log, repair_is_refused)
    lost = TASKS - snap.batches[0].counts.get("done", 0)
    fault_table.row("journal's last record torn", lost=lost, rerun=0)
    assert snap.batches[0].state == "complete" and snap.batches[0].counts == {"done": TASKS}
    assert f"torn last record at offset {last}" in log.read_text()


# --- resynchronisation, on journals written by the pure core ---------------------------------


def journal_bytes(tmp_path) -> tuple[str, bytes, list]:
    rig = recorded_run()
    path = str(tmp_path / "j")
    write(path, rig).close()
    with open(path, "rb") as handle:
        return path, handle.read(), rig.events


def spoil(path: str, data: bytes, at: int) -> bytes:
    spoiled = bytearray(data)
    spoiled[at] ^= 0xFF
    with open(path, "wb") as handle:
        handle.write(spoiled)
    return bytes(spoiled)


def test_a_clean_journal_scans_clean(tmp_path):
    _, data, rig_events = journal_bytes(tmp_path)
    found = scan(data)
    assert found.damage == [] and found.torn is None and found.base == 0
    assert len(found.records) == len(rig_events)


@pytest.mark.parametrize("part", ["payload", "length", "checksum", "magic"])
def test_damage_in_the_middle_is_one_span_and_every_later_record_is_found(tmp_path, part):
    path, data, rig_events = journal_bytes(tmp_path)
    found = scan(data)
    index = len(found.offsets) // 2
    start = found.offsets[index]
    at = {"payload": HEADER.size + 2, "length": 10, "checksum": 14, "magic": 0}[part]
    spoiled = spoil(path, data, start + at)
    damaged = scan(spoiled)
    assert [(d.offset, d.length) for d in damaged.damage] == [
        (start, found.offsets[index + 1] - start)
    ]
    assert damaged.torn is None and damaged.lost == 1
    assert len(damaged.records) == len(found.records) - 1
    with pytest.raises(JournalDamaged, match=f"offset {start}"):
        Journal(path).recover()
    with open(path, "rb") as handle:
        assert handle.read() == spoiled  # refused: nothing cut

    report = repair(path)
    assert report.lost_records == 1 and report.spans == [(start, found.offsets[index + 1] - start)]
    with open(report.kept, "rb") as handle:
        assert handle.read() == spoiled
    journal = Journal(path)
    state = journal.recover()
    journal.close()
    expected = fold(rig_events[: index - 1] + rig_events[index:])  # record 0 is the header
    assert summary(state) == summary(expected)


def test_a_length_field_that_points_past_the_end_is_not_a_torn_tail(tmp_path):
    path, data, _ = journal_bytes(tmp_path)
    found = scan(data)
    start = found.offsets[3]
    spoiled = bytearray(data)
    spoiled[start + 10 : start + 14] = (len(data) * 4).to_bytes(4, "big")
    with open(path, "wb") as handle:
        handle.write(spoiled)
    damaged = scan(bytes(spoiled))
    assert damaged.torn is None
    assert [(d.offset, d.length) for d in damaged.damage] == [(start, found.offsets[4] - start)]
    with pytest.raises(JournalDamaged):
        Journal(path).recover()


def test_damage_at_the_start_loses_the_header_and_keeps_the_rest(tmp_path):
    path, data, rig_events = journal_bytes(tmp_path)
    found = scan(data)
    damaged = scan(spoil(path, data, 5))
    assert damaged.base is None and damaged.torn is None
    assert [(d.offset, d.length) for d in damaged.damage] == [(0, found.offsets[1])]
    assert len(damaged.records) == len(rig_events)
    report = repair(path)
    assert report.lost_records == 0 and report.header_lost
    journal = Journal(path)
    assert summary(journal.recover()) == summary(fold(rig_events))
    journal.close()


def test_damage_in_the_last_record_is_a_torn_tail_cut_by_recovery(tmp_path):
    path, data, rig_events = journal_bytes(tmp_path)
    found = scan(data)
    last = found.offsets[-1]
    damaged = scan(spoil(path, data, last + HEADER.size + 1))
    assert damaged.damage == [] and damaged.torn is not None
    assert (damaged.torn.offset, damaged.torn.length) == (last, len(data) - last)
    journal = Journal(path)
    state = journal.recover()
    journal.close()
    assert state.events == len(rig_events) - 1
    assert os.path.getsize(path) == last


def test_a_damaged_snapshot_is_detected(tmp_path):
    rig = recorded_run()
    path = str(tmp_path / "j")
    journal = write(path, rig)
    journal.snapshot(fold(rig.events))
    journal.close()
    with open(path + ".snap", "r+b") as handle:
        handle.seek(os.path.getsize(path + ".snap") // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(JournalDamaged, match="snapshot"):
        Journal(path).recover()
    with pytest.raises(JournalError, match="snapshot"):
        repair(path)


def test_replay_of_a_damaged_journal_shows_both_sides_and_the_damage(tmp_path):
    path, data, _ = journal_bytes(tmp_path)
    found = scan(data)
    tick = next(i for i, record in enumerate(found.records) if record[0] == "t")
    start = found.offsets[tick + 1]  # offsets[0] is the header's
    spoil(path, data, start + HEADER.size + 1)
    text = "\n".join(replay_lines(path))
    assert f"journal damaged at offset {start}" in text and "1 record lost" in text
    before, after = text.split(f"offset {start}")
    assert "recv plan.submit" in before and "event batch_completed" in after


def test_a_journal_a_live_brain_holds_is_not_repaired(tmp_path):
    path, data, _ = journal_bytes(tmp_path)
    found = scan(data)
    spoil(path, data, found.offsets[5] + HEADER.size + 1)
    from llmo.brain.lockfile import FileLock

    lock = FileLock.acquire(path + ".lock", {"broker": "tcp://10.0.0.1:5555"})
    try:
        with pytest.raises(JournalError, match=f"pid {os.getpid()}"):
            repair(path)
    finally:
        lock.release()


def test_a_journal_written_before_framing_is_read_and_rewritten_framed(tmp_path):
    import msgpack

    from llmo.brain.journal import record_of

    rig = recorded_run()
    path = str(tmp_path / "j")
    with open(path, "wb") as handle:  # the unframed format: a bare msgpack stream
        handle.write(msgpack.packb(["h", 0], use_bin_type=True))
        for now, event in rig.events:
            handle.write(msgpack.packb(record_of(now, event), use_bin_type=True))
    journal = Journal(path)
    assert summary(journal.recover()) == summary(rig.state)
    journal.close()
    with open(path, "rb") as handle:
        found = scan(handle.read())
    assert not found.legacy and found.base == 0 and len(found.records) == len(rig.events)


def test_a_file_with_no_valid_record_is_refused_not_replaced(tmp_path):
    path = str(tmp_path / "j")
    garbage = bytes(range(256)) * 4
    with open(path, "wb") as handle:
        handle.write(garbage)
    with pytest.raises(JournalDamaged, match="no valid record"):
        Journal(path).recover()
    with open(path, "rb") as handle:
        assert handle.read() == garbage
    check = llmo("journal", "check", path)
    assert check.returncode == 1 and "no valid record" in check.stdout
