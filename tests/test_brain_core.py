"""The brain's core, rule by rule, with a fake clock and simulated workers."""

from __future__ import annotations

import pytest

from llmo.brain.commands import AppendLines, Log, MakeDirs, WriteFile
from llmo.brain.config import BrainConfig
from llmo.brain.events import Received, Tick
from llmo.brain.state import TASK_TRANSITIONS, mermaid
from llmo.proto.messages import (
    Ack,
    BatchCancel,
    BatchEvent,
    PeerDown,
    PlanAccepted,
    PlanRejected,
    SnapshotReply,
    SnapshotRequest,
    TaskCancel,
    TaskDone,
)
from tests.brain_fixtures import Rig, plan_text

pytestmark = pytest.mark.timeout(30)


def errors(rig: Rig) -> list[str]:
    return [c.text for c in rig.commands if isinstance(c, Log) and c.level == "error"]


# --- submission -------------------------------------------------------------------


def test_submit_accepts_and_creates_history():
    rig = Rig()
    reply = rig.submit(plan_text("a | cpu | echo {BATCH_ID} {X}"), config={"X": "1"})
    assert isinstance(reply, PlanAccepted)
    assert reply.batch_id == "20231114_221320"
    assert reply.history_path == f"/plans/p/history/{reply.batch_id}"
    dirs = [c for c in rig.commands if isinstance(c, MakeDirs)]
    assert f"{reply.history_path}/logs" in dirs[0].paths
    assert rig.task(reply.batch_id, "a").command == f'echo {reply.batch_id} "${{LLMO_VAR_X}}"'
    assert rig.task(reply.batch_id, "a").env == {"LLMO_VAR_X": "1"}
    assert rig.task(reply.batch_id, "a").state == "ready"  # no worker yet


def test_second_batch_in_the_same_second_gets_a_suffix():
    rig = Rig()
    first = rig.submit(plan_text("a | cpu | true"))
    second = rig.submit(plan_text("a | cpu | true"))
    assert second.batch_id == first.batch_id + "_2"


def test_refusal_lists_every_error():
    rig = Rig()
    reply = rig.submit(plan_text("a | cpu | echo {NOPE} {ALSO}", "b | cpu | true | zzz"))
    assert isinstance(reply, PlanRejected)
    text = "\n".join(reply.errors)
    assert "NOPE" in text and "ALSO" in text and "zzz" in text
    assert all(e.startswith("/plans/p/plan.md:") for e in reply.errors)
    assert not rig.state.batches


def test_unreadable_plan_is_refused():
    rig = Rig()
    rig.plans.clear()
    rig.feed(
        Received(
            __import__("llmo.proto.messages", fromlist=["PlanSubmit"]).PlanSubmit(
                src="submit-1", dst="brain", id="r1", plan_path="/nowhere"
            )
        )
    )
    reply = rig.of(PlanRejected)[0]
    assert "/nowhere" in reply.errors[0]


# --- release and dispatch --------------------------------------------------------


def test_release_follows_dependencies():
    rig = Rig()
    rig.worker("w", slots=4)
    batch = rig.submit(plan_text("a | cpu | a", "b | cpu | b | a", "c | cpu | c | a, b")).batch_id
    assert [a.task_id for a in rig.assigns()] == ["a"]
    rig.start(rig.assigns()[0])
    rig.done(rig.assigns()[0])
    assert [a.task_id for a in rig.assigns()] == ["a", "b"]
    rig.done(rig.assigns()[1])
    assert [a.task_id for a in rig.assigns()] == ["a", "b", "c"]
    rig.done(rig.assigns()[2])
    assert rig.state.batches[batch].state == "complete"


def test_assignment_carries_what_the_worker_needs():
    rig = Rig(BrainConfig(class_timeouts={"cpu": 60.0}, grace_s=7.0))
    rig.worker("w")
    batch = rig.submit(plan_text("a | cpu | run it")).batch_id
    a = rig.assigns()[0]
    assert a.dst == "w" and a.command == "run it" and a.task_class == "cpu"
    assert a.batch_path == f"/plans/p/history/{batch}"
    assert a.log_path == f"/plans/p/history/{batch}/logs/a.log"
    assert a.plan_path == "/plans/p"
    assert a.timeout_s == 60.0 and a.grace_s == 7.0
    assert a.attempt_id == f"{batch}:a:1"


