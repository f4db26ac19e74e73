"""The brain's state as snapshot records: one vocabulary, one goal record."""

from __future__ import annotations

import dataclasses
import json

import pytest

from llmo.brain import summary, view
from llmo.brain.commands import WriteFile
from llmo.brain.state import BATCH_TRANSITIONS, TASK_TRANSITIONS, WORKER_TRANSITIONS
from llmo.cli.status_cmd import worker_json
from llmo.proto.messages import GoalInfo, SnapshotReply, SnapshotRequest
from llmo.proto.states import BATCH_STATES, PRESENCES, TASK_STATES
from tests.brain_fixtures import Rig
from tests.test_brain_goal import run

pytestmark = pytest.mark.timeout(30)


def test_the_lifecycle_tables_name_the_protocols_states():
    assert tuple(TASK_TRANSITIONS) == TASK_STATES
    assert tuple(BATCH_TRANSITIONS) == BATCH_STATES
    assert set(WORKER_TRANSITIONS) == set(PRESENCES)


def test_view_and_summary_give_the_same_goal_record():
    rig = Rig()
    batch_id = run(rig, lambda a: not a.task_id.endswith("_c"))
    batch = rig.state.batches[batch_id]
    shown = view.batch_view(batch).goal
    assert shown is not None and shown.state == "reached" and shown.rounds == 2
    data = summary.run_summary(batch, rig.now)
    assert data["goal"] == shown.to_wire()
    assert list(data["goal"]) == [f.name for f in dataclasses.fields(GoalInfo)]
    written = [
        c for c in rig.commands if isinstance(c, WriteFile) and c.path.endswith("RUN_SUMMARY.json")
    ]
    assert json.loads(written[-1].text)["goal"] == shown.to_wire()
    rig.msg(SnapshotRequest(), src="tui-1")
    (snapshot_batch,) = rig.of(SnapshotReply)[-1].batches
    assert snapshot_batch.goal == shown


def test_status_json_keeps_its_shape():
    rig = Rig()
    rig.worker("w")
    rig.msg(SnapshotRequest(), src="tui-1")
    (worker,) = rig.of(SnapshotReply)[-1].workers
    out = worker_json(worker)
    assert out["gpu"] == {}  # no telemetry reported yet
    assert out["name"] == "w" and out["state"] == "cold" and out["attempts"] == []
    assert {"role", "presence", "slots", "slots_free", "vram_budget_mb", "tok_s"} <= set(out)


def test_the_worker_view_carries_its_host_pid_and_endpoint_from_registration():
    from llmo.proto.messages import Register

    rig = Rig()
    rig.msg(
        Register(role="worker", slots=2, pid=4242, host="rig-a", endpoint="http://rig-a:8081/v1"),
        src="w",
    )
    shown = view.worker_view(rig.state.workers["w"])
    assert (shown.host, shown.pid, shown.endpoint) == ("rig-a", 4242, "http://rig-a:8081/v1")
    assert shown.to_wire()["host"] == "rig-a"


def test_a_worker_from_an_older_snapshot_gets_an_empty_host():
    import pickle

    from llmo.brain.state import Worker

    worker = Worker(name="w", host="rig-a", endpoint="http://rig-a:8081/v1")
    reduced = worker.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    _, slots = reduced[2]
    older = {k: v for k, v in slots.items() if k not in ("host", "endpoint")}
    back = Worker.__new__(Worker)
    back.__setstate__((None, older))
    assert (back.name, back.host, back.endpoint) == ("w", "", "")
    assert view.worker_view(back).host == ""
    assert pickle.loads(pickle.dumps(worker)).host == "rig-a"


def test_snapshot_tasks_name_their_dependencies_but_items_leave_them_to_their_template():
    rig = Rig()
    batch_id = run(rig, lambda a: not a.task_id.endswith("_c"))
    batch = rig.state.batches[batch_id]
    rig.msg(SnapshotRequest(batch_id=batch_id), src="tui-1")
    tasks = {t.id: t for t in rig.of(SnapshotReply)[-1].tasks}
    assert tasks["report"].deps == batch.tasks["report"].deps != ()
    item = tasks["validate_2a"]
    assert item.template and item.deps == ()
    assert tasks[item.template].deps == batch.tasks[item.template].deps
