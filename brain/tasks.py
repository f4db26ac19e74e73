"""Task and batch lifecycle operations: release, start, finish, skip, requeue, end a batch.

Theory of operation
-------------------
Every change goes through ``move``, which applies the transition table of
``brain.state`` and keeps the batch's per-state counts exact; an illegal
change is logged and refused. Releasing is counted, not scanned: each task
knows how many dependencies are still not done (``waiting``) and each batch
maps a task to its dependents, so finishing one task touches only the tasks
that wait on it. A task that ends other than done skips everything that
depends on it. A foreach template is done when all the items it expanded
into are terminal (failed if any of them failed). When no task of a batch is
live any more the batch ends: ``complete``, or ``failed`` with an escalation
report; its run summary is written, and a batch that did not complete leaves
``results/batch_failure.json`` (see ``docs/history.md``).
"""

from __future__ import annotations

import collections
import heapq
import json

from llmo.brain import summary
from llmo.brain.commands import ReadManifest, WriteFile
from llmo.brain.ctx import Ctx, cut
from llmo.brain.state import Batch, TaskRun, Worker, advance
from llmo.proto.states import TASK_TERMINAL

LIVE_STATES = ("pending", "ready", "assigned", "running", "delayed", "expanding", "expanded")
GOAL_KEY = "#goal"  # the dependency of tasks that wait for a goal, not for its candidates
SUMMARY_ROWS_PER_S = 1_000  # a running batch of n tasks: n/this more seconds between rewrites


def move(cx: Ctx, batch: Batch, task: TaskRun, event: str) -> bool:
    old = task.state
    if advance(task, event) is None:
        cx.log("error", f"illegal transition: task {batch.id}/{task.id} is {old}, cannot {event}")
        return False
    counts = batch.counts
    counts[old] -= 1
    counts[task.state] += 1
    return True


def queue_key(cx: Ctx, task: TaskRun) -> str:
    """The ready queue a task waits in: tasks in one queue need the same kind of worker."""
    spec = task.spec
    cls = spec.task_class
    if cls == "llm":
        model = spec.llm_model or cx.cfg.default_model
        return f"llm:{model}:{spec.llm_placement or ''}"
    if cls != "meta" and (cls == "brain" or spec.executor == "brain"):
        return "brain"
    return cls


def enqueue(cx: Ctx, batch: Batch, task: TaskRun) -> None:
    key = queue_key(cx, task)
    queue = batch.ready.get(key)
    if queue is None:
        queue = batch.ready[key] = collections.deque()
    queue.append(task.id)
    cx.state.dispatch_due = True


def release(cx: Ctx, batch: Batch, task: TaskRun, *, quiet: bool = False) -> None:
    """All dependencies are done: the task becomes ready (a template asks for its items).

    ``quiet``: the caller announces many releases on the wire with one event
    (the items of a foreach that are free at once, by ``task_expanded``); each
    still gets its ``task_released`` line in the batch's events file.
    """
    if not move(cx, batch, task, "release"):
        return
    cx.publish(batch, "task_released", task, wire=not quiet)
    spec = task.spec
    if spec.foreach is not None and not task.parent:
        move(cx, batch, task, "expand")
        cx.out.append(ReadManifest(batch.id, task.id, spec.foreach, dict(batch.variables)))
        return
    enqueue(cx, batch, task)


def clear_attempt(task: TaskRun) -> None:
    """Forget the last attempt's worker, times and result (a requeued task starts clean)."""
    task.attempt_id = ""
    task.worker = ""
    task.assigned_at = task.started_at = task.last_progress_at = 0.0
    task.tokens = 0
    task.tok_s = 0.0
    task.exit_code = None
    task.cancel_stage = task.cancel_why = ""
    task.cancel_at = 0.0


def free_attempt(cx: Ctx, worker_name: str, attempt_id: str) -> None:
    worker = cx.state.workers.get(worker_name)
    if worker is not None and worker.attempts.pop(attempt_id, None) is not None:
        if not worker.attempts:
            worker.idle_since = cx.now
        cx.state.dispatch_due = True


def requeue(cx: Ctx, batch: Batch, task: TaskRun, why: str, *, delay: float = 0.0) -> None:
    """Back to the queue without spending an attempt (exit 75, a lost worker)."""
    if task.worker:
        free_attempt(cx, task.worker, task.attempt_id)
    if task.started_at:
        task.attempts -= 1  # the attempt was counted at its start: give it back
    worker = task.worker
    clear_attempt(task)
    if delay > 0:
        delay_until(cx, batch, task, cx.now + delay, why, worker=worker)
        return
    if move(cx, batch, task, "requeue"):
        cx.publish(batch, "task_retried", task, worker=worker, reason=why, spent=False)
        enqueue(cx, batch, task)


