"""Re-opening a failed task on the operator's word (``TaskRetry``).

Theory of operation
-------------------
A task that spent all its attempts fails for good and skips its dependents;
when the last live task ends, its batch ends ``failed``. Once the operator
has fixed the cause (a missing file, a full disk, a model that would not
load), ``TaskRetry`` gives that task another run instead of a whole new
batch.

``refusal`` is the decision, a pure look at the state: it names why a retry
cannot be done (no such batch or task, a task that has not failed, a batch
that was cancelled, a batch steered by a goal, a foreach template or item)
or returns ``""``. ``reopen`` carries it out:

- the task goes ``failed -reopen-> pending`` with a fresh attempt budget
  (``attempts``, lost workers and refusals at zero, the last attempt
  forgotten; ``seq`` goes on, so no attempt id is ever handed out twice and
  a late result of an old attempt stays stale); its failed attempts stay in
  ``failures`` for the summary and escalation report;
- the dependents it skipped go ``skipped -reopen-> pending`` again, each
  only once none of its dependencies is still failed, skipped or cancelled
  (a dependent that another failure skipped stays skipped);
- a batch that had ended ``failed`` goes ``failed -reopen-> running``; its
  ``ESCALATION.md`` and ``results/batch_failure.json`` are removed (they
  would say it failed; its events file keeps the whole story) and written
  again if it fails again;
- the task is released if its dependencies are done, and runs as any other.

Everything is published (``task_reopened``, ``batch_reopened``) and, since
the ``TaskRetry`` itself is journaled before its commands run, a replay of
the journal re-opens the same task at the same point.
"""

from __future__ import annotations

from llmo.brain import tasks
from llmo.brain.commands import RemoveFile
from llmo.brain.ctx import Ctx
from llmo.brain.state import Batch, BrainState, TaskRun, advance
from llmo.brain.tasks import expansion_key
from llmo.proto.states import TASK_UNSUCCESSFUL


def refusal(state: BrainState, batch_id: str, task_id: str) -> str:
    """Why task ``task_id`` of batch ``batch_id`` cannot be retried; ``""`` when it can."""
    batch = state.batches.get(batch_id)
    if batch is None:
        return f"no batch {batch_id} (the brain holds no such batch, or has forgotten it)"
    task = batch.tasks.get(task_id)
    if task is None:
        return f"batch {batch_id} has no task {task_id}"
    if task.state != "failed":
        return f"task {task_id} of batch {batch_id} is {task.state}, not failed"
    if batch.state not in ("running", "failed"):
        return f"batch {batch_id} was {batch.state}: submit it again (or resume it) instead"
    if batch.goal is not None:
        return (
            f"batch {batch_id} is steered by a goal, which decides what runs again: "
            "resume the batch instead"
        )
    if task.parent:
        return (
            f"task {task_id} is an item of foreach template {task.parent}: "
            "resume the batch to run its failed items again"
        )
    if task.spec.foreach is not None:
        return (
            f"task {task_id} is a foreach template: resume the batch to run its failed items again"
        )
    return ""


def reopen(cx: Ctx, batch: Batch, task: TaskRun, why: str) -> list[str]:
    """Carry out a retry ``refusal`` allowed; the ids of the skipped dependents re-opened."""
    if batch.state == "failed":
        advance(batch, "reopen")
        batch.finished_at = 0.0
        batch.end_reason = ""
        cx.publish(batch, "batch_reopened", retried=task.id, reason=why)
        for name in ("ESCALATION.md", "results/batch_failure.json"):
            cx.out.append(RemoveFile(f"{batch.history_path}/{name}"))
    _reopen_task(cx, batch, task)
    task.attempts = 0
    task.lost_workers = 0
    task.refusals = 0
    task.lost_attempts = None
    cx.publish(batch, "task_reopened", task, reason=why)
    back = _reopen_dependents(cx, batch, task.id)
    batch.summary_due = True
    if task.waiting <= 0:
        tasks.release(cx, batch, task)
    cx.state.dispatch_due = True
    return back


def _reopen_task(cx: Ctx, batch: Batch, task: TaskRun) -> None:
    tasks.move(cx, batch, task, "reopen")
    tasks.clear_attempt(task)
    task.finished_at = 0.0
    task.error = ""
    task.fail_reason = ""


def _reopen_dependents(cx: Ctx, batch: Batch, task_id: str) -> list[str]:
    """Skipped tasks downstream of ``task_id`` whose dependencies may all succeed again."""
    by_id = batch.tasks
    reachable: list[str] = []
    seen = {task_id}
    stack = [task_id]
    while stack:
        top = stack.pop()
        for dep_id in [
            *batch.dependents.get(top, ()),
            *batch.dependents.get(expansion_key(top), ()),
        ]:
            dependent = by_id[dep_id]
            if dep_id not in seen and dependent.state == "skipped" and not dependent.parent:
                seen.add(dep_id)
                reachable.append(dep_id)
                stack.append(dep_id)
    back: list[str] = []
    changed = True
    while changed:  # to a fixed point: a dependent may wait on another re-opened one
        changed = False
        for dep_id in reachable:
            dependent = by_id[dep_id]
            if dependent.state != "skipped" or any(
                by_id[d].state in TASK_UNSUCCESSFUL for d in dependent.deps if d in by_id
            ):
                continue
            _reopen_task(cx, batch, dependent)
            cx.publish(batch, "task_reopened", dependent, because=task_id)
            back.append(dep_id)
            changed = True
    return back
