"""tok/s is defined once (proto.rates): RUN_SUMMARY, --watch and the monitor agree."""

from __future__ import annotations

import io

from llmo.brain import summary
from llmo.cli.watch import BatchView, Screen, follow, render
from llmo.proto.messages import SnapshotReply, SnapshotRequest, TaskProgress
from llmo.proto.rates import attempt_tok_s, batch_tok_s, tok_s_text
from llmo.tui.model import Model
from llmo.tui.updates import Update
from tests.brain_fixtures import Rig, plan_text


def test_the_definitions():
    assert attempt_tok_s(120, 4.0) == 30.0 and attempt_tok_s(5, 0.0) == 0.0
    assert batch_tok_s(120, 10.0) == 12.0 and batch_tok_s(5, 0.0) == 0.0
    assert tok_s_text(1156, 100.0) == "1156 tokens in 100.0 s, 11.6 tok/s"


def finished_run() -> tuple[Rig, str]:
    """Two llm tasks at once, each 5 s of generation, the batch 20 s of wall time."""
    rig = Rig()
    rig.worker("w", state="hot", model="m", slots=2)
    reply = rig.submit(
        plan_text("a | llm | a | none | llm_model=m", "b | llm | b | none | llm_model=m")
    )
    batch_id = reply.batch_id
    first, second = rig.assigns()
    rig.start(first)
    rig.start(second)
    rig.wait(20.0)
    rig.done(first, tokens=300, tok_s=attempt_tok_s(300, 5.0))
    rig.done(second, tokens=200, tok_s=attempt_tok_s(200, 5.0))
    assert rig.state.batches[batch_id].state == "complete"
    return rig, batch_id


def test_run_summary_watch_and_monitor_print_the_same_figure():
    rig, batch_id = finished_run()
    batch = rig.state.batches[batch_id]
    wall = batch.finished_at - batch.created_at
    expected = tok_s_text(500, wall)
    assert wall > 0 and "500 tokens" in expected

    data = summary.run_summary(batch, rig.now)
    assert data["tok_s"] == round(batch_tok_s(500, wall), 2)
    assert expected in summary.to_markdown(batch, data)

    rig.msg(SnapshotRequest(batch_id=batch_id), src="tui-1")
    snap: SnapshotReply = rig.of(SnapshotReply)[-1]
    (info,) = snap.batches
    assert info.tokens == 500

    class Quiet:
        def recv(self, timeout=None):
            return None

    view = follow(BatchView(batch_id), Quiet(), lambda: snap, Screen(io.StringIO()))
    assert expected in render(view, 0.0, 0.0, wall_now=rig.now)[0]

    model = Model()
    model.apply(Update(snapshots=(("", snap),)), rig.now)
    assert expected in model.batch_rate_text(batch_id, rig.now)


def test_a_running_batch_counts_the_tokens_so_far_over_its_wall_time_so_far():
    rig = Rig()
    rig.worker("w", state="hot", model="m", slots=2)
    batch_id = rig.submit(plan_text("a | llm | a | none | llm_model=m")).batch_id
    (a,) = rig.assigns()
    rig.start(a)
    rig.msg(SnapshotRequest(batch_id=batch_id), src="tui-1")
    snap = rig.of(SnapshotReply)[-1]
    view = BatchView(batch_id)
    view.seed(snap)
    created = snap.batches[0].created_at
    msg = TaskProgress(batch_id=batch_id, task_id="a", attempt_id=a.attempt_id, tokens=90)
    view.progress(msg, now=1.0)
    assert tok_s_text(90, 30.0) in render(view, 1.0, 0.0, wall_now=created + 30.0)[0]