def delay_until(
    cx: Ctx, batch: Batch, task: TaskRun, when: float, why: str, *, worker: str = ""
) -> None:
    if not move(cx, batch, task, "retry"):
        return
    st = cx.state
    st.delay_seq += 1
    heapq.heappush(st.delayed, (when, st.delay_seq, batch.id, task.id))
    cx.publish(batch, "task_retried", task, worker=worker, reason=why, not_before=when)


def release_delayed(cx: Ctx) -> None:
    """Tasks whose backoff has passed go back to their ready queue."""
    st = cx.state
    heap = st.delayed
    while heap and heap[0][0] <= cx.now:
        _, _, batch_id, task_id = heapq.heappop(heap)
        batch = st.batches.get(batch_id)
        task = batch.tasks.get(task_id) if batch is not None else None
        if batch is None or task is None or task.state != "delayed" or batch.state != "running":
            continue
        move(cx, batch, task, "due")
        enqueue(cx, batch, task)


def start(cx: Ctx, batch: Batch, task: TaskRun) -> None:
    """The assigned attempt runs: it is spent from now on."""
    if task.state != "assigned":
        return
    move(cx, batch, task, "start")
    task.started_at = task.last_progress_at = cx.now
    if not task.first_started_at:
        task.first_started_at = cx.now
    task.attempts += 1
    cx.publish(batch, "task_started", task)


def succeed(cx: Ctx, batch: Batch, task: TaskRun, *, worker: str = "", **detail: object) -> None:
    """The task is done; ``worker`` names the one it ran on when ``task.worker`` does not."""
    if task.worker:
        free_attempt(cx, task.worker, task.attempt_id)
    if not move(cx, batch, task, "succeed"):
        return
    task.finished_at = cx.now
    # every keyword of publish named, so that ``detail`` only ever lands in the detail
    cx.publish(batch, "task_succeeded", task, worker=worker, jsonl=True, wire=True, **detail)
    on_terminal(cx, batch, task)


def fail(cx: Ctx, batch: Batch, task: TaskRun, error: str, **detail: object) -> None:
    """The task has failed for good: no more attempts; its dependents are skipped."""
    if task.worker:
        free_attempt(cx, task.worker, task.attempt_id)
    if not move(cx, batch, task, "fail"):
        return
    task.finished_at = cx.now
    task.error = cut(error)
    task.fail_reason = str(detail.get("reason") or "")
    # every keyword of publish named (see succeed)
    cx.publish(
        batch, "task_abandoned", task, worker="", jsonl=True, wire=True, error=task.error, **detail
    )
    on_terminal(cx, batch, task)


def on_terminal(cx: Ctx, batch: Batch, task: TaskRun) -> None:
    """Follow-ups of a task reaching a terminal state: release, skip, close templates."""
    batch.summary_due = True
    tasks = batch.tasks
    if task.state == "done":
        notify_expanded(cx, batch, task)
        for dep_id in batch.dependents.get(task.id, ()):
            satisfied(cx, batch, tasks[dep_id])
    elif task.state in ("failed", "skipped"):
        skip_dependents(cx, batch, task.id)
    if batch.goal is not None:  # before the template closes, so the round counts this task
        cx.goal_policy(cx, batch, task)
    if task.parent:
        parent = tasks[task.parent]
        parent.children_left -= 1
        if task.state != "done":
            parent.children_failed += 1
        if parent.children_left <= 0 and parent.state == "expanded":
            if parent.children_failed:
                fail(cx, batch, parent, f"{parent.children_failed} of its items did not succeed")
            else:
                succeed(cx, batch, parent)
    if batch.state == "running" and not any(batch.counts[s] for s in LIVE_STATES):
        end_batch(cx, batch)


def satisfied(cx: Ctx, batch: Batch, dependent: TaskRun) -> None:
    """One more dependency of ``dependent`` is done."""
    dependent.waiting -= 1
    if dependent.waiting <= 0 and dependent.state == "pending":
        release(cx, batch, dependent)


def notify_expanded(cx: Ctx, batch: Batch, task: TaskRun) -> None:
    """A template's items exist now: templates with per-item dependencies on it may expand."""
    for dep_id in batch.dependents.pop(expansion_key(task.id), ()):
        satisfied(cx, batch, batch.tasks[dep_id])


def expansion_key(task_id: str) -> str:
    """The dependency of tasks that wait for a template's expansion, not its completion."""
    return task_id + "#expanded"


def in_pipeline(batch: Batch, task: TaskRun) -> bool:
    """Whether ``task`` is a candidate of the batch's goal (a failure there is a rejection)."""
    g = batch.goal
    if g is None:
        return False
    return (task.parent or task.id) in g.members


