"""The monitor's run controls: retry a task, resume or re-run a batch, cancel all,
start a plan, and llmo's actions in the command palette (ctrl+p).

Theory of operation
-------------------
Each control asks first (a ``ConfirmScreen``, or a ``PromptScreen`` for a
plan path), then hands its request to the feed, which sends it to the brain
and brings the answer back as an ``ActionResult``: it lands in the events
pane and as a notification. Like the app's other actions they are refused
while the link is not live.

- retry (``R``, on a failed task): ``TaskRetry``; the brain re-opens the task
  with a fresh attempt budget, its skipped dependents and its batch.
- resume (``E``, on a failed or cancelled batch): the batch's plan submitted
  again with ``RUN_MODE: resume`` and ``RESUME_BATCH_ID`` (what
  ``llmo submit --resume`` sends): the tasks that succeeded stay done.
- re-run (``N``): a fresh batch of the same plan with the same settings
  (less the keys that named the old batch).
- cancel all (``C``): a ``BatchCancel`` for every running batch.
- start a plan (``p``): ``PATH [KEY=VALUE ...]``; a ``plan.md`` path means
  its folder, a relative one is taken from the monitor's folder, a value is
  read as JSON where it is JSON (``3``, ``true``) and as text otherwise.

Plan submissions are answered with ``PlanAccepted`` (the new batch id) or
``PlanRejected`` (every error, shown in full).

``LlmoCommands`` is a Textual command ``Provider``: the palette lists these
actions and the older ones (cancel, drain, load, unload, refresh, help) by
name, each running the same method its key runs.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from textual.command import DiscoveryHit, Hit, Hits, Provider

from llmo.proto.messages import BRAIN, BatchCancel, PlanSubmit, TaskRetry
from llmo.tui.rows import BatchRow
from llmo.tui.screens import ConfirmScreen, PromptScreen

if TYPE_CHECKING:
    from llmo.tui.app import MonitorApp

PLAN_FILE = "plan.md"
# The config keys that name a batch: a re-run leaves them out, a resume sets them.
RUN_KEYS = ("RUN_MODE", "RESUME_BATCH_ID", "BATCH_ID")


def parse_start(text: str, cwd: str = "") -> tuple[str, dict[str, Any]]:
    """``PATH [KEY=VALUE ...]`` as (plan folder, config); ``ValueError`` names what is wrong."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split {text!r}: {exc}") from None
    if not words:
        raise ValueError("give the plan's folder (or its plan.md), then any KEY=VALUE settings")
    path, pairs = words[0], words[1:]
    if "=" in path and os.sep not in path:
        raise ValueError(f"{path!r} looks like a setting: give the plan's folder first")
    if os.path.basename(path.rstrip(os.sep)) == PLAN_FILE:
        path = os.path.dirname(path.rstrip(os.sep)) or "."
    if not os.path.isabs(path):
        path = os.path.normpath(os.path.join(cwd or os.getcwd(), path))
    config: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum():
            raise ValueError(f"{pair!r} is not a KEY=VALUE setting (e.g. TARGET_COUNT=10)")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        if isinstance(value, dict | list):
            value = raw  # a setting is a plain value; the text stays as typed
        config[key] = value
    return path, config


def rerun_config(batch: BatchRow) -> dict[str, Any]:
    """The settings of a fresh run of ``batch``'s plan: its own, less the run keys."""
    return {k: v for k, v in batch.config.items() if k not in RUN_KEYS}


def resume_config(batch: BatchRow) -> dict[str, Any]:
    """The settings that re-enter ``batch`` (``llmo submit --resume``)."""
    return {**rerun_config(batch), "RUN_MODE": "resume", "RESUME_BATCH_ID": batch.id}


def _retry_target(app: MonitorApp) -> tuple[str, str] | None:
    batch_id = app.model.selected_batch
    row = app.task_list.current if batch_id else None
    if row is None:
        app.notify("no task selected: pick a failed task in the task table", severity="warning")
        return None
    if row.state != "failed":
        app.notify(f"task {row.id} is {row.state or 'unknown'}, not failed", severity="warning")
        return None
    return batch_id, row.id


def retry_task(app: MonitorApp) -> None:
    target = _retry_target(app)
    if target is None or not app._can_act():
        return
    batch_id, task_id = target
    question = (
        f"Retry task {task_id} of batch {batch_id}?\n"
        "It gets a fresh attempt budget; the tasks it skipped wait for it again, "
        "and the batch runs again if it had failed."
    )

    def answer(yes: bool | None) -> None:
        if yes:
            msg = TaskRetry(
                dst=BRAIN, batch_id=batch_id, task_id=task_id, reason="retried from llmo tui"
            )
            app._send(f"retry {batch_id}/{task_id}", msg)

    app.push_screen(ConfirmScreen(escape(question)), answer)


