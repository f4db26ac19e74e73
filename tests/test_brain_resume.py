"""Resume and batch ids (``RUN_MODE``, ``RESUME_BATCH_ID``, ``BATCH_ID``), in the core.

Plans are written in the original system's format (``plan_text``); the fake
clock ``Rig`` answers plan reads, and the batch folder a submission names
from ``Rig.folders`` (what ``brain.prior.read_prior`` would find there).
"""

from __future__ import annotations

import json
from collections import Counter

from llmo.proto.messages import PlanAccepted, PlanRejected, TaskAssign
from tests.brain_fixtures import Rig, plan_text

PLAN = plan_text(
    "prepare | cpu | echo prepare",
    "extract | cpu | echo extract | prepare",
    "report | cpu | echo report | extract",
    "index | cpu | echo index | prepare",
)


def run_counting(rig: Rig, fail: set[str] = frozenset()) -> Counter[str]:
    """Run every batch to its end; how many attempts each task id got."""
    runs: Counter[str] = Counter()

    def outcome(a: TaskAssign):
        runs[a.task_id] += 1
        return 1 if a.task_id in fail else "done"

    rig.auto(outcome)
    return runs


def failed_batch(rig: Rig) -> str:
    rig.worker("w1", slots=2)
    accepted = rig.submit(PLAN)
    assert isinstance(accepted, PlanAccepted)
    runs = run_counting(rig, fail={"extract"})
    assert runs == {"prepare": 1, "index": 1, "extract": 3}
    assert rig.state.batches[accepted.batch_id].state == "failed"
    return accepted.batch_id


def test_resume_of_a_failed_batch_runs_only_what_did_not_succeed() -> None:
    rig = Rig()
    batch_id = failed_batch(rig)
    first = rig.state.batches[batch_id]
    history = first.history_path

    first_attempts = {a.attempt_id for a in rig.assigns()}
    sent = len(rig.sent)
    resumed = rig.submit(PLAN, config={"RUN_MODE": "resume", "RESUME_BATCH_ID": batch_id})

    assert isinstance(resumed, PlanAccepted), resumed
    assert resumed.batch_id == batch_id
    assert resumed.history_path == history
    runs = run_counting(rig)
    assert runs == {"extract": 1, "report": 1}  # prepare and index are kept
    # Workers answer an attempt id they have seen with its old result: never reuse one.
    assert not first_attempts & {a.attempt_id for a in rig.assigns(sent)}
    batch = rig.state.batches[batch_id]
    assert batch.state == "complete"
    assert rig.states(batch_id) == dict.fromkeys(("prepare", "extract", "report", "index"), "done")
    assert batch.variables["BATCH_ID"] == batch_id
    assert batch.variables["BATCH_PATH"] == history
    assert batch.resumed_from == "brain"


def test_resume_from_the_folder_of_a_batch_the_brain_does_not_hold() -> None:
    rig = Rig()
    rig.worker("w1", slots=2)
    folder = "/plans/p/history/20261201_192245"
    rig.folders[folder] = {"exists": True, "done": ["prepare", "index"], "sources": ["x"]}

    resumed = rig.submit(PLAN, config={"RUN_MODE": "resume", "RESUME_BATCH_ID": "20261201_192245"})

    assert isinstance(resumed, PlanAccepted), resumed
    assert resumed.history_path == folder
    assert run_counting(rig) == {"extract": 1, "report": 1}
    assert rig.state.batches["20261201_192245"].state == "complete"


def test_resume_keeps_the_foreach_items_that_succeeded() -> None:
    rig = Rig()
    rig.worker("w1", slots=2)
    text = plan_text(
        "items | cpu | echo {ITEM.id} | none | foreach={BATCH_PATH}/m.json:items",
        "report | cpu | echo report | items",
    )
    rig.manifests["items"] = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    rig.folders["/plans/p/history/b1"] = {"exists": True, "done": ["items_a", "items_c"]}

    resumed = rig.submit(text, config={"RESUME_BATCH_ID": "b1"})

    assert isinstance(resumed, PlanAccepted), resumed
    assert run_counting(rig) == {"items_b": 1, "report": 1}
    assert rig.state.batches["b1"].state == "complete"


