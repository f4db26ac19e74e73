"""A full disk under the rig folder is a state of the brain, not a crash.

A real ``llmo up`` rig whose rig folder (the brain's journal) is a small
tmpfs (its logs folder bind-mounted from ordinary disk, so they stay
readable). The tmpfs is filled with a file; then:

- ``llmo submit`` is refused with ``disk_full``, and that plan never runs,
  not even once space is back;
- ``llmo status`` answers and says the brain is in ``disk_full``;
- the brain neither crashes nor restarts while the disk stays full, and a
  brain killed then (restarted by ``llmo up``) comes up in ``disk_full``
  without a crash loop;
- once the file is deleted the brain resumes by itself, without a restart,
  and a batch then completes with each task recorded once.

Root may mount a tmpfs; elsewhere the test is skipped, saying why.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from llmo.brain.commands import AppendLines, WriteFile
from llmo.brain.core import step
from llmo.brain.events import Tick
from llmo.brain.journal import Journal, read_bytes, scan
from llmo.brain.service import BrainService
from llmo.proto.errors import ErrorCode
from llmo.proto.messages import BRAIN, Error, PlanSubmit
from tests.e2e_fixtures import Rig, Submitted, llmo_argv
from tests.faults.counting import counting_plan, lines
from tests.faults.disks import fill, mount, mount_tmpfs, unmount
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(240)

TASKS = ["a1", "a2", "b1"]


def three_tasks(root: Path, name: str, sleep_s: float = 0.2) -> Path:
    """a1 and a2, then b1 after both."""
    first = [("a1", sleep_s), ("a2", sleep_s)]
    return counting_plan(root, name, [(first, "none"), ([("b1", sleep_s)], "a1, a2")])


@pytest.fixture
def small_rig(tmp_path: Path) -> Iterator[tuple[Rig, Path]]:
    """A rig whose rig folder is a 2 MiB tmpfs (logs on ordinary disk)."""
    rig_dir, logs = tmp_path / "rig", tmp_path / "logs"
    rig_dir.mkdir()
    logs.mkdir()
    mount_tmpfs(rig_dir, "2m")
    mounted = [rig_dir]
    rig = None
    try:
        (rig_dir / "logs").mkdir()
        done = mount("--bind", str(logs), str(rig_dir / "logs"))
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount the logs folder: {done.stderr.strip()}")
        mounted.append(rig_dir / "logs")
        rig = Rig(tmp_path, workers=1)
        rig.wait_ready()
        rig.children()
        yield rig, rig_dir
    finally:
        if rig is not None:
            left = rig.stop()
            print(rig.logs())
        for path in reversed(mounted):
            unmount(path)
    assert not left, left


def status(rig: Rig) -> dict:
    done = rig.llmo("status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def disk_full_said(rig: Rig) -> str:
    """What ``llmo status`` says of the brain's disk ("" too while no brain answers)."""
    done = rig.llmo("status", "--json")
    return json.loads(done.stdout).get("disk_full", "") if done.returncode == 0 else ""


def test_full_rig_folder_refuses_work_then_resumes(small_rig, fault_table) -> None:
    rig, rig_dir = small_rig
    refused_plan = three_tasks(rig.plans_dir, "refused")
    later_plan = three_tasks(rig.plans_dir, "later")
    brain = rig.children()["brain"]

    filler = fill(rig_dir)
    # The journal's last page may still take a few records: the workers' heartbeats
    # (journaled like every message) use it up.
    full = wait_for(lambda: disk_full_said(rig), 30, "llmo status to report disk_full")
    assert "brain.journal" in full, full
    submitted = rig.llmo("submit", str(refused_plan))
    assert submitted.returncode == 2, (submitted.stdout, submitted.stderr)
    assert "disk_full" in submitted.stderr, submitted.stderr
    assert "will not run" in submitted.stderr, submitted.stderr
    text = rig.llmo("status")
    assert text.returncode == 0 and "disk full" in text.stdout, text.stdout
    assert rig.children().get("brain") == brain, "the brain restarted while the disk was full"

    # A brain started on a full disk comes up in disk_full and stays up.
    restarted = rig.wait_restarted("brain", rig.kill("brain"))
    wait_for(lambda: disk_full_said(rig), 30, "the new brain to report disk_full")
    wait_for(lambda: "cannot write its journal" in rig.logs(), 30, "the disk_full line in the log")
    submitted = rig.llmo("submit", str(refused_plan))
    assert "disk_full" in submitted.stderr, submitted.stderr
    assert rig.children().get("brain") == restarted, "the brain crash-looped on a full disk"

    filler.unlink()
    wait_for(lambda: not status(rig).get("disk_full"), 30, "the brain to resume by itself")
    assert rig.children().get("brain") == restarted, "the brain restarted to resume"
    done = rig.llmo("submit", str(later_plan), "--watch", "--json", timeout=150)
    run = Submitted(done.returncode, done.stdout, done.stderr)
    assert run.returncode == 0 and run.state == "complete", run

    runs = Counter(lines(later_plan / "runs.txt"))
    starts = Counter(lines(later_plan / "starts.txt"))
    never = lines(refused_plan / "starts.txt")
    plans = [b["plan"] for b in status(rig)["batches"]]
    print(f"runs: {dict(runs)}; starts: {dict(starts)}; refused plan ran: {never}; {plans}")
    lost = len(set(TASKS) - set(runs))
    rerun = sum(n - 1 for n in starts.values() if n > 1)
    fault_table.row(
        "rig folder full: submit refused, brain killed while full",
        lost=lost,
        rerun=rerun,
        note=f"refused plan ran {len(never)} tasks",
    )
    assert never == [], "a submit refused with disk_full ran later"
    assert "refused" not in plans, plans
    assert runs == Counter(TASKS) and starts == Counter(TASKS), (runs, starts)