def test_credit_limits_assignments():
    rig = Rig()
    rig.worker("w", slots=2)
    rig.submit(plan_text(*[f"t{i} | cpu | true" for i in range(5)]))
    assert len(rig.assigns()) == 2
    rig.heartbeat("w")  # no credit freed by a heartbeat alone
    assert len(rig.assigns()) == 2
    rig.done(rig.assigns()[0])
    assert len(rig.assigns()) == 3


def test_script_tasks_need_a_cold_worker_with_vram():
    rig = Rig()
    rig.worker("hot", state="hot", model="m", vram=6000)
    rig.worker("small", vram=512)
    rig.submit(plan_text("s | script | run"))
    assert rig.assigns() == []
    rig.worker("big", vram=4096)
    assert [a.dst for a in rig.assigns()] == ["big"]
    assert rig.assigns()[0].vram_mb == 1024


def test_script_vram_estimate_is_respected():
    rig = Rig()
    rig.worker("w", vram=3000, slots=4)
    rig.submit(
        plan_text(*[f"s{i} | script | run | none | vram_estimate_mb=1500" for i in range(3)])
    )
    assert len(rig.assigns()) == 2  # 3000 MB holds two of 1500


def test_constrained_worker_gets_only_cpu():
    rig = Rig()
    rig.worker("w", slots=4)
    rig.heartbeat("w", state="constrained")
    rig.submit(plan_text("s | script | run", "c | cpu | run"))
    assert [a.task_id for a in rig.assigns()] == ["c"]


def test_brain_tasks_go_to_the_brain_worker():
    rig = Rig()
    rig.worker("gpu-1", state="hot", model="m")
    rig.worker("brain-llm", role="brain", gpus=(0, 3), state="hot", model="big")
    rig.submit(plan_text("think | brain | python think.py"))
    assert [a.dst for a in rig.assigns()] == ["brain-llm"]
    assert rig.assigns()[0].executor == "brain"


def test_llm_tasks_go_to_a_hot_worker_with_their_model():
    rig = Rig()
    rig.worker("other", state="hot", model="x")
    rig.worker("right", state="hot", model="m")
    rig.submit(plan_text("gen | llm | python gen.py | none | llm_model=m"))
    assert [(a.dst, a.model) for a in rig.assigns()] == [("right", "m")]


def test_loading_worker_never_gets_llm_work():
    rig = Rig()
    rig.worker("w")
    rig.heartbeat("w", state="loading", model="")
    rig.submit(plan_text("gen | llm | python gen.py | none | llm_model=m"))
    assert rig.assigns() == []


def test_priority_then_age():
    rig = Rig()
    low = rig.submit(plan_text("a | cpu | a"), priority="low").batch_id
    rig.now += 1
    normal = rig.submit(plan_text("a | cpu | a"), config={"PRIORITY": "normal"}).batch_id
    rig.now += 1
    urgent = rig.submit(plan_text("a | cpu | a"), priority="urgent").batch_id
    rig.now += 1
    normal2 = rig.submit(plan_text("a | cpu | a")).batch_id
    rig.worker("w")
    order = []
    for _ in range(4):
        a = rig.assigns()[-1]
        order.append(a.batch_id)
        rig.done(a)
    assert order == [urgent, normal, normal2, low]


# --- failures ------------------------------------------------------------------------