def test_resume_with_nothing_left_completes_at_once() -> None:
    rig = Rig()
    rig.worker("w1")
    rig.folders["/plans/p/history/b1"] = {
        "exists": True,
        "done": ["prepare", "extract", "report", "index"],
    }
    resumed = rig.submit(PLAN, config={"RUN_MODE": "resume", "RESUME_BATCH_ID": "b1"})
    assert isinstance(resumed, PlanAccepted), resumed
    assert rig.state.batches["b1"].state == "complete"
    assert rig.assigns() == []


def test_resume_of_a_batch_that_does_not_exist_is_refused() -> None:
    rig = Rig()
    refused = rig.submit(PLAN, config={"RUN_MODE": "resume", "RESUME_BATCH_ID": "nope"})
    assert isinstance(refused, PlanRejected)
    assert "no batch folder /plans/p/history/nope to resume" in refused.errors[0]
    assert rig.state.batches == {}


def test_resume_of_a_batch_the_brain_still_runs_is_refused() -> None:
    rig = Rig()
    accepted = rig.submit(PLAN)  # no worker: it stays running
    refused = rig.submit(PLAN, config={"RUN_MODE": "resume", "RESUME_BATCH_ID": accepted.batch_id})
    assert isinstance(refused, PlanRejected)
    assert f"batch {accepted.batch_id} is still running in the brain" in refused.errors[0]
    assert rig.state.batches[accepted.batch_id].state == "running"
    assert len(rig.state.batches) == 1


def test_batch_id_names_the_folder_and_a_second_submit_with_it_is_refused() -> None:
    rig = Rig()
    rig.worker("w1", slots=2)
    accepted = rig.submit(PLAN, config={"BATCH_ID": "my_data_batch"})
    assert isinstance(accepted, PlanAccepted), accepted
    assert accepted.batch_id == "my_data_batch"
    assert accepted.history_path == "/plans/p/history/my_data_batch"
    assert rig.state.batches["my_data_batch"].variables["BATCH_ID"] == "my_data_batch"

    again = rig.submit(PLAN, config={"BATCH_ID": "my_data_batch"})
    assert isinstance(again, PlanRejected)
    assert (
        "BATCH_ID my_data_batch: the batch folder /plans/p/history/my_data_batch already "
        in (again.errors[0])
    )
    assert "RUN_MODE 'resume'" in again.errors[0]

    rig.folders["/plans/p/history/on_disk"] = {"exists": True, "done": []}
    on_disk = rig.submit(PLAN, config={"BATCH_ID": "on_disk"})
    assert isinstance(on_disk, PlanRejected)
    assert "already exists" in on_disk.errors[0]
    assert set(rig.state.batches) == {"my_data_batch"}


def test_bad_run_mode_and_unsafe_batch_ids_are_refused_with_the_allowed_values() -> None:
    rig = Rig()
    bogus = rig.submit(PLAN, config={"RUN_MODE": "bogus"})
    assert isinstance(bogus, PlanRejected)
    assert bogus.errors == (
        "/plans/p/plan.md:0: RUN_MODE is 'bogus'; use one of fresh, resume (or leave it out)",
    )
    for bad in ("../escape", "a/b", ".hidden", "", "x" * 101):
        if not bad:
            continue
        refused = rig.submit(PLAN, config={"BATCH_ID": bad})
        assert isinstance(refused, PlanRejected), bad
        assert f"BATCH_ID is {bad!r}: a batch id is" in refused.errors[0]
    contradiction = rig.submit(PLAN, config={"RUN_MODE": "fresh", "RESUME_BATCH_ID": "b1"})
    assert isinstance(contradiction, PlanRejected)
    assert "RUN_MODE is 'fresh' but RESUME_BATCH_ID is 'b1'" in contradiction.errors[0]
    no_id = rig.submit(PLAN, config={"RUN_MODE": "resume"})
    assert isinstance(no_id, PlanRejected)
    assert "no RESUME_BATCH_ID names the batch" in no_id.errors[0]
    assert rig.state.batches == {}


