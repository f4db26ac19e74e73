"""The monitor's pure state and formatting: no Textual, no sockets."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import pytest
from rich.text import Text

from llmo.proto.codec import decode, encode, to_dict
from llmo.proto.errors import ProtocolError
from llmo.proto.messages import (
    BatchEvent,
    GpuGauges,
    Heartbeat,
    PeerDown,
    PeerUp,
    SnapshotReply,
    TaskProgress,
)
from llmo.tui import render
from llmo.tui.model import Model
from llmo.tui.rows import EVENTS_KEPT, SPARK_SAMPLES, BatchRow
from llmo.tui.updates import ActionResult, LinkStatus, Update
from llmo.tui.wording import describe
from tests.test_tui_support import batch_view, gpu_telemetry, no_gpu, task_view, worker_view

pytestmark = pytest.mark.timeout(30)

NOW = 2000.0


def snapshot(rev: int = 10, **kw) -> SnapshotReply:
    counts = {"done": 2, "running": 1, "ready": 1}
    return SnapshotReply(
        reply_to="r",
        rev=rev,
        workers=kw.get("workers", (worker_view("gpu-1"), worker_view("gpu-2", "cold"))),
        batches=kw.get("batches", (batch_view("B", "hello", counts),)),
        tasks=kw.get(
            "tasks",
            (
                task_view("B", "a", "done"),
                task_view("B", "b", "done"),
                task_view("B", "c", "running", worker="gpu-1", attempt_id="B:c:1"),
                task_view("B", "d", "ready"),
            ),
        ),
    )


def ev(rev: int, name: str, task: str = "", state: str = "", batch: str = "B", **kw) -> BatchEvent:
    return BatchEvent(rev=rev, batch_id=batch, event=name, task_id=task, state=state, **kw)


def seeded() -> Model:
    model = Model()
    model.seed(snapshot(), NOW)
    model.select_batch("B")
    return model


def test_seed_fills_workers_batches_and_tasks():
    model = seeded()
    assert set(model.workers) == {"gpu-1", "gpu-2"}
    assert model.workers["gpu-1"].shown_state == "hot"
    assert model.workers["gpu-2"].shown_state == "cold"
    batch = model.batches["B"]
    assert (batch.plan, batch.total, batch.split()) == ("hello", 4, (2, 1, 0, 1))
    assert [t.id for t in model.task_rows("B")] == ["a", "b", "c", "d"]
    assert model.tasks["B"]["c"].worker == "gpu-1"
    assert "joined at revision 10" in model.events[0].text


def test_events_the_snapshot_holds_are_skipped_and_counts_move():
    model = seeded()
    assert not model.apply_event(ev(9, "task_succeeded", "c", "done"), NOW)
    assert model.apply_event(ev(11, "task_succeeded", "c", "done", detail={"duration_s": 4.5}), NOW)
    assert model.apply_event(ev(12, "task_started", "d", "running", attempt_id="B:d:1"), NOW)
    batch = model.batches["B"]
    assert batch.split() == (3, 1, 0, 0)
    c, d = model.tasks["B"]["c"], model.tasks["B"]["d"]
    assert (c.state, c.duration(NOW)) == ("done", 4.5)
    assert (d.state, d.attempts, d.started_at) == ("running", 1, NOW)


def test_new_items_of_an_expanded_template_take_its_class():
    model = Model()
    tasks = (task_view("B", "greet", "expanding", task_class="script"),)
    model.seed(snapshot(tasks=tasks, batches=(batch_view("B", "p", {"expanding": 1}),)), NOW)
    model.apply_event(ev(11, "task_expanded", "greet", "expanded", detail={"items": 2}), NOW)
    model.apply_event(ev(12, "task_released", "greet_x", "ready"), NOW)
    row = model.tasks["B"]["greet_x"]
    assert (row.template, row.task_class) == ("greet", "script")
    assert model.batches["B"].counts == {"expanded": 1, "ready": 1, "expanding": 0}


def test_retry_history_and_error_are_kept_on_the_task():
    model = seeded()
    model.apply_event(
        ev(11, "task_failed", "c", "running", detail={"reason": "exit", "exit_code": 1}), NOW
    )
    model.apply_event(ev(12, "task_retried", "c", "delayed", detail={"reason": "exit 1"}), NOW)
    row = model.tasks["B"]["c"]
    assert row.state == "delayed" and row.worker == "" and row.error == "exit 1"
    assert row.history is not None and len(row.history) == 2
    assert "retried" in model.events[0].text and model.events[0].level == "warning"


def test_a_finished_batch_keeps_counts_but_drops_its_tasks_unless_selected():
    model = seeded()
    model.apply_event(
        ev(11, "batch_completed", state="complete", detail={"counts": {"done": 4}}), NOW
    )
    assert model.batches["B"].finished and model.batches["B"].counts == {"done": 4}
    assert "B" in model.tasks  # still selected
    assert model.select_batch("") is False
    assert "B" not in model.tasks
    assert model.select_batch("B") is True  # must be fetched again


def test_narrowed_snapshot_has_its_own_revision_floor():
    model = Model()
    batches = (
        batch_view("A", "one", {"running": 1}),
        batch_view("B", "two", {"done": 1}, state="complete"),
    )
    model.seed(snapshot(rev=10, batches=batches, tasks=(task_view("A", "x", "running"),)), NOW)
    model.select_batch("B")
    narrowed = SnapshotReply(
        reply_to="r", rev=20, batches=batches, tasks=(task_view("B", "y", "done"),)
    )
    model.apply(Update(snapshots=(("B", narrowed),)), NOW)
    assert [t.id for t in model.task_rows("B")] == ["y"]
    # An event of batch A published before that snapshot still counts...
    assert model.apply_event(ev(15, "task_succeeded", "x", "done", batch="A"), NOW)
    # ...one of batch B does not: the narrowed snapshot holds it.
    assert not model.apply_event(ev(16, "task_skipped", "y", "skipped", batch="B"), NOW)
    assert model.tasks["A"]["x"].state == "done"


def test_heartbeats_update_rows_and_the_history_once_a_second():
    model = seeded()
    for i in range(5):
        hb = Heartbeat(
            src="gpu-1", role="worker", state="hot", tok_s=20.0 + i, telemetry=gpu_telemetry(1)
        )
        model.heartbeat(hb, NOW + i * 0.5)
    row = model.workers["gpu-1"]
    assert row.tok_s == 24.0
    assert list(row.history) == [20.0, 22.0, 24.0]  # at 0 s, 1 s and 2 s
    model.heartbeat(Heartbeat(src="tui-x", role="client"), NOW)  # tools are not workers
    assert "tui-x" not in model.workers
    for i in range(SPARK_SAMPLES + 10):
        model.heartbeat(Heartbeat(src="gpu-1", role="worker", tok_s=1.0), NOW + 10 + i)
    assert len(row.history) == SPARK_SAMPLES


def test_worker_down_by_brain_event_or_broker_and_back():
    model = seeded()
    model.apply_event(
        ev(11, "worker_down", batch="", worker="gpu-1", detail={"reason": "silent"}), NOW
    )
    assert model.workers["gpu-1"].shown_state == "down"
    assert model.events[0].level == "error" and "gpu-1" in model.events[0].text
    assert model.rig_tok_s() == 0.0
    model.peer(PeerUp(peer="gpu-1"), NOW)
    assert model.workers["gpu-1"].shown_state == "hot"
    model.peer(PeerDown(peer="gpu-2", silent_s=3.2), NOW)
    assert model.workers["gpu-2"].shown_state == "down"
    model.tick(NOW + 1)
    assert model.workers["gpu-2"].history[-1] == 0.0


def test_drain_and_model_events_change_the_worker():
    model = seeded()
    model.apply_event(ev(11, "worker_drain", batch="", worker="gpu-1"), NOW)
    assert model.workers["gpu-1"].shown_state == "draining"
    model.apply_event(
        ev(12, "model_load", batch="", worker="gpu-2", detail={"model": "m.gguf"}), NOW
    )
    assert model.workers["gpu-2"].loading == "m.gguf"
    model.apply_event(
        ev(13, "model_hot", batch="", worker="gpu-2", detail={"model": "m.gguf"}), NOW
    )
    assert (model.workers["gpu-2"].shown_state, model.workers["gpu-2"].model) == ("hot", "m.gguf")


def test_progress_sets_the_rate_of_the_current_attempt_only():
    model = seeded()
    msg = TaskProgress(batch_id="B", task_id="c", attempt_id="B:c:1", tokens=50, tok_s=21.5)
    model.progress(msg, NOW)
    model.progress(TaskProgress(batch_id="B", task_id="c", attempt_id="B:c:0", tok_s=9.0), NOW)
    row = model.tasks["B"]["c"]
    assert row.rate(NOW + 1) == 21.5 and row.tokens == 50
    assert row.rate(NOW + 60) is None  # stale


def test_filter_and_live_first_order():
    model = seeded()
    assert [t.id for t in model.task_rows("B", "state:run")] == ["c"]
    assert [t.id for t in model.task_rows("B", "gpu-1")] == ["c"]
    assert [t.id for t in model.task_rows("B", "done b")] == ["b"]
    assert [t.id for t in model.task_rows("B", live_first=True)] == ["c", "d", "a", "b"]


def test_events_are_a_ring_newest_first():
    model = seeded()
    for i in range(EVENTS_KEPT + 50):
        model.apply_event(ev(11 + i, "worker_up", batch="", worker=f"w{i}"), NOW + i)
    assert len(model.events) == EVENTS_KEPT
    assert model.events[0].worker == f"w{EVENTS_KEPT + 49}"


def test_link_changes_and_action_results_are_noted():
    model = seeded()
    model.apply(Update(link=LinkStatus("live", NOW)), NOW)
    model.apply(Update(link=LinkStatus("down", NOW + 5, "nothing heard")), NOW + 8)
    assert not model.live and "link down" in model.events[0].text
    model.apply(Update(link=LinkStatus("live", NOW + 9)), NOW + 9)
    assert model.live and model.events[0].level == "good"
    model.apply(Update(results=(ActionResult("cancel B", False, "no batch B"),)), NOW)
    assert model.events[0].text == "cancel B: no batch B" and model.events[0].level == "error"


def test_eta_uses_the_recent_rate():
    batch = BatchRow(id="B", created_at=50.0)
    batch.counts.update({"done": 10, "ready": 90})
    batch.samples.extend([(100.0, 0), (110.0, 10)])
    assert batch.eta(110.0) == pytest.approx(90.0)
    batch.samples.clear()
    assert batch.eta(150.0) == pytest.approx(900.0)  # the whole run's average
    batch.state = "complete"
    assert batch.eta(100.0) is None


def test_describe_events():
    line = describe(ev(1, "task_abandoned", "c", "failed", detail={"error": "boom"}), "hello")
    assert line == "hello c FAILED for good: boom"
    line = describe(ev(1, "batch_failed", state="failed", detail={"counts": {"done": 1}}), "p")
    assert line == "batch B (p) failed (done 1)"
    assert describe(ev(1, "something_new", batch="", worker="w"), "") == "w something new"


# --- formatting ------------------------------------------------------------------------------


def test_sparkline_scales_to_the_maximum_and_pads():
    assert render.sparkline([0, 5, 10], 5) == "  ▁▄█"
    assert render.sparkline([0, 5], 2, top=10.0) == "▁▄"
    assert render.sparkline([], 3) == "   "
    assert render.sparkline([0.0, 0.0], 2) == "▁▁"


def test_progress_bar_cells_add_up():
    batch = BatchRow(id="B")
    batch.counts.update({"done": 1, "running": 1, "failed": 1, "ready": 97})
    bar = render.progress(batch, 20)
    assert bar.cell_len == 20
    assert bar.plain.count("█") == 1  # one third of a cell each rounds to one cell in all
    batch.counts.update({"done": 97 - 1, "ready": -96})
    assert render.progress(batch, 20).plain.count("░") <= 1


def test_durations():
    assert [render.duration(s) for s in (None, 5, 65, 7325)] == [
        render.DASH,
        "5s",
        "1m05s",
        "2h02m",
    ]


def worker_cells(model: Model, name: str, now: float = NOW) -> dict[str, Text]:
    cells = render.worker_cells(model.workers[name], now)
    return dict(zip(render.WORKER_KEYS, cells, strict=True))


def test_worker_cells_say_no_gpu_telemetry_plainly():
    model = seeded()
    model.heartbeat(Heartbeat(src="gpu-2", role="worker", state="cold", telemetry=no_gpu()), NOW)
    cells = worker_cells(model, "gpu-2")
    assert cells["vram"].plain == "no GPU telemetry"
    model.heartbeat(
        Heartbeat(src="gpu-1", role="worker", state="hot", telemetry=gpu_telemetry(1, temp=85.0)),
        NOW,
    )
    cells = worker_cells(model, "gpu-1")
    assert cells["temp"].plain == "85°C" and "red" in str(cells["temp"].spans)
    assert cells["vram"].plain.startswith("4.1/6G ")
    assert cells["state"].plain == "hot"
    assert worker_cells(model, "gpu-1", NOW + 60)["state"].plain == "hot?"  # silent


def test_a_snapshot_taken_right_after_an_event_does_not_hide_its_line():
    model = seeded()
    accepted = ev(11, "batch_accepted", state="running", batch="C", detail={"plan": "two"})
    later = SnapshotReply(reply_to="r", rev=11, batches=(batch_view("C", "two", {"ready": 1}),))
    model.apply(Update(snapshots=(("", later),), events=(accepted,)), NOW)
    assert model.events[0].text.startswith("batch C accepted")
    model.apply(Update(snapshots=(("", later),), events=(accepted,)), NOW)  # not twice
    assert sum("accepted" in line.text for line in model.events) == 1


def test_the_snapshot_gives_worker_figures_until_the_first_heartbeat():
    gauges = GpuGauges(
        available=True,
        temperature_c=71.0,
        vram_used_mb=4096,
        vram_total_mb=6144,
        power_w=90.5,
        util_percent=80.0,
    )
    workers = (
        worker_view("gpu-1", tok_s=22.5, gpu=gauges),
        worker_view("cpu-1", "cold", gpu=GpuGauges(available=False, note="no NVML")),
    )
    model = Model()
    model.seed(snapshot(workers=workers), NOW)
    cells = worker_cells(model, "gpu-1")
    assert (cells["temp"].plain, cells["vram"].plain[:6], cells["tok_s"].plain.strip()) == (
        "71°C",
        "4.0/6G",
        "22.5",
    )
    assert worker_cells(model, "cpu-1")["vram"].plain == "no GPU telemetry"


def test_a_worker_becoming_constrained_says_why_in_the_events():
    model = seeded()
    model.heartbeat(Heartbeat(src="gpu-1", role="worker", state="hot"), NOW)
    why = "GPU 1 at 86°C, over the 83°C limit"
    model.heartbeat(Heartbeat(src="gpu-1", role="worker", state="constrained", constraint=why), NOW)
    assert model.events[0].text == f"gpu-1 constrained: {why}"
    assert model.workers["gpu-1"].shown_state == "constrained"
    model.heartbeat(Heartbeat(src="gpu-1", role="worker", state="constrained", constraint=why), NOW)
    model.heartbeat(Heartbeat(src="gpu-1", role="worker", state="hot"), NOW)
    assert [e.text for e in list(model.events)[:2]] == [
        "gpu-1 within its limits again",
        f"gpu-1 constrained: {why}",
    ]


@pytest.mark.parametrize(
    ("field", "entries", "says"),
    [
        ("workers", ["nonsense"], "snapshot.reply.workers[2]: expected a map"),
        ("workers", [{"role": "worker"}], "snapshot.reply.workers[2]: missing field 'name'"),
        ("batches", [7], "snapshot.reply.batches[1]: expected a map"),
        ("tasks", [{"batch_id": "B"}], "snapshot.reply.tasks[4]: missing field 'id'"),
        ("tasks", [None], "snapshot.reply.tasks[4]: expected a map"),
    ],
)
def test_malformed_snapshot_entries_never_reach_the_model(field, entries, says):
    wire = to_dict(snapshot(rev=3))
    wire.update(id="1", src="brain", dst="tui", ts=0.0)
    wire[field] = [*wire[field], *entries]
    with pytest.raises(ProtocolError) as caught:
        decode(msgpack.packb(wire))
    assert says in str(caught.value)
    model = Model()
    model.seed(decode(encode(snapshot(rev=3))), NOW)  # what does arrive is whole and typed
    assert list(model.workers) == ["gpu-1", "gpu-2"] and list(model.batches) == ["B"]
    assert list(model.tasks["B"]) == ["a", "b", "c", "d"]


def test_rig_counts_add_up_the_tasks_of_every_batch():
    model = Model()
    batches = (
        batch_view("B", "hello", {"done": 2, "running": 1, "assigned": 1, "ready": 3}),
        batch_view("C", "other", {"pending": 2, "delayed": 1, "failed": 2, "skipped": 1}),
        batch_view("D", "old", {"done": 5, "cancelled": 4}, state="cancelled", finished_at=1500.0),
    )
    model.seed(snapshot(batches=batches, tasks=()), NOW)
    counts = model.rig_counts()
    assert (counts.running, counts.queued, counts.done, counts.failed) == (2, 6, 7, 3)
    assert counts.cancelled == 4  # apart from the failures


def test_heartbeat_age_comes_from_the_brain_then_from_heartbeats():
    workers = (worker_view("gpu-1", last_seen=900.0), worker_view("gpu-2", "cold"))
    reply = snapshot(workers=workers)
    model = Model()
    model.seed(replace(reply, ts=970.0), NOW)  # the brain's clock: heard 70 s before it replied
    gpu1, gpu2 = model.workers["gpu-1"], model.workers["gpu-2"]
    assert gpu1.heartbeat_age(NOW) == pytest.approx(70.0)
    assert gpu2.heartbeat_age(NOW) is None  # never heard
    model.heartbeat(Heartbeat(src="gpu-1", role="worker", state="hot"), NOW + 5)
    assert gpu1.heartbeat_age(NOW + 8) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("age", "text", "style"),
    [
        (3.0, "3s", ""),
        (59.0, "59s", ""),
        (60.0, "60s", "yellow"),
        (119.0, "119s", "yellow"),
        (120.0, "120s", "bold red"),
        (4000.0, "4000s", "bold red"),
    ],
)
def test_heartbeat_age_is_in_seconds_amber_at_a_minute_red_at_two(age, text, style):
    model = seeded()
    model.heartbeat(Heartbeat(src="gpu-1", role="worker", state="hot"), NOW)
    cell = render.heartbeat_age(model.workers["gpu-1"], NOW + age)
    assert (cell.plain, str(cell.style)) == (text, style)


def test_heartbeat_age_is_not_coloured_when_the_monitor_is_the_one_not_hearing():
    model = seeded()
    model.heartbeat(Heartbeat(src="gpu-1", role="worker", state="hot"), NOW)
    cell = render.heartbeat_age(model.workers["gpu-1"], NOW + 300, live=False)
    assert (cell.plain, str(cell.style)) == ("300s", "dim")
    assert render.heartbeat_age(model.workers["gpu-2"], NOW).plain == render.DASH


def test_compact_rig_counts_fit_a_narrow_header():
    model = seeded()
    assert render.rig_counts(model.rig_counts()).plain == (
        "tasks 1 running · 1 queued · 2 done · 0 failed"
    )
    assert render.rig_counts(model.rig_counts(), compact=True).plain == (
        "1 run 1 queued 2 done 0 failed"
    )


def test_events_replayed_after_an_older_snapshot_count_once_and_are_logged_once():
    # A snapshot can answer at revision 10 after events 11 and 12 came through the
    # PUB socket: the feed hands those events again after it, and the view holds them.
    model = seeded()
    model.apply_event(ev(11, "task_succeeded", "c", "done", worker="gpu-1"), NOW)
    model.apply_event(ev(12, "task_started", "d", "running", worker="gpu-2"), NOW)
    lines = len(model.events)
    model.seed(snapshot(10), NOW + 1)
    assert model.tasks["B"]["c"].state == "running", "the older snapshot, as it is"
    for again in (
        ev(11, "task_succeeded", "c", "done", worker="gpu-1"),
        ev(12, "task_started", "d", "running", worker="gpu-2"),
    ):
        model.apply_event(again, NOW + 1)
    assert (model.tasks["B"]["c"].state, model.tasks["B"]["d"].state) == ("done", "running")
    assert model.batches["B"].split()[0] == 3
    assert len(model.events) == lines, "no line twice in the events pane"