def test_retries_with_backoff_then_fails_and_skips_dependents():
    rig = Rig(BrainConfig(backoff_base_s=10.0))
    rig.worker("w", slots=2)
    batch = rig.submit(
        plan_text("a | cpu | false", "b | cpu | true | a", "c | cpu | true")
    ).batch_id
    times = []
    for attempt in range(3):
        a = next(
            x
            for x in rig.assigns()
            if x.task_id == "a" and x.attempt_id.endswith(f":{attempt + 1}")
        )
        times.append(rig.now)
        rig.start(a)
        rig.failed(a, exit_code=2, log_tail="line1\nboom")
        if attempt < 2:
            rig.wait(1.0)
            assert len([x for x in rig.assigns() if x.task_id == "a"]) == attempt + 1  # backing off
            rig.wait(10.0 * 2**attempt)
    c = next(x for x in rig.assigns() if x.task_id == "c")
    rig.done(c)
    task = rig.task(batch, "a")
    assert task.state == "failed" and task.attempts == 3
    assert rig.task(batch, "b").state == "skipped"
    assert rig.state.batches[batch].state == "failed"
    assert times[1] - times[0] >= 10.0 and times[2] - times[1] >= 20.0
    escalation = [
        c for c in rig.commands if isinstance(c, WriteFile) and c.path.endswith("ESCALATION.md")
    ]
    assert escalation and "false" in escalation[0].text and "boom" in escalation[0].text
    assert "2, 2, 2" in escalation[0].text


def test_exit_75_requeues_without_spending_an_attempt():
    rig = Rig(BrainConfig(retry_later_s=5.0, max_attempts=1))
    rig.worker("w")
    batch = rig.submit(plan_text("a | cpu | x")).batch_id
    for _ in range(4):
        a = rig.assigns()[-1]
        rig.start(a)
        rig.failed(a, exit_code=75)
        rig.wait(6.0)
    assert rig.task(batch, "a").attempts == 0
    a = rig.assigns()[-1]
    rig.start(a)
    rig.done(a)
    assert rig.state.batches[batch].state == "complete"
    assert len(rig.assigns()) == 5


def test_timeout_aborts_then_kills_then_retries():
    rig = Rig(BrainConfig(class_timeouts={"cpu": 100.0}, grace_s=20.0, backoff_base_s=1.0))
    rig.worker("w")
    batch = rig.submit(plan_text("a | cpu | sleep 1000")).batch_id
    a = rig.assigns()[0]
    rig.start(a)
    rig.wait(100.0)
    assert rig.of(TaskCancel) == []
    rig.wait(1.0)
    cancels = rig.of(TaskCancel)
    assert [(c.mode, c.attempt_id) for c in cancels] == [("abort", a.attempt_id)]
    rig.wait(19.0)
    assert [c.mode for c in rig.of(TaskCancel)] == ["abort"]
    rig.wait(1.5)
    assert [c.mode for c in rig.of(TaskCancel)] == ["abort", "kill"]
    rig.failed(a, reason="killed", exit_code=None)
    task = rig.task(batch, "a")
    assert task.state == "delayed" and "timed out" in task.failures[0]["error"]
    rig.wait(2.0)
    assert rig.assigns()[-1].attempt_id.endswith(":2")


def test_per_task_timeout_field():
    rig = Rig(BrainConfig(grace_s=5.0))
    rig.worker("w")
    rig.submit(plan_text("a | cpu | sleep 99 | none | timeout=30"))
    rig.start(rig.assigns()[0])
    rig.wait(31.0)
    assert [c.mode for c in rig.of(TaskCancel)] == ["abort"]


def test_llm_stall_is_caught_before_the_timeout():
    rig = Rig(BrainConfig(stall_s=120.0, grace_s=5.0))
    rig.worker("w", state="hot", model="m")
    rig.submit(plan_text("gen | llm | gen | none | llm_model=m"))
    a = rig.assigns()[0]
    rig.start(a)
    from llmo.proto.messages import TaskProgress

    for tokens in (10, 20, 30):
        rig.wait(60.0)
        rig.msg(
            TaskProgress(
                batch_id=a.batch_id, task_id="gen", attempt_id=a.attempt_id, tokens=tokens
            ),
            src="w",
        )
    assert rig.of(TaskCancel) == []
    rig.wait(121.0)
    assert [c.mode for c in rig.of(TaskCancel)] == ["abort"]
    assert "stalled" in rig.of(TaskCancel)[0].reason