def test_read_prior_reads_both_event_files_and_the_summary(tmp_path) -> None:
    from llmo.brain.prior import read_prior

    folder = tmp_path / "b1"
    (folder / "logs").mkdir(parents=True)
    llmo_events = [
        {"event": "task_succeeded", "task_id": "a", "name": "a"},
        {"event": "task_failed", "task_id": "b"},
    ]
    (folder / "batch_events.jsonl").write_text(
        "\n".join(json.dumps(e) for e in llmo_events) + "\nnot json\n"
    )
    original = [{"event": "task_succeeded", "task_name": "c", "success": True}]
    (folder / "logs" / "batch_events.jsonl").write_text(json.dumps(original[0]) + "\n")
    summary = {"tasks": [{"id": "d", "state": "done"}, {"id": "b", "state": "failed"}]}
    (folder / "RUN_SUMMARY.json").write_text(json.dumps(summary))

    found = read_prior(str(folder))

    assert found["exists"] is True
    assert found["done"] == ["a", "c", "d"]
    assert found["sources"] == ["batch_events.jsonl", "logs/batch_events.jsonl", "RUN_SUMMARY.json"]
    assert read_prior(str(tmp_path / "missing"))["exists"] is False


def test_a_goal_driven_plan_is_not_resumed_and_says_why() -> None:
    rig = Rig()
    rig.folders["/plans/p/history/b1"] = {"exists": True, "done": ["discover"]}
    text = plan_text(
        "discover | cpu | discover",
        "validate | cpu | validate {ITEM.id} | discover | foreach={BATCH_PATH}/c.json:items",
        goal="- **type**: target_count\n- **target**: 2\n- **tracked_task**: validate",
    )
    refused = rig.submit(text, config={"RESUME_BATCH_ID": "b1"})
    assert isinstance(refused, PlanRejected)
    assert "a goal-driven plan cannot be resumed here" in refused.errors[0]
    assert rig.state.batches == {}


def test_what_the_folder_held_is_journaled_with_the_plan_text() -> None:
    import msgpack

    from llmo.brain.events import PlanLoaded
    from llmo.brain.journal import event_of, record_of

    loaded = PlanLoaded("r1", PLAN, "", {"exists": True, "done": ["prepare"], "sources": []})
    record = msgpack.unpackb(msgpack.packb(record_of(5.0, loaded)), strict_map_key=False)
    assert event_of(record) == (5.0, loaded)
    plain = PlanLoaded("r2", PLAN)
    assert event_of(record_of(6.0, plain)) == (6.0, plain)  # older journals: no prior


def test_the_shell_reads_the_named_folder_with_the_plan(tmp_path) -> None:
    from llmo.brain.commands import ReadPlan
    from llmo.brain.service import read_plan

    plan = tmp_path / "p"
    (plan / "history" / "b1").mkdir(parents=True)
    (plan / "plan.md").write_text(PLAN)
    line = json.dumps({"event": "task_succeeded", "task_id": "prepare"})
    (plan / "history" / "b1" / "batch_events.jsonl").write_text(line + "\n")

    loaded = read_plan(ReadPlan("r1", str(plan), str(plan / "history" / "b1")))
    assert loaded.text == PLAN
    assert loaded.prior is not None and loaded.prior["done"] == ["prepare"]
    missing = read_plan(ReadPlan("r2", str(plan), str(plan / "history" / "b2")))
    assert missing.prior == {"exists": False, "done": [], "sources": [], "problems": []}
    assert read_plan(ReadPlan("r3", str(plan))).prior is None