def _ended_batch(app: MonitorApp, verb: str) -> BatchRow | None:
    batch = app.model.batches.get(app.model.selected_batch)
    if batch is None:
        app.notify("no batch selected", severity="warning")
        return None
    if batch.state not in ("failed", "cancelled"):
        app.notify(
            f"batch {batch.id} is {batch.state}: only a failed or cancelled batch is {verb}",
            severity="warning",
        )
        return None
    if not batch.plan_path:
        app.notify(f"the plan of batch {batch.id} is not known yet", severity="warning")
        return None
    return batch


def resume_batch(app: MonitorApp) -> None:
    batch = _ended_batch(app, "resumed")
    if batch is None or not app._can_act():
        return
    config = resume_config(batch)
    question = (
        f"Resume batch {batch.id} ({batch.plan or 'plan'})?\n"
        f"Its tasks that succeeded stay done; the rest run again.\nplan {batch.plan_path}"
    )
    _confirm_submit(app, question, f"resume {batch.id}", batch.plan_path, config)


def rerun_batch(app: MonitorApp) -> None:
    batch = _ended_batch(app, "re-run")
    if batch is None or not app._can_act():
        return
    config = rerun_config(batch)
    settings = ", ".join(f"{k}={v}" for k, v in config.items()) or "none"
    question = (
        f"Run the plan of batch {batch.id} ({batch.plan or 'plan'}) again, as a new batch?\n"
        f"plan {batch.plan_path}\nsettings {settings}"
    )
    _confirm_submit(app, question, f"re-run {batch.id}", batch.plan_path, config)


def _confirm_submit(
    app: MonitorApp, question: str, label: str, plan_path: str, config: dict[str, Any]
) -> None:
    def answer(yes: bool | None) -> None:
        if yes:
            app._send(label, PlanSubmit(dst=BRAIN, plan_path=plan_path, config=config))

    app.push_screen(ConfirmScreen(escape(question)), answer)


def cancel_all(app: MonitorApp) -> None:
    running = [b for b in app.model.batch_order() if not b.finished]
    if not running:
        app.notify("no batch is running", severity="warning")
        return
    if not app._can_act():
        return
    names = ", ".join(b.id for b in running[:5]) + (" ..." if len(running) > 5 else "")
    question = (
        f"Cancel all {len(running)} running batch(es)?\n{names}\n"
        "Their running attempts are aborted and the rest skipped."
    )

    def answer(yes: bool | None) -> None:
        if yes:
            for batch in running:
                msg = BatchCancel(dst=BRAIN, batch_id=batch.id, reason="cancel all, llmo tui")
                app._send(f"cancel {batch.id}", msg)

    app.push_screen(ConfirmScreen(escape(question)), answer)


def start_plan(app: MonitorApp) -> None:
    if not app._can_act():
        return
    question = "Start which plan? PLAN_DIR or its plan.md, then KEY=VALUE ..."

    def answer(text: str | None) -> None:
        if not text:
            return
        try:
            path, config = parse_start(text)
        except ValueError as exc:
            app.model.note(app.clock(), "error", f"start plan: {exc}")
            app.redraw()
            app.notify(f"start plan: {exc}", severity="error", timeout=8, markup=False)
            return
        if app._can_act():
            app._send(f"start {path}", PlanSubmit(dst=BRAIN, plan_path=path, config=config))

    app.push_screen(PromptScreen(question, placeholder="/srv/plans/hello TARGET_COUNT=10"), answer)


# name, help, the app's method (each key's action)
PALETTE: tuple[tuple[str, str, str], ...] = (
    ("Cancel batch", "cancel the selected batch (c)", "action_cancel_batch"),
    ("Cancel all batches", "cancel every running batch (C)", "action_cancel_all"),
    ("Retry task", "run the selected failed task again (R)", "action_retry_task"),
    (
        "Resume batch",
        "re-enter the selected failed batch: the rest runs (E)",
        "action_resume_batch",
    ),
    ("Re-run batch", "a new batch of the selected batch's plan (N)", "action_rerun_batch"),
    ("Start plan", "submit a plan folder with KEY=VALUE settings (p)", "action_start_plan"),
    ("Drain / undrain worker", "drain the selected worker, or undrain it (d)", "action_drain"),
    ("Load model", "load a model on the selected worker (l)", "action_load"),
    ("Unload model", "unload the selected worker's model (u)", "action_unload"),
    (
        "Restart worker",
        "start again the selected worker llmo up gave up on (x)",
        "action_restart_worker",
    ),
    ("Refresh", "take a fresh snapshot from the brain (r)", "action_resync"),
    ("Help", "the keys (?)", "action_help"),
)


class LlmoCommands(Provider):
    """llmo's actions in the command palette."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        app = self.app
        return [(name, text, partial(_call, app, method)) for name, text, method in PALETTE]

    async def discover(self) -> Hits:
        for name, text, run in self._commands():
            yield DiscoveryHit(name, run, help=text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, text, run in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), run, help=text)


def _call(app: Any, method: str) -> None:
    getattr(app, method)()
