"""The operator's retry of a failed task (``TaskRetry``, ``brain.reopen``), in the pure core."""

from __future__ import annotations

from llmo.brain import reopen
from llmo.brain.commands import RemoveFile, WriteFile
from llmo.brain.config import BrainConfig
from llmo.proto.errors import ErrorCode
from llmo.proto.messages import Ack, BatchCancel, BatchEvent, Error, TaskRetry
from tests.brain_fixtures import Rig, plan_text


def failed_batch(rig: Rig, *tasks: str) -> str:
    """A batch whose task ``a`` fails every attempt (everything else succeeds)."""
    rig.worker("w", slots=2)
    batch = rig.submit(plan_text(*tasks)).batch_id
    rig.auto(lambda a: 2 if a.task_id == "a" else "done", step_s=30.0)
    assert rig.state.batches[batch].state == "failed"
    return batch


def retry(rig: Rig, batch: str, task: str) -> Ack | Error:
    since = len(rig.sent)
    rig.msg(TaskRetry(batch_id=batch, task_id=task), src="retry-1")
    return next(m for m in rig.sent[since:] if isinstance(m, Ack | Error))


def test_the_decision_names_why_a_retry_cannot_be_done():
    rig = Rig(BrainConfig(max_attempts=1))
    batch = failed_batch(rig, "a | cpu | false", "b | cpu | true | a", "c | cpu | true")
    assert reopen.refusal(rig.state, batch, "a") == ""
    assert "no batch nope" in reopen.refusal(rig.state, "nope", "a")
    assert f"batch {batch} has no task zz" in reopen.refusal(rig.state, batch, "zz")
    assert "is skipped, not failed" in reopen.refusal(rig.state, batch, "b")
    assert "is done, not failed" in reopen.refusal(rig.state, batch, "c")


def test_retry_reopens_the_task_its_dependents_and_the_batch_which_then_completes():
    rig = Rig(BrainConfig(max_attempts=2, backoff_base_s=1.0))
    batch = failed_batch(
        rig, "a | cpu | false", "b | cpu | true | a", "d | cpu | true | b", "c | cpu | true"
    )
    task = rig.task(batch, "a")
    assert (task.state, task.attempts) == ("failed", 2)
    assert rig.states(batch) == {"a": "failed", "b": "skipped", "d": "skipped", "c": "done"}
    old_attempts = {a.attempt_id for a in rig.assigns() if a.task_id == "a"}
    since = len(rig.sent)
    commands = len(rig.commands)

    answer = retry(rig, batch, "a")

    history = rig.state.batches[batch].history_path
    removed = [c.path for c in rig.commands[commands:] if isinstance(c, RemoveFile)]
    assert removed == [f"{history}/ESCALATION.md", f"{history}/results/batch_failure.json"]

    assert isinstance(answer, Ack) and answer.ok, answer
    assert "2 skipped dependent(s)" in answer.detail and "running again" in answer.detail
    assert rig.state.batches[batch].state == "running"
    assert rig.task(batch, "a").attempts == 0 and rig.task(batch, "a").error == ""
    assert rig.states(batch)["b"] == "pending" and rig.states(batch)["d"] == "pending"
    events = [m.event for m in rig.of(BatchEvent, since)]
    assert events[:2] == ["batch_reopened", "task_reopened"]
    assert events.count("task_reopened") == 3
    new = [a for a in rig.assigns(since) if a.task_id == "a"]
    assert new and new[0].attempt_id not in old_attempts  # a fresh attempt id

    rig.auto(lambda a: "done", step_s=30.0)  # the cause is fixed
    assert rig.states(batch) == {"a": "done", "b": "done", "d": "done", "c": "done"}
    assert rig.state.batches[batch].state == "complete"
    # the failed attempts stay on record for the summary
    assert len(rig.task(batch, "a").failures or []) == 2
    summaries = [c for c in rig.commands if isinstance(c, WriteFile)]
    assert summaries[-1].path.endswith("RUN_SUMMARY.md")