def test_dead_worker_requeues_at_once_without_spending():
    rig = Rig()
    rig.worker("w1")
    rig.worker("w2")
    batch = rig.submit(plan_text("a | cpu | a", "b | cpu | b")).batch_id
    first = {a.task_id: a for a in rig.assigns()}
    for a in first.values():
        rig.start(a)
    dead = first["a"].dst
    rig.feed(Received(PeerDown(src="broker", dst="brain", id="p1", peer=dead)))
    task = rig.task(batch, "a")
    if first["a"].dst == first["b"].dst:
        pytest.skip("both on one worker")
    assert task.attempts == 0 and task.lost_workers == 1
    rig.done(first["b"])
    again = rig.assigns()[-1]
    assert again.task_id == "a" and again.dst != dead and again.attempt_id.endswith(":2")
    rig.start(again)
    rig.done(again)
    assert rig.state.batches[batch].state == "complete"


def test_silent_worker_is_declared_dead_within_seconds():
    rig = Rig()
    rig.worker("w1")
    batch = rig.submit(plan_text("a | cpu | a")).batch_id
    rig.start(rig.assigns()[0])
    rig.tick(2.0)
    assert rig.state.workers["w1"].alive
    rig.tick(1.5)
    assert not rig.state.workers["w1"].alive
    assert rig.task(batch, "a").state == "ready"


def test_poison_task_fails_after_taking_down_three_workers():
    rig = Rig()
    batch = rig.submit(plan_text("a | cpu | crash")).batch_id
    for n in range(3):
        rig.worker(f"w{n}")
        a = rig.assigns()[-1]
        assert a.dst == f"w{n}"
        rig.start(a)
        rig.feed(Received(PeerDown(src="broker", dst="brain", id=f"p{n}", peer=f"w{n}")))
    task = rig.task(batch, "a")
    assert task.state == "failed" and "poison" in task.error
    assert rig.state.batches[batch].state == "failed"


def test_stale_results_are_ignored_and_a_late_finish_is_recorded_once():
    rig = Rig()
    rig.worker("w1")
    batch = rig.submit(plan_text("a | cpu | a", "b | cpu | b | a")).batch_id
    old = rig.assigns()[0]
    rig.start(old)
    rig.feed(Received(PeerDown(src="broker", dst="brain", id="p1", peer="w1")))
    rig.worker("w2")
    new = rig.assigns()[-1]
    rig.start(new)
    rig.heartbeat("w1")  # the lost worker comes back and reports its old attempt
    rig.done(old)  # the work did finish: recorded, and the newer attempt is aborted
    assert rig.task(batch, "a").state == "done"
    assert [(c.attempt_id, c.mode) for c in rig.of(TaskCancel)] == [(new.attempt_id, "abort")]
    rig.done(new)
    rig.done(new)  # a duplicate
    succeeded = [m for m in rig.of(BatchEvent) if m.event == "task_succeeded" and m.task_id == "a"]
    assert len(succeeded) == 1
    assert [a.task_id for a in rig.assigns()].count("b") == 1


def test_worker_restart_loses_its_attempts():
    rig = Rig()
    rig.worker("w")
    batch = rig.submit(plan_text("a | cpu | a")).batch_id
    rig.start(rig.assigns()[0])
    from llmo.proto.messages import Register

    rig.msg(Register(role="worker", slots=1, vram_budget_mb=6000, pid=2), src="w")
    assert rig.task(batch, "a").lost_workers == 1
    assert rig.assigns()[-1].attempt_id.endswith(":2")


def test_heartbeat_active_list_finds_lost_and_foreign_attempts():
    rig = Rig(BrainConfig(lost_grace_s=2.0))
    rig.worker("w", slots=2)
    batch = rig.submit(plan_text("a | cpu | a")).batch_id
    a = rig.assigns()[0]
    rig.start(a)
    rig.heartbeat("w", active=(a.attempt_id, "old:x:1"))
    assert [c.attempt_id for c in rig.of(TaskCancel)] == ["old:x:1"]
    rig.tick(2.5)
    rig.heartbeat("w", active=("old:x:1",))
    assert rig.task(batch, "a").attempt_id.endswith(":2")
    assert len(rig.of(TaskCancel)) == 1  # the foreign attempt is cancelled once


