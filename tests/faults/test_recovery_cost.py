"""Recovery cost: a brain killed with a large batch in its journal starts from its snapshot.

A real broker (in a thread), ``llmo brain`` as a subprocess and fake workers
over real sockets run a 20,000-item foreach batch to the end; the workers
stop, the brain's state of the batch is taken (a snapshot reply with every
task), and the brain is killed with SIGKILL. The restarted brain must load
its snapshot and replay only the journal written after it (bounded by the
snapshot policy, not by the length of the run), as its recovery log line
says, and answer with the same state of the batch, task for task.
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
from pathlib import Path

import pytest

from llmo.proto.client import Client
from llmo.proto.messages import PlanAccepted, PlanSubmit, SnapshotReply, SnapshotRequest
from tests.brain_fixtures import FakeWorker, plan_text
from tests.e2e_fixtures import start_brain
from tests.reporting import say
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

ITEMS = 20_000
RECOVERED = re.compile(
    r"brain: journal \S+ holds (\d+) events.*?: (?:a snapshot of (\d+) events \(\d+ bytes\) "
    r"loaded in \S+|no snapshot), (\d+) journal records replayed"
)
INSTALLED = re.compile(r"snapshot of (\d+) events installed .*?; (\d+) records since")


@pytest.fixture
def broker(broker_factory):
    return broker_factory(interval=0.3).broker


def batch_state(client: Client, batch_id: str) -> SnapshotReply | None:
    reply = client.request(SnapshotRequest(dst="brain", batch_id=batch_id), timeout=5.0)
    return reply if isinstance(reply, SnapshotReply) and reply.batches else None


def the_batch(reply: SnapshotReply, batch_id: str):
    return next(b for b in reply.batches if b.id == batch_id)


def test_a_killed_brain_recovers_from_its_snapshot_with_a_bounded_tail(
    broker, tmp_path: Path, request, fault_table
):
    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    items = ",".join(f'{{"id": "{i}"}}' for i in range(ITEMS))
    (plan_dir / "items.json").write_text(f'{{"items": [{items}]}}')
    (plan_dir / "plan.md").write_text(
        plan_text(f"each | cpu | run {{ITEM.id}} | none | foreach={plan_dir}/items.json:items")
    )
    journal = tmp_path / "rig" / "brain.journal"
    journal.parent.mkdir()
    log = tmp_path / "brain.log"
    endpoint = broker.router_endpoint
    brain = start_brain(endpoint, journal, log)
    workers = [FakeWorker(f"fw-{i}", endpoint, slots=64, run_s=0.0).start() for i in range(3)]
    tool = Client("recovery-test", endpoint)
    restarted: subprocess.Popen | None = None
    try:

        def accepted() -> PlanAccepted | None:
            reply = tool.request(PlanSubmit(dst="brain", plan_path=str(plan_dir)), timeout=2.0)
            return reply if isinstance(reply, PlanAccepted) else None

        batch_id = wait_for(accepted, 30, "the brain to accept the plan").batch_id

        def ended() -> SnapshotReply | None:
            reply = batch_state(tool, batch_id)
            return reply if reply and the_batch(reply, batch_id).state != "running" else None

        wait_for(ended, 240, lambda: f"the batch to end\n{log.read_text()[-3000:]}")
        for worker in workers:
            worker.stop()

        # No snapshot may be half-written when the brain is killed: a writer killed
        # with it is a different fault (covered by the unit tests), not this one.
        def settled() -> bool:
            text = log.read_text()
            return text.count("writing a snapshot") == len(INSTALLED.findall(text)) > 0

        wait_for(settled, 60, lambda: f"a snapshot to be installed\n{log.read_text()[-3000:]}")
        before = wait_for(lambda: batch_state(tool, batch_id), 30, "the batch's state")
        brain.send_signal(signal.SIGKILL)
        brain.wait(10)
        marker = len(log.read_text())

        restarted = start_brain(endpoint, journal, log)
        after = wait_for(
            lambda: batch_state(tool, batch_id),
            60,
            lambda: f"the restarted brain to answer\n{log.read_text()[marker:][-3000:]}",
        )
        text = log.read_text()
        found = RECOVERED.search(text, marker)
        assert found, f"no recovery line after the restart:\n{text[marker:][-3000:]}"
        events, snapshot_events, replayed = (int(g) if g else 0 for g in found.groups())
        installs = INSTALLED.findall(text[:marker])
        last_install_tail = int(installs[-1][1])

        from llmo.brain.snapshot import SnapshotPolicy

        bound = SnapshotPolicy().records + last_install_tail
        say(
            request.config,
            f"brain SIGKILL with {ITEMS} items journaled: {events} events, the snapshot held "
            f"{snapshot_events}, {replayed} records replayed (bound {bound}), "
            f"{len(installs)} snapshots written during the run",
        )
        assert snapshot_events > 0, "the restarted brain did not use a snapshot"
        assert snapshot_events + replayed == events
        assert replayed <= bound

        assert the_batch(after, batch_id) == the_batch(before, batch_id)
        assert after.tasks == before.tasks and len(after.tasks) == ITEMS
        runs = collections.Counter(a.rsplit(":", 1)[0] for w in workers for a in w.ran)
        done = {t.id for t in after.tasks if t.state == "done"}
        fault_table.row(
            f"brain SIGKILL with a {ITEMS}-item batch journaled",
            lost=ITEMS - len(done),
            rerun=sum(1 for n in runs.values() if n > 1),
            note=f"{replayed} of {events} records replayed",
        )
    finally:
        tool.close()
        for worker in workers:
            worker.stop()
        for proc in (brain, restarted):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


FAULTS = ["brain SIGKILL with a 20,000-item batch journaled: recovery from its snapshot"]