def test_a_late_result_of_an_old_attempt_stays_stale_after_a_retry():
    rig = Rig(BrainConfig(max_attempts=1))
    batch = failed_batch(rig, "a | cpu | false")
    old = next(a for a in rig.assigns() if a.task_id == "a")
    since = len(rig.sent)
    retry(rig, batch, "a")
    new = next(a for a in rig.assigns(since) if a.task_id == "a")
    rig.start(new)
    rig.done(old)  # the old attempt's result, very late: not the task's attempt
    assert rig.task(batch, "a").state == "running"
    rig.done(new)
    rig.done(new)  # a repeated result is recorded once
    assert rig.task(batch, "a").state == "done"
    assert rig.state.batches[batch].state == "complete"
    succeeded = [m for m in rig.of(BatchEvent, since) if m.event == "task_succeeded"]
    assert len(succeeded) == 1


def test_a_dependent_another_failure_skipped_stays_skipped():
    rig = Rig(BrainConfig(max_attempts=1))
    rig.worker("w", slots=2)
    batch = rig.submit(
        plan_text("a | cpu | false", "e | cpu | false", "b | cpu | true | a, e")
    ).batch_id
    rig.auto(lambda a: 2, step_s=30.0)
    assert rig.states(batch) == {"a": "failed", "e": "failed", "b": "skipped"}
    answer = retry(rig, batch, "a")
    assert isinstance(answer, Ack) and answer.ok
    assert rig.states(batch)["b"] == "skipped"
    rig.auto(lambda a: "done", step_s=30.0)
    assert rig.state.batches[batch].state == "failed"  # e is still failed
    assert retry(rig, batch, "e").ok  # type: ignore[union-attr]
    rig.auto(lambda a: "done", step_s=30.0)
    assert rig.states(batch) == {"a": "done", "e": "done", "b": "done"}
    assert rig.state.batches[batch].state == "complete"


def test_refusals_are_named_errors_and_change_nothing():
    rig = Rig(BrainConfig(max_attempts=1))
    batch = failed_batch(rig, "a | cpu | false", "b | cpu | true | a", "c | cpu | true")
    before = rig.states(batch)
    for batch_id, task_id, says in (
        ("nope", "a", "no batch nope"),
        (batch, "zz", "has no task zz"),
        (batch, "c", "is done, not failed"),
        (batch, "b", "is skipped, not failed"),
    ):
        answer = retry(rig, batch_id, task_id)
        assert isinstance(answer, Error) and answer.code == ErrorCode.REFUSED
        assert says in answer.detail
    assert rig.states(batch) == before
    assert rig.state.batches[batch].state == "failed"


def test_a_cancelled_batch_is_not_reopened():
    rig = Rig(BrainConfig(max_attempts=1))
    rig.worker("w", slots=1)
    batch = rig.submit(plan_text("a | cpu | false", "b | cpu | sleep 9")).batch_id
    rig.auto(
        lambda a: 2 if a.task_id == "a" else "hang",
        until=lambda: rig.task(batch, "a").state == "failed",
    )
    rig.msg(BatchCancel(batch_id=batch), src="cancel-1")
    answer = retry(rig, batch, "a")
    assert isinstance(answer, Error) and "was cancelled" in answer.detail


def test_a_task_of_a_running_batch_is_retried_while_the_rest_runs():
    rig = Rig(BrainConfig(max_attempts=1))
    rig.worker("w", slots=2)
    batch = rig.submit(plan_text("a | cpu | false", "b | cpu | sleep 9")).batch_id
    rig.auto(
        lambda a: 2 if a.task_id == "a" else "hang",
        until=lambda: rig.task(batch, "a").state == "failed",
    )
    assert rig.state.batches[batch].state == "running"
    answer = retry(rig, batch, "a")
    assert isinstance(answer, Ack) and "running again" not in answer.detail
    assert rig.task(batch, "a").state in ("ready", "assigned")


def test_retry_replays_from_the_journal_to_the_same_state():
    from llmo.brain.core import new_state, step

    rig = Rig(BrainConfig(max_attempts=1))
    batch = failed_batch(rig, "a | cpu | false", "b | cpu | true | a")
    retry(rig, batch, "a")
    rig.auto(lambda a: "done", step_s=30.0)
    state = new_state()
    for now, event in rig.events:
        state, _ = step(state, event, now)
    assert {t.id: t.state for t in state.batches[batch].tasks.values()} == rig.states(batch)
    assert state.batches[batch].state == "complete"