def test_results_a_worker_holds_for_attempts_it_ended_take_none_of_its_slots():
    rig = Rig()
    rig.worker("w", slots=2)
    held = ("old:x:1", "old:y:1")  # ended; their acks were lost, so they are sent again
    rig.heartbeat("w", active=held, held=held)
    assert rig.state.workers["w"].foreign == ()
    assert not rig.of(TaskCancel)  # nothing runs to be cancelled
    rig.submit(plan_text("a | cpu | a", "b | cpu | b"))
    assert len(rig.assigns()) == 2
    rig.heartbeat("w", active=("old:z:1", *held), held=held)  # one runs
    assert rig.state.workers["w"].foreign == ("old:z:1",)
    assert [c.attempt_id for c in rig.of(TaskCancel)] == ["old:z:1"]


def test_cancel_batch():
    rig = Rig()
    rig.worker("w")
    batch = rig.submit(plan_text("a | cpu | a", "b | cpu | b | a")).batch_id
    a = rig.assigns()[0]
    rig.start(a)
    rig.msg(BatchCancel(batch_id=batch), src="cancel-1")
    acks = rig.of(Ack)
    assert acks[-1].ok
    assert rig.state.batches[batch].state == "cancelled"
    assert rig.states(batch) == {"a": "cancelled", "b": "cancelled"}
    assert [(c.mode, c.attempt_id) for c in rig.of(TaskCancel)] == [("abort", a.attempt_id)]
    rig.done(a)  # late: ignored
    assert rig.task(batch, "a").state == "cancelled"
    rig.msg(BatchCancel(batch_id=batch), src="cancel-1")
    assert not rig.of(Ack)[-1].ok


def test_cancelled_attempt_is_killed_after_the_grace():
    rig = Rig(BrainConfig(grace_s=10.0))
    rig.worker("w")
    batch = rig.submit(plan_text("a | cpu | a")).batch_id
    rig.start(rig.assigns()[0])
    rig.msg(BatchCancel(batch_id=batch), src="cancel-1")
    rig.wait(11.0)
    assert [c.mode for c in rig.of(TaskCancel)] == ["abort", "kill"]


# --- foreach -------------------------------------------------------------------------


def test_foreach_expands_and_waits_for_all_items():
    rig = Rig()
    rig.worker("w", slots=8)
    rig.manifests["each"] = [{"id": "x"}, {"id": "y"}, {"id": "z"}]
    text = plan_text(
        "prep | cpu | prep",
        "each | cpu | run {ITEM.id} | prep | foreach={BATCH_PATH}/m.json:items",
        "after | cpu | after | each",
    )
    batch = rig.submit(text).batch_id
    rig.auto()
    assert rig.states(batch) == {
        "prep": "done",
        "each": "done",
        "each_x": "done",
        "each_y": "done",
        "each_z": "done",
        "after": "done",
    }
    order = [a.task_id for a in rig.assigns()]
    assert order.index("after") > max(order.index(f"each_{i}") for i in "xyz")
    each_x = next(a for a in rig.assigns() if a.task_id == "each_x")
    assert (each_x.command, each_x.env) == ('run "${LLMO_ITEM_ID}"', {"LLMO_ITEM_ID": "x"})


def test_foreach_empty_is_a_no_op_success():
    rig = Rig()
    rig.worker("w")
    rig.manifests["each"] = []
    batch = rig.submit(
        plan_text("each | cpu | run {ITEM} | none | foreach=m.json:items", "after | cpu | a | each")
    ).batch_id
    rig.auto()
    assert rig.states(batch) == {"each": "done", "after": "done"}


def test_broken_foreach_source_fails_visibly_once():
    rig = Rig()
    rig.worker("w")
    rig.manifests["each"] = "the foreach source /x/m.json does not exist"
    batch = rig.submit(
        plan_text(
            "each | cpu | run {ITEM} | none | foreach=/x/m.json:items", "after | cpu | a | each"
        )
    ).batch_id
    assert rig.states(batch) == {"each": "failed", "after": "skipped"}
    assert "does not exist" in rig.task(batch, "each").error
    assert rig.state.batches[batch].state == "failed"