def test_tasks_that_finish_while_full_are_recorded_once(small_rig, fault_table) -> None:
    rig, rig_dir = small_rig
    plan = three_tasks(rig.plans_dir, "during", sleep_s=3)
    brain = rig.children()["brain"]
    submit = rig.submit_background(plan)
    wait_for(lambda: len(lines(plan / "starts.txt")) == 2, 60, "a1 and a2 to start")
    filler = fill(rig_dir)
    wait_for(lambda: disk_full_said(rig), 30, "llmo status to report disk_full")
    wait_for(lambda: len(lines(plan / "runs.txt")) == 2, 60, "a1 and a2 to finish while full")
    still_full = disk_full_said(rig)
    filler.unlink()
    out, err = submit.communicate(timeout=120)
    run = Submitted(submit.returncode, out, err)
    runs, starts = Counter(lines(plan / "runs.txt")), Counter(lines(plan / "starts.txt"))
    print(f"runs: {dict(runs)}; starts: {dict(starts)}")
    fault_table.row(
        "rig folder full while tasks finish",
        lost=len(set(TASKS) - set(runs)),
        rerun=sum(n - 1 for n in starts.values() if n > 1),
        note="results kept in memory, recorded once space returned",
    )
    assert still_full, "the brain left disk_full before space was freed"
    assert rig.children().get("brain") == brain, "the brain restarted"
    assert run.returncode == 0 and run.state == "complete", run
    assert runs == Counter(TASKS) and starts == Counter(TASKS), (runs, starts)
    assert all(row["attempts"] == 1 for row in run.rows().values()), run.rows()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted at the end."""
    folder = tmp_path / "small"
    folder.mkdir()
    mount_tmpfs(folder, "1m")
    try:
        yield folder
    finally:
        unmount(folder)


def test_a_record_cut_short_by_a_full_disk_is_rolled_back(small_fs, fault_table) -> None:
    journal = Journal(str(small_fs / "brain.journal"), fsync="batch")
    state = journal.recover()
    committed = 0
    for n in range(20):
        journal.append(float(n), Tick())
        journal.commit()
        state, _ = step(state, Tick(), float(n))
        committed += 1
    filler = fill(small_fs)
    with pytest.raises(OSError) as failed:
        for n in range(20, 100_000):
            journal.append(float(n), Tick())
            journal.commit()
            committed += 1
    assert failed.value.errno == errno.ENOSPC
    rolled = journal.rollback()
    found = scan(read_bytes(journal.path))
    print(f"committed {committed} records; the journal holds {len(found.records)} after rollback")
    assert found.torn is None and not found.damage, found
    assert len(found.records) == committed == rolled.events
    assert os.path.getsize(journal.path) == journal.committed

    filler.unlink()
    journal.append(1e6, Tick())
    journal.commit()
    journal.close()
    again = Journal(journal.path)
    assert again.recover().events == committed + 1
    again.close()
    fault_table.row(
        "journal append on a full disk",
        lost=committed - len(found.records),
        rerun=0,
        note="half-written record cut, journal replays clean",
    )


def test_a_snapshot_without_space_leaves_the_journal_whole(small_fs, fault_table) -> None:
    journal = Journal(str(small_fs / "brain.journal"), fsync="batch")
    state = journal.recover()
    for n in range(50):
        journal.append(float(n), Tick())
        state, _ = step(state, Tick(), float(n))
    journal.commit()
    filler = fill(small_fs)
    with pytest.raises(OSError):
        journal.snapshot(state)
    left = sorted(p.name for p in small_fs.iterdir())
    assert left == ["brain.journal", "brain.journal.lock", "filler"], left
    filler.unlink()
    journal.append(50.0, Tick())  # the journal is still open, and still the one
    journal.commit()
    journal.close()
    again = Journal(journal.path)
    events = again.recover().events
    again.close()
    print(f"events after a failed snapshot: {events}")
    assert events == 51
    fault_table.row("snapshot on a full disk", lost=51 - events, rerun=0, note="put off")


def test_history_files_wait_for_space(small_fs, tmp_path, fault_table) -> None:
    service = BrainService("tcp://127.0.0.1:9", str(tmp_path / "brain.journal"))
    history = small_fs / "plan" / "history" / "b1"
    history.mkdir(parents=True)
    filler = fill(small_fs)
    summary = "# Run summary\n" + "all tasks done\n" * 2000
    service.execute(AppendLines(str(history / "events.jsonl"), ('{"event": "a"}',) * 500))
    service.execute(WriteFile(str(history / "RUN_SUMMARY.md"), summary))
    service.execute(WriteFile(str(history / "ESCALATION.md"), "escalate\n" * 1000))
    assert len(service.unwritten) == 3, service.unwritten
    assert not (history / "RUN_SUMMARY.md").exists()
    service.retry_unwritten()  # still full: kept
    assert len(service.unwritten) == 3

    filler.unlink()
    service.retry_unwritten()
    left = sorted(p.name for p in history.iterdir())
    print(f"history after space returned: {left}")
    assert service.unwritten == []
    assert (history / "RUN_SUMMARY.md").read_text() == summary
    assert (history / "ESCALATION.md").exists()
    assert (history / "events.jsonl").read_text().splitlines() == ['{"event": "a"}'] * 500
    assert left == ["ESCALATION.md", "RUN_SUMMARY.md", "events.jsonl"], left
    fault_table.row(
        "history files on a full disk",
        lost=3 - len([n for n in left if not n.endswith(".tmp")]),
        rerun=0,
        note="events, RUN_SUMMARY, ESCALATION written once space returned",
    )


class StandInBrain:
    """A ``brain`` on a real broker that answers each ``plan_submit`` with ``answer``
    (an ``Error``), or not at all (``answer`` None)."""

    def __init__(self, client, answer) -> None:
        self.client, self.answer = client, answer
        self.seen: list[PlanSubmit] = []
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while self.running:
            self.client.tick()
            msg = self.client.recv(timeout=0.05)
            if isinstance(msg, PlanSubmit):
                self.seen.append(msg)
                if self.answer is not None:
                    self.client.send(replace(self.answer, dst=msg.src, reply_to=msg.id))

    def stop(self) -> None:
        self.running = False
        self.thread.join(5)


@pytest.mark.parametrize("answered", [True, False], ids=["disk_full", "no_answer"])
def test_submit_says_what_is_known(answered, running_broker, client_factory, tmp_path) -> None:
    plan = three_tasks(tmp_path, "p")
    detail = "the brain cannot write its journal /rig/brain.journal (No space left on device)"
    answer = Error(code=ErrorCode.DISK_FULL, detail=detail) if answered else None
    brain = StandInBrain(client_factory(BRAIN, running_broker.endpoint), answer)
    try:
        running_broker.wait_heard(BRAIN)
        done = subprocess.run(
            [
                *llmo_argv(),
                "submit",
                str(plan),
                "--broker",
                running_broker.endpoint,
                "--timeout",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        brain.stop()
    print(done.stderr)
    assert len(brain.seen) == 1, brain.seen
    if answered:
        assert done.returncode == 2, done
        assert "disk_full" in done.stderr and "will not run" in done.stderr, done.stderr
    else:
        assert done.returncode == 3, done
        assert "may have been accepted" in done.stderr and "llmo status" in done.stderr
        assert "no answer from the broker" not in done.stderr, done.stderr


FAULTS = [
    "rig folder (journal) full while tasks finish",
    "journal append on a full disk",
    "snapshot on a full disk",
    "history files (events, RUN_SUMMARY, ESCALATION) on a full disk",
    "rig folder (journal) full: submit while full, brain restart while full, space freed",
]
