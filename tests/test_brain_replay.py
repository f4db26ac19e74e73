"""Message replay: captured event streams in tests/data/brain/ give the recorded decisions.

Each capture is a real journal file (``*.capture``: ``*.journal`` is
git-ignored) and the decision trace it gave when it was recorded
(``*.trace``, what ``llmo replay`` prints). A change
to the core that alters any decision shows up here as a diff of readable
lines. A missing capture or trace fails the test: it is never recorded
silently. After an intended change, and only then, regenerate both with::

    LLMO_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_brain_replay.py

and review the diff of ``tests/data/brain/`` before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmo.brain.journal import Journal
from llmo.brain.trace import replay_lines
from llmo.cli.main import main
from llmo.proto.codec import encode
from llmo.proto.messages import BatchCancel, PeerDown, TaskRetry
from tests.brain_fixtures import Rig, plan_text

pytestmark = pytest.mark.timeout(60)

DATA = Path(__file__).parent / "data" / "brain"
REGENERATE = "LLMO_REGENERATE_GOLDEN"


def scenario_mixed(rig: Rig) -> None:
    """Retries, exit 75, a foreach, a dead worker, and a cancelled second batch."""
    rig.worker("gpu-1", slots=2)
    rig.worker("gpu-2", slots=1)
    rig.manifests["each"] = [{"id": "x"}, {"id": "y"}, {"id": "z"}]
    first = rig.submit(
        plan_text(
            "prep | cpu | python prep.py",
            "each | cpu | python item.py {ITEM.id} | prep | foreach={BATCH_PATH}/m.json:items",
            "flaky | cpu | python flaky.py | prep",
            "total | cpu | python total.py | each, flaky",
        )
    ).batch_id
    rig.now += 1
    second = rig.submit(plan_text("slow | cpu | sleep 100"), path="/plans/q", priority="low")
    tries: dict[str, int] = {}

    def outcome(a):
        tries[a.task_id] = tries.get(a.task_id, 0) + 1
        if a.task_id == "flaky" and tries["flaky"] == 1:
            return 1
        if a.task_id == "each_y" and tries["each_y"] == 1:
            return 75
        if a.task_id == "each_z" and tries["each_z"] == 1:
            rig.msg(PeerDown(peer=a.dst), src="broker")
            return "hang"
        if a.task_id == "slow":
            rig.msg(BatchCancel(batch_id=second.batch_id), src="cancel-1")
            return "hang"
        return "done"

    rig.auto(outcome, until=lambda: rig.state.batches[first].state != "running")


def scenario_retry(rig: Rig) -> None:
    """A task fails all its attempts, its batch fails; the operator retries it and it ends done."""
    rig.worker("gpu-1", slots=1)
    batch = rig.submit(
        plan_text("fetch | cpu | python fetch.py", "use | cpu | python use.py | fetch")
    ).batch_id
    rig.auto(lambda a: 1 if a.task_id == "fetch" else "done", step_s=30.0)
    rig.msg(TaskRetry(batch_id=batch, task_id="nope"), src="retry-1")  # refused
    rig.msg(TaskRetry(batch_id=batch, task_id="fetch", reason="disk mounted"), src="retry-1")
    rig.auto(lambda a: "done", step_s=30.0)


SCENARIOS = {"mixed": scenario_mixed, "retry": scenario_retry}


def record(name: str, data: Path = DATA) -> tuple[Path, Path]:
    rig = Rig()
    SCENARIOS[name](rig)
    journal_path = data / f"{name}.capture"
    for suffix in ("", ".snap"):
        if Path(str(journal_path) + suffix).exists():
            os.remove(str(journal_path) + suffix)
    journal = Journal(str(journal_path), fsync="never")
    journal.recover()
    for now, event in rig.events:
        raw = encode(event.msg) if hasattr(event, "msg") else None
        journal.append(now, event, raw)
    journal.close()
    trace_path = data / f"{name}.trace"
    trace_path.write_text("\n".join(replay_lines(str(journal_path))) + "\n")
    return journal_path, trace_path


def golden(name: str, data: Path = DATA) -> tuple[Path, Path]:
    """The capture and trace of scenario ``name``, recorded anew only when
    ``LLMO_REGENERATE_GOLDEN=1``; a missing one fails the test."""
    if os.environ.get(REGENERATE) == "1":
        data.mkdir(parents=True, exist_ok=True)
        return record(name, data)
    paths = data / f"{name}.capture", data / f"{name}.trace"
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.fail(
            f"golden capture missing: {', '.join(missing)}; if the scenario is new, "
            f"record it with {REGENERATE}=1 (see tests/test_brain_replay.py)"
        )
    return paths


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_capture_replays_to_the_recorded_decisions(name):
    journal_path, trace_path = golden(name)
    expected = trace_path.read_text().splitlines()
    assert list(replay_lines(str(journal_path))) == expected


def test_a_missing_capture_fails_and_is_not_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv(REGENERATE, raising=False)
    with pytest.raises(pytest.fail.Exception, match="golden capture missing"):
        golden("mixed", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_capture_covers_the_rules():
    _, trace_path = golden("mixed")
    text = trace_path.read_text()
    for needle in (
        "event task_retried",  # exit 1 and exit 75
        "exit_code=75",
        "exit 75: retry later",
        "event worker_down",
        "event task_expanded",
        "event batch_cancelled",
        "event batch_completed",
        "send task.cancel",
    ):
        assert needle in text, needle


def test_llmo_replay_shows_a_retry(capsys):
    journal_path, _ = golden("retry")
    assert main(["replay", str(journal_path), "--quiet-ticks"]) == 0
    out = capsys.readouterr().out
    assert "recv task.retry reason=disk mounted batch_id=" in out
    assert "task_id=fetch" in out
    for needle in ("event batch_failed", "send error", "event batch_reopened"):
        assert needle in out, needle
    assert "event task_reopened" in out and out.rindex("event batch_completed") > out.index(
        "event batch_reopened"
    )


def test_llmo_replay_prints_the_trace(capsys):
    journal_path, _ = golden("mixed")
    assert main(["replay", str(journal_path), "--quiet-ticks"]) == 0
    out = capsys.readouterr().out
    assert "recv plan.submit" in out and "send task.assign" in out
    assert "+0.000 tick" not in out