def test_per_item_pipelines():
    rig = Rig()
    rig.worker("w", slots=1)
    items = [{"id": "1"}, {"id": "2"}]
    rig.manifests["extract"] = items
    rig.manifests["score"] = items
    text = plan_text(
        "extract | cpu | ex {ITEM.id} | none | foreach=m.json:items",
        "score | cpu | sc {ITEM.id} | extract_{ITEM.id} | foreach=m.json:items",
    )
    batch = rig.submit(text).batch_id
    seen = []

    def outcome(a):
        seen.append(a.task_id)
        return "done"

    rig.auto(outcome)
    assert all(s == "done" for s in rig.states(batch).values())
    assert seen.index("score_1") > seen.index("extract_1")
    assert seen.index("score_1") < seen.index("extract_2") or seen.index("score_2") > seen.index(
        "extract_2"
    )


# --- monitors, history, tables -------------------------------------------------------------


def test_every_change_is_a_batch_event_with_increasing_rev():
    rig = Rig()
    rig.worker("w")
    rig.submit(plan_text("a | cpu | a"))
    rig.auto()
    revs = [m.rev for m in rig.of(BatchEvent)]
    assert revs == sorted(revs) and len(set(revs)) == len(revs)
    assert all(m.dst == "broker" for m in rig.of(BatchEvent))


def test_batch_events_jsonl_and_summary():
    rig = Rig()
    rig.worker("w")
    batch = rig.submit(plan_text("a | cpu | a", "b | cpu | b | a")).batch_id
    rig.auto(lambda a: "done")
    lines = [line for c in rig.commands if isinstance(c, AppendLines) for line in c.lines]
    import json

    events = [json.loads(line)["event"] for line in lines]
    assert events[0] == "batch_accepted" and events[-2:] == ["batch_completed", "summary_refreshed"]
    assert "task_released" in events and "task_started" in events
    summary = [
        c for c in rig.commands if isinstance(c, WriteFile) and c.path.endswith("RUN_SUMMARY.json")
    ]
    data = json.loads(summary[-1].text)
    assert data["status"] == "complete" and data["counts"] == {"done": 2}
    assert data["critical_path"] == ["a", "b"]
    assert batch in summary[-1].path


def test_snapshot_reply_has_the_whole_state():
    rig = Rig()
    rig.worker("w")
    batch = rig.submit(plan_text("a | cpu | a", "b | cpu | b | a")).batch_id
    rig.msg(SnapshotRequest(), src="tui-1")
    reply = rig.of(SnapshotReply)[-1]
    assert reply.dst == "tui-1" and reply.rev == rig.state.rev
    assert reply.workers[0].name == "w" and reply.workers[0].state == "cold"
    b = reply.batches[0]
    assert b.id == batch and b.counts == {"assigned": 1, "pending": 1}
    assert {t.id: t.state for t in reply.tasks} == {"a": "assigned", "b": "pending"}


def test_snapshot_carries_each_workers_rate_and_telemetry():
    from llmo.proto.messages import GpuReading, Telemetry

    rig = Rig()
    rig.worker("gpu-1")
    rig.worker("cpu-1")
    gpus = (
        GpuReading(
            index=0, temperature_c=61.0, vram_used_mb=3000, vram_total_mb=6144, power_w=80.25
        ),
        GpuReading(
            index=3, temperature_c=67.0, vram_used_mb=2500, vram_total_mb=6144, power_w=70.0
        ),
    )
    rig.heartbeat("gpu-1", tok_s=22.5, telemetry=Telemetry(gpu_available=True, gpus=gpus))
    rig.heartbeat("cpu-1", telemetry=Telemetry(gpu_available=False, note="no NVML driver"))
    rig.msg(SnapshotRequest(), src="tui-1")
    workers = {w.name: w for w in rig.of(SnapshotReply)[-1].workers}
    gpu = workers["gpu-1"].gpu
    assert gpu is not None and workers["gpu-1"].tok_s == 22.5
    assert (gpu.temperature_c, gpu.vram_used_mb, gpu.vram_total_mb) == (67.0, 5500, 12288)
    assert gpu.power_w == 150.2 and gpu.available is True
    cpu = workers["cpu-1"].gpu
    assert cpu is not None and cpu.available is False and cpu.note == "no NVML driver"


