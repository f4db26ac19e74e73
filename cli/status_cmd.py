"""``llmo status``: the rig at a glance (workers, batches), or as stable JSON.

``--json`` prints one object::

    {"rev": 42, "broker": "tcp://...", "rig": "rig NAME at tcp://..." (else "broker ..."),
     "workers": [{"name", "role", "state", "model", "slots", "slots_free",
                  "vram_budget_mb", "vram_used_mb", "attempts", "tok_s",
                  "endpoint" (its OpenAI-compatible endpoint, on its host),
                  "gpu": {"available", "temperature_c", "vram_used_mb",
                          "vram_total_mb", "power_w", ...}, ...}],
     "batches": [{"id", "plan", "state", "priority_name", "tasks",
                  "counts": {"done": 3, "running": 1, ...}, ...}]}

``"supervisor"`` is ``llmo up``'s report of its children (``SupervisorReport``:
``children`` with each one's ``name``, ``state`` — ``running``, ``restarting``,
``given_up``, ``config_error``, ``stopping`` —, ``restarts``, ``exit_code`` and
``reason``, the last line of its log), or ``{"absent": SENTENCE}`` where no
``llmo up`` supervises the rig (systemd units: the sentence names the
``systemctl`` commands). The table lists the children given up on, each
with its reason and the ``llmo restart`` that starts it again.

The table opens with the rig it talks to (``rig NAME at ENDPOINT``, the
name from ``[rig] name`` of the llmo.toml, else ``broker ENDPOINT``) and lists
running batches first, then the others, newest first. Each entry is the wire
map of a snapshot record (``WorkerInfo``, ``BatchInfo``); a worker's
``gpu`` is ``{}`` until it reports telemetry. Keys listed above are stable;
others may be added. ``--wait-ready S`` polls
until the brain answers and every expected worker (``--expect`` names, or the
workers of ``--config``) is registered and not down: exit 0, else exit 1
naming what is missing.

``--tasks [BATCH]`` prints one row per task (of BATCH, else of the running
batches): id, state, attempts, worker, duration, last error. ``--task ID``
shows one task in detail: its state and attempts (each attempt from the
batch's ``batch_events.jsonl`` when this machine can read the history
folder), its log's path and the last ``--lines`` lines of it; ``--batch``
names its batch when the id is in more than one. Both take ``--json``; see
``cli.task_view``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from llmo.cli.common import add_endpoint_flags
from llmo.cli.task_view import show_task, show_tasks
from llmo.cli.tools import add_tool_flags, fail, open_session, rig_label
from llmo.proto.messages import (
    BRAIN,
    BatchInfo,
    SnapshotReply,
    SnapshotRequest,
    SupervisorReport,
    WorkerInfo,
)
from llmo.proto.session import Session, ToolError
from llmo.proto.states import BATCH_TERMINAL


def configure(parser: argparse.ArgumentParser) -> None:
    add_endpoint_flags(parser)
    add_tool_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the state as JSON")
    parser.add_argument(
        "--wait-ready",
        type=float,
        metavar="SECONDS",
        help="wait until the brain answers and the expected workers are registered",
    )
    parser.add_argument(
        "--expect", default="", help="comma-separated worker names --wait-ready waits for"
    )
    parser.add_argument("--config", help="llmo.toml: its workers are the ones expected")
    parser.add_argument(
        "--tasks",
        nargs="?",
        const="",
        metavar="BATCH",
        help="one row per task: of BATCH, else of the running batches",
    )
    parser.add_argument(
        "--task", metavar="ID", help="one task in detail: its attempts and the end of its log"
    )
    parser.add_argument("--batch", default="", help="the batch of --task (when ids repeat)")
    parser.add_argument("--lines", type=int, default=20, help="log lines --task shows (default 20)")


def snapshot(session: Session, batch_id: str = "") -> SnapshotReply:
    reply = session.ask(SnapshotRequest(dst=BRAIN, batch_id=batch_id))
    if not isinstance(reply, SnapshotReply):
        raise ToolError(f"unexpected reply {reply.TYPE.value!r} to a snapshot request")
    return reply


def expected_workers(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in args.expect.split(",") if n.strip()]
    if args.config:
        from llmo.cli.config import load

        names += [w.name for w in load(args.config).workers]
    return names


def wait_ready(session: Session, expected: list[str], seconds: float) -> tuple[bool, str]:
    deadline = time.monotonic() + seconds
    problem = "the brain did not answer"
    while True:
        try:
            reply = snapshot(session)
        except ToolError as exc:
            problem = str(exc)
        else:
            up = {w.name for w in reply.workers if w.state != "down"}
            missing = [n for n in expected if n not in up]
            if not missing:
                return True, f"ready: brain answered, {len(up)} worker(s) up"
            problem = f"brain answered; workers not registered yet: {', '.join(missing)}"
        if time.monotonic() >= deadline:
            return False, f"not ready after {seconds:g} s: {problem}"
        time.sleep(0.25)


def gpu_text(w: WorkerInfo) -> tuple[str, str]:
    """(temperature, VRAM) columns: NVML figures, or why there are none."""
    gpu = w.gpu
    if gpu is None:
        return "-", "-"
    if not gpu.available:
        return "no GPU", "-"
    temp = gpu.temperature_c
    used, total = gpu.vram_used_mb, gpu.vram_total_mb
    vram = f"{used}/{total}" if used is not None and total else "-"
    return (f"{temp:.0f}C" if temp is not None else "-"), vram


def worker_json(w: WorkerInfo) -> dict[str, Any]:
    out = w.to_wire()
    if out["gpu"] is None:
        out["gpu"] = {}
    return out


def batch_order(batch: BatchInfo) -> tuple[bool, float]:
    """Running batches first (oldest first: the queue's order), then the rest, newest first."""
    running = batch.state not in BATCH_TERMINAL
    return (not running, batch.created_at if running else -batch.created_at)


SUPERVISOR_TIMEOUT_S = 2.0  # llmo up answers from its loop, at most 0.2 s away


def supervision(session: Session) -> SupervisorReport | str:
    """``llmo up``'s report of its children, or why there is none (a sentence)."""
    from llmo.cli.restart_cmd import children

    timeout, session.timeout = session.timeout, min(session.timeout, SUPERVISOR_TIMEOUT_S)
    try:
        return children(session)
    except ToolError as exc:
        return str(exc)
    finally:
        session.timeout = timeout


def supervision_json(report: SupervisorReport) -> dict[str, Any]:
    return {
        "host": report.host,
        "pid": report.pid,
        "rig_dir": report.rig_dir,
        "max_restarts": report.max_restarts,
        "window_s": report.window_s,
        "children": [c.to_wire() for c in report.children],
    }


def supervision_lines(found: SupervisorReport | str) -> list[str]:
    """The children given up on, for the table (nothing when all run)."""
    from llmo.cli.restart_cmd import given_up_text

    if isinstance(found, str):
        return [f"children: {found}"]
    stopped = [c for c in found.children if c.state in ("given_up", "config_error")]
    lines = []
    for child in sorted(stopped, key=lambda c: c.name):
        lines.append(f"GIVEN UP {child.name}: {given_up_text(child, found)}")
        if child.state == "given_up":
            lines.append(f"  start it again: llmo restart {child.name}")
    return lines


def render(reply: SnapshotReply, where: str = "") -> str:
    """The status table; ``where`` (``rig NAME at ENDPOINT``) heads it when given."""
    lines = [where] if where else []
    lines += [f"brain: disk full: {reply.disk_full}"] if reply.disk_full else []
    lines += [
        f"{'WORKER':14} {'ROLE':7} {'STATE':12} {'SLOTS':6} {'TEMP':7} {'GPU MB':>11} "
        f"{'TOK/S':>6}  MODEL"
    ]
    for w in sorted(reply.workers, key=lambda w: w.name):
        slots = f"{w.slots - w.slots_free}/{w.slots}"
        temp, vram = gpu_text(w)
        model = (w.model or "-").rsplit("/", 1)[-1]
        state = w.state or "-"
        if w.constraint:
            model += f"  ({w.constraint})"
        lines.append(
            f"{w.name:14} {w.role:7} {state:12} {slots:6} {temp:7} {vram:>11} "
            f"{w.tok_s:6.1f}  {model}"
        )
    if not reply.workers:
        lines.append("(no workers registered)")
    lines.append("")
    lines.append(f"{'BATCH':18} {'PLAN':20} {'STATE':10} {'PRIO':6} PROGRESS")
    for b in sorted(reply.batches, key=batch_order):
        counts = b.counts
        total = b.tasks or sum(counts.values())
        done = counts.get("done", 0)
        rest = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "done")
        progress = f"{done}/{total} done" + (f" ({rest})" if rest else "")
        lines.append(f"{b.id:18} {b.plan[:20]:20} {b.state:10} {b.priority_name:6} {progress}")
    if not reply.batches:
        lines.append("(no batches)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    session = open_session(args, "status")
    try:
        if args.wait_ready is not None:
            ok, message = wait_ready(session, expected_workers(args), args.wait_ready)
            print(message, file=sys.stdout if ok else sys.stderr)
            return 0 if ok else 1
        batch_id = ""
        if args.tasks is not None or args.task:
            batch_id = args.tasks or args.batch
        reply = snapshot(session, batch_id)
        plain = args.tasks is None and not args.task
        found = supervision(session) if plain else ""
    except ToolError as exc:
        return fail("status", exc)
    finally:
        session.close()
    if args.task:
        return show_task(reply, args.task, args.batch, args.lines, args.json)
    if args.tasks is not None:
        return show_tasks(reply, args.tasks, args.json)
    if args.json:
        out = {
            "rev": reply.rev,
            "broker": session.endpoints.broker,
            "rig": rig_label(args, session.endpoints),
            "workers": [worker_json(w) for w in reply.workers],
            "batches": [b.to_wire() for b in reply.batches],
            "disk_full": reply.disk_full,
            "supervisor": (
                {"absent": found} if isinstance(found, str) else supervision_json(found)
            ),
        }
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(render(reply, rig_label(args, session.endpoints)))
        extra = supervision_lines(found)
        if extra:
            print("\n" + "\n".join(extra))
    return 0