def skip_dependents(cx: Ctx, batch: Batch, task_id: str) -> None:
    stack = [task_id]
    tasks = batch.tasks
    dependents = batch.dependents
    while stack:
        top = stack.pop()
        # (a skipped template never expands: its per-item dependents stay listed,
        # for a retry that re-opens it, ``brain.reopen``)
        for dep_id in [*dependents.get(top, ()), *dependents.get(expansion_key(top), ())]:
            dependent = tasks[dep_id]
            if dependent.state == "pending":
                move(cx, batch, dependent, "skip")
                dependent.finished_at = cx.now
                cx.publish(batch, "task_skipped", dependent, because=task_id)
                stack.append(dep_id)
                if dependent.parent:
                    on_terminal_parent_only(cx, batch, dependent)


def on_terminal_parent_only(cx: Ctx, batch: Batch, task: TaskRun) -> None:
    parent = batch.tasks[task.parent]
    parent.children_left -= 1
    parent.children_failed += 1
    if parent.children_left <= 0 and parent.state == "expanded":
        fail(cx, batch, parent, f"{parent.children_failed} of its items did not succeed")


def end_batch(cx: Ctx, batch: Batch, *, event: str | None = None) -> None:
    """Every task is terminal (or the batch was cancelled): close it and write its history."""
    if event is None:
        if batch.goal is None:
            failed = batch.counts["failed"] > 0
        else:  # failures inside a goal's pipeline are rejected candidates
            failed = batch.goal.state != "reached" or any(
                t.state == "failed" and not in_pipeline(batch, t) for t in batch.tasks.values()
            )
        event = "fail" if failed else "complete"
    if advance(batch, event) is None:
        cx.log("error", f"illegal transition: batch {batch.id} is {batch.state}, cannot {event}")
        return
    batch.finished_at = cx.now
    batch.ready.clear()
    name = {"complete": "batch_completed", "fail": "batch_failed", "cancel": "batch_cancelled"}
    cx.publish(batch, name[event], counts=dict(+batch.counts))
    if batch.state != "complete":  # first, so that the summary's artifact_counts count it
        failure = summary.batch_failure(batch, cx.now)
        text = json.dumps(failure, indent=2, ensure_ascii=False, default=str) + "\n"
        cx.out.append(WriteFile(f"{batch.history_path}/results/batch_failure.json", text))
    write_summary(cx, batch)
    if batch.state == "failed":
        cx.out.append(
            WriteFile(f"{batch.history_path}/ESCALATION.md", summary.escalation(batch, cx.now))
        )
    if not cx.state.active_batches():
        cx.state.idle_since = cx.now


def forget_finished(cx: Ctx) -> None:
    """Drop long-finished batches from memory; their history stays on disk.

    Keeps the newest ``keep_finished`` finished batches whatever their age,
    and any batch with an attempt still out on a worker (its result must
    still find the batch to be recognised as stale).
    """
    st = cx.state
    cfg = cx.cfg
    finished = [b for b in st.batches.values() if b.state != "running"]
    if len(finished) <= cfg.keep_finished:
        return
    finished.sort(key=lambda b: (b.finished_at, b.seq))
    out = {batch_id for w in st.workers.values() for batch_id, _, _ in w.attempts.values()}
    for batch in finished[: len(finished) - cfg.keep_finished]:
        if cx.now - batch.finished_at < cfg.forget_after_s or batch.id in out:
            continue
        del st.batches[batch.id]
        cx.publish(None, "batch_forgotten", batch_id=batch.id, state=batch.state)


def write_summary(cx: Ctx, batch: Batch) -> None:
    """RUN_SUMMARY.json and .md, announced by a ``summary_refreshed`` line first (so the
    summary's ``event_counts`` include it). The files of the batch folder are counted
    for ``artifact_counts`` only once the batch has ended or was interrupted."""
    batch.summary_due = False
    batch.summary_at = cx.now
    status = summary.status_of(batch)
    cx.publish(batch, "summary_refreshed", wire=False, status=status, counts=dict(+batch.counts))
    data = summary.run_summary(batch, cx.now)
    history = batch.history_path
    scan = "count" if batch.state != "running" or batch.interrupted_at else "none"
    cx.out.append(WriteFile(f"{history}/RUN_SUMMARY.json", summary.to_json(batch, data), scan))
    cx.out.append(WriteFile(f"{history}/RUN_SUMMARY.md", summary.to_markdown(batch, data)))


def refresh_summaries(cx: Ctx) -> None:
    """Rewrite the summaries of running batches that changed, at most every interval.
    A rewrite encodes a row per task, so a batch of n tasks waits a further n/1000 s:
    a run spends at most about a row per task per second of its length on them."""
    for batch in cx.state.batches.values():
        if batch.summary_due and batch.state == "running":
            interval = cx.cfg.summary_interval_s + len(batch.tasks) / SUMMARY_ROWS_PER_S
            if cx.now - batch.summary_at >= interval:
                write_summary(cx, batch)


def is_terminal(task: TaskRun) -> bool:
    return task.state in TASK_TERMINAL


def worker_of(cx: Ctx, task: TaskRun) -> Worker | None:
    return cx.state.workers.get(task.worker) if task.worker else None