def test_illegal_transition_is_logged_not_raised():
    rig = Rig()
    rig.worker("w")
    batch = rig.submit(plan_text("a | cpu | a")).batch_id
    from llmo.brain import core, tasks

    cx = core.new_ctx(rig.state, rig.now)
    task = rig.task(batch, "a")
    assert not tasks.move(cx, rig.state.batches[batch], task, "due")
    assert task.state == "assigned"
    assert any("illegal transition" in c.text for c in cx.out if isinstance(c, Log))


def test_a_bad_event_is_logged_not_raised():
    rig = Rig()
    rig.state.batches["x"] = None  # corrupt on purpose
    rig.feed(Tick())
    assert any("failed" in e for e in errors(rig))


def test_transition_table_is_closed_and_drawable():
    for edges in TASK_TRANSITIONS.values():
        assert set(edges.values()) <= set(TASK_TRANSITIONS)
    assert "pending --> ready: release" in mermaid("task")


def test_result_without_start_counts_the_attempt():
    rig = Rig()
    rig.worker("w")
    batch = rig.submit(plan_text("a | cpu | a")).batch_id
    a = rig.assigns()[0]
    rig.msg(TaskDone(batch_id=a.batch_id, task_id="a", attempt_id=a.attempt_id), src="w")
    assert rig.task(batch, "a").attempts == 1
    assert rig.state.batches[batch].state == "complete"


def test_long_finished_batches_are_forgotten_but_the_newest_kept():
    rig = Rig(BrainConfig(keep_finished=2, forget_after_s=60.0))
    rig.worker("w1", slots=4)
    ids = []
    for _ in range(4):
        batch = rig.submit(plan_text("a | cpu | true")).batch_id
        ids.append(batch)
        for assign in rig.assigns():
            rig.done(assign)
        assert rig.state.batches[batch].state == "complete"
    rig.wait(30.0)
    assert set(rig.state.batches) == set(ids)  # finished too recently to forget
    rig.wait(61.0)
    assert set(rig.state.batches) == set(ids[2:])  # only the newest two stay
    # A late result for a forgotten batch is ignored, not a crash.
    rig.msg(TaskDone(batch_id=ids[0], task_id="a", attempt_id=f"{ids[0]}:a:1"), src="w1")
    assert set(rig.state.batches) == set(ids[2:])


def test_a_request_the_brain_fails_on_is_answered_not_left_hanging(monkeypatch):
    from llmo.brain import submit as brain_submit

    rig = Rig()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(brain_submit.plans, "parse_plan", broken)
    reply = rig.submit(plan_text("a | cpu | true"))
    assert reply.TYPE.value == "error" and reply.code == "internal" and reply.dst == "submit-1"
    assert "plan.submit" in reply.detail and "boom" in reply.detail
    monkeypatch.undo()
    assert rig.submit(plan_text("a | cpu | true")).TYPE.value == "plan.accepted"


def test_a_policy_refusal_fails_the_task_at_once_and_a_capacity_refusal_does_not():
    rig = Rig()
    rig.worker("w", slots=2)
    batch = rig.submit(plan_text("a | cpu | sudo rm -rf /", "b | cpu | true")).batch_id
    first = {a.task_id: a for a in rig.assigns()}
    rig.failed(
        first["a"],
        reason="policy",
        exit_code=None,
        error="refused by the policy of w: refused_patterns: sudo",
    )
    task = rig.task(batch, "a")
    assert task.state == "failed" and task.attempts == 0 and "refused_patterns" in task.error
    rig.failed(first["b"], reason="refused", exit_code=None, error="no free slot")
    assert rig.task(batch, "b").state in ("delayed", "ready", "assigned")


def test_a_result_naming_another_task_does_not_free_a_live_attempts_slot():
    rig = Rig()
    rig.worker("w", slots=1)
    batch = rig.submit(plan_text("a | cpu | sleep 9", "b | cpu | true")).batch_id
    (first,) = rig.assigns()
    other = "b" if first.task_id == "a" else "a"
    mark = len(rig.sent)
    rig.msg(TaskDone(batch_id=batch, task_id=other, attempt_id=first.attempt_id), src="w")
    assert rig.assigns(mark) == []  # the worker's only slot is still taken
    assert first.attempt_id in rig.state.workers["w"].attempts
    mark = len(rig.sent)
    rig.done(first)
    assert [a.task_id for a in rig.assigns(mark)] == [other]


