"""Who may say what: each name has a role, each role a set of message types.

Theory of operation
-------------------
Every connection to the broker speaks under one name, and every name has a
role:

- ``brain``: the single name ``brain``. It alone assigns and cancels tasks,
  loads and unloads models, drains workers and answers the tools.
- ``worker``: the configured workers (``[[workers]]`` of ``llmo.toml``, or
  ``llmo broker --worker NAME``), the brain-role model worker included (it is
  a worker that says ``role = "brain"`` in its ``Register``). A worker
  registers, heartbeats and reports on its tasks and its model.
- ``supervisor``: the single name ``supervisor``, ``llmo up``'s supervisor of
  its child processes. It heartbeats, publishes its report of the children and
  answers the tools' supervisor requests; it addresses no one else.
- ``tool``: every other name (``llmo submit``, ``llmo tui``, rig-admin). A
  tool submits plans, cancels batches, retries failed tasks, asks for snapshots and sends control
  requests (load, unload, drain) to the brain, which checks and forwards them.
  A tool's supervisor requests (``supervisor.query``, ``child.restart``) go to
  ``supervisor`` and nowhere else; the supervisor restarts only a child it gave
  up on, named, never a command (``cli.supervisor``).

Workers and tools talk to the brain (and heartbeat to the broker); only the
brain addresses anyone. ``ALLOWED`` is the whole table; a message outside it
is refused with ``forbidden``. Messages the broker itself makes (``peer.up``,
``peer.down``) are never accepted from a peer.

With no worker list (``Roles(workers=None)``: plain loopback development,
``llmo broker`` alone), roles go by rule: ``brain`` is the brain, a name that
registers becomes a worker, any other name is a tool. With CurveZMQ keys a
connection's name is its key's name; a tool key may also speak as
``anything@KEY`` (so several tools with the Pi's key can run at once), and
never as another key's name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from llmo.proto.messages import BRAIN, BROKER, SUPERVISOR, MsgType


class Role(enum.StrEnum):
    BRAIN = "brain"
    WORKER = "worker"
    TOOL = "tool"
    SUPERVISOR = "supervisor"


# What a tool asks ``llmo up``'s supervisor: these go to ``supervisor`` only.
SUPERVISOR_REQUESTS = frozenset({MsgType.SUPERVISOR_QUERY, MsgType.CHILD_RESTART})


ALLOWED: dict[Role, frozenset[MsgType]] = {
    Role.BRAIN: frozenset(
        {
            MsgType.HEARTBEAT,
            MsgType.TASK_ASSIGN,
            MsgType.TASK_ASSIGNS,
            MsgType.TASK_CANCEL,
            MsgType.MODEL_LOAD,
            MsgType.MODEL_UNLOAD,
            MsgType.WORKER_DRAIN,
            MsgType.PLAN_ACCEPTED,
            MsgType.PLAN_REJECTED,
            MsgType.BATCH_EVENT,
            MsgType.BATCH_EVENTS,
            MsgType.SNAPSHOT_REPLY,
            MsgType.ACK,
            MsgType.ACKS,
            MsgType.ERROR,
        }
    ),
    Role.WORKER: frozenset(
        {
            MsgType.REGISTER,
            MsgType.HEARTBEAT,
            MsgType.TASK_STARTED,
            MsgType.TASK_PROGRESS,
            MsgType.TASK_DONE,
            MsgType.TASK_FAILED,
            MsgType.MODEL_STATUS,
        }
    ),
    Role.TOOL: frozenset(
        {
            MsgType.HEARTBEAT,
            MsgType.PLAN_SUBMIT,
            MsgType.BATCH_CANCEL,
            MsgType.TASK_RETRY,
            MsgType.SNAPSHOT_REQUEST,
            MsgType.MODEL_LOAD,
            MsgType.MODEL_UNLOAD,
            MsgType.WORKER_DRAIN,
            *SUPERVISOR_REQUESTS,
        }
    ),
    Role.SUPERVISOR: frozenset(
        {MsgType.HEARTBEAT, MsgType.SUPERVISOR_REPORT, MsgType.ACK, MsgType.ERROR}
    ),
}
# What a heartbeat may say its sender is, by role: a tool must not pose as a worker.
HEARTBEAT_ROLES: dict[Role, frozenset[str]] = {
    Role.BRAIN: frozenset({"client"}),
    Role.WORKER: frozenset({"worker", "brain"}),
    Role.TOOL: frozenset({"client"}),
    Role.SUPERVISOR: frozenset({"client"}),
}
KEY_SEPARATOR = "@"  # a tool's connection name: anything@KEY


@dataclass(frozen=True, slots=True)
class Roles:
    """The roles of a rig: the configured worker names (None: by rule, see above)."""

    workers: frozenset[str] | None = None

    @property
    def by_rule(self) -> bool:
        return self.workers is None

    def of(self, name: str) -> Role:
        """The role ``name`` starts with (by rule a tool becomes a worker when it registers)."""
        if name == BRAIN:
            return Role.BRAIN
        if name == SUPERVISOR:
            return Role.SUPERVISOR
        if self.workers is not None and name in self.workers:
            return Role.WORKER
        return Role.TOOL

    def may_register(self, name: str) -> bool:
        """Whether a connection named ``name`` may become a worker by registering."""
        return name not in (BRAIN, SUPERVISOR) and (self.workers is None or name in self.workers)

    def describe(self) -> str:
        if self.workers is None:
            return "roles by rule: 'brain' is the brain, names that register are workers"
        return f"workers {', '.join(sorted(self.workers)) or '(none)'}; other names are tools"


def key_owns(key: str, name: str, roles: Roles) -> bool:
    """Whether the CurveZMQ key named ``key`` may speak as ``name``: its own name, or
    for a tool key ``anything@key``."""
    if name == key:
        return True
    head, sep, owner = name.rpartition(KEY_SEPARATOR)
    return bool(sep and head) and owner == key and roles.of(key) is Role.TOOL


def refusal(role: Role, kind: MsgType, dst: str) -> str | None:
    """Why ``role`` may not send ``kind`` to ``dst``; None when it may."""
    if kind not in ALLOWED[role]:
        return f"a {role.value} may not send {kind.value!r}"
    if kind in SUPERVISOR_REQUESTS:
        return None if dst == SUPERVISOR else f"{kind.value!r} goes to {SUPERVISOR!r}, not {dst!r}"
    if role is Role.SUPERVISOR:
        return None  # its replies go to the tool that asked, its reports to the broker
    if role is not Role.BRAIN and dst not in (BRAIN, BROKER):
        return f"a {role.value} talks to the brain, not to {dst!r}"
    return None