def test_absurd_heartbeat_figures_are_ignored_and_named():
    rig = Rig()
    rig.worker("w", slots=2)
    rig.heartbeat("w", slots_total=-5, vram_used_mb=-1, tok_s=float("nan"), interval_s=1e9)
    worker = rig.state.workers["w"]
    assert worker.slots == 2 and worker.vram_used_mb == 0 and worker.tok_s == 0.0
    assert worker.interval_s == 1.0  # a dead worker is still noticed in seconds
    logs = [c.text for c in rig.commands if isinstance(c, Log)]
    assert any("slots_total, vram_used_mb, tok_s, interval_s" in text for text in logs), logs


def test_a_hot_worker_runs_as_many_llm_tasks_as_it_batches():
    plan = plan_text(*(f"gen{i} | llm | python gen.py | none | llm_model=m" for i in range(6)))
    rig = Rig()
    rig.worker("gpu-1", slots=1, state="hot", model="m")
    rig.heartbeat("gpu-1", llm_slots=3)
    rig.submit(plan)
    # Three batched sequences, and one more in its shell slot.
    assert [a.dst for a in rig.assigns()] == ["gpu-1"] * 4
    # Without an announced LLM concurrency, LLM tasks take shell slots only.
    rig = Rig()
    rig.worker("gpu-1", slots=1, state="hot", model="m")
    rig.submit(plan)
    assert [a.dst for a in rig.assigns()] == ["gpu-1"]


def test_llm_credit_leaves_the_shell_slots_to_other_work():
    rig = Rig()
    rig.worker("gpu-1", slots=1, state="hot", model="m")
    rig.heartbeat("gpu-1", llm_slots=2)
    rig.submit(
        plan_text(
            "gen0 | llm | python gen.py | none | llm_model=m",
            "gen1 | llm | python gen.py | none | llm_model=m",
            "sum | cpu | wc -l out",
            "more | cpu | wc -l out",
        )
    )
    assigned = sorted(a.task_id for a in rig.assigns())
    assert assigned == ["gen0", "gen1", "more"] or assigned == ["gen0", "gen1", "sum"]


def test_an_absurd_llm_concurrency_is_ignored_and_named():
    rig = Rig()
    rig.worker("gpu-1", slots=1, state="hot", model="m")
    rig.heartbeat("gpu-1", llm_slots=10**9)
    assert rig.state.workers["gpu-1"].llm_slots == 0
    assert any("llm_slots" in c.text for c in rig.commands if isinstance(c, Log))


def test_an_executor_brain_cpu_task_runs_on_the_brain_worker():
    """The original's own example: ``executor: brain`` with ``task_class: cpu``
    runs where the brain model is (with its ``BRAIN_*`` endpoint), not on any
    free worker."""
    rig = Rig()
    rig.worker("gpu-1", slots=4)
    rig.worker("brain-llm", role="brain", gpus=(0, 3), state="hot", model="big")
    text = plan_text("plan_next | cpu | python plan_next.py")
    rig.submit(text.replace("**executor**: worker", "**executor**: brain"))
    assert [(a.dst, a.executor) for a in rig.assigns()] == [("brain-llm", "brain")]


def test_a_bare_brain_uses_the_original_no_progress_limits_per_class():
    cfg = BrainConfig()
    limits = {c: cfg.timeout_for(c, None) for c in ("script", "llm", "cpu", "meta")}
    assert limits == {"script": 600.0, "llm": 420.0, "cpu": 900.0, "meta": 180.0}
    assert cfg.timeout_for("cpu", 42.0) == 42.0
    # A settings file naming one class keeps the others' limits.
    partial = BrainConfig.from_settings({"class_timeouts": {"llm": 500}})
    assert partial.timeout_for("llm", None) == 500.0
    assert partial.timeout_for("script", None) == 600.0
    # A journaled Configure is read back exactly: an old brain's {} means 1800 s.
    assert BrainConfig.from_dict({"class_timeouts": {}}).timeout_for("script", None) == 1800.0
    assert BrainConfig.from_dict(partial.to_dict()) == partial
