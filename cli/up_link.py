"""``llmo up``'s link to the broker: the operator's view of its children, and restarts.

Theory of operation
-------------------
The TUI on the Pi reaches the rig only through the broker, so ``llmo up``
joins the broker too, as one more peer under the reserved name
``supervisor`` (role ``supervisor``, ``broker.roles``). With CurveZMQ it
connects with the key pair ``supervisor`` of the rig's keys folder (``llmo
keys generate`` makes it): the broker gives that name to no other key, so no
tool can pose as the supervisor. Without that key ``llmo up`` runs as before
and says that restarts over the broker are off.

Between two polls of its children ``llmo up`` serves the link (``serve``):

- a ``SupervisorQuery`` (from a tool) is answered with a ``SupervisorReport``:
  every child with its state, pid, restarts in the window and, for one given
  up on, the last line of its log;
- a ``ChildRestart`` is answered with an ``Ack``: ``Supervisor.restart``
  restarts the named child only if the supervisor gave up on it, with its
  restart window reset; anything else is refused with the reason
  (``cli.supervisor.restart_refusal``). The request names a child: the argv
  each child runs is fixed when ``llmo up`` starts, so no request can make it
  run another command, and a hostile tool can at most start again a child that
  had stopped crashing the rig;
- a ``SupervisorReport`` goes to the broker, which publishes it to every
  monitor, whenever a child's state changes and every ``REPORT_EVERY_S``.

Under systemd there is no ``llmo up``: the broker answers for the absent
supervisor (``broker.service``, ``proto.session``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from llmo.cli.supervisor import Supervisor
from llmo.proto.client import Client
from llmo.proto.messages import (
    BROKER,
    SUPERVISOR,
    Ack,
    ChildRestart,
    Error,
    SupervisorQuery,
    SupervisorReport,
)
from llmo.proto.security import ClientKeys, SecurityError

log = logging.getLogger("llmo.up")

REPORT_EVERY_S = 5.0


class UpLink:
    """The supervisor's connection to the broker; ``serve`` from ``llmo up``'s loop."""

    def __init__(
        self,
        supervisor: Supervisor,
        endpoint: str,
        *,
        keys: ClientKeys | None,
        rig_dir: str = "",
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.supervisor = supervisor
        self.rig_dir = rig_dir
        self.client = Client(SUPERVISOR, endpoint, keys=keys, heartbeat_interval=interval)
        self._clock = clock
        self._last: tuple[tuple[str, str, int], ...] = ()
        self._next_report = 0.0

    def report(self, reply_to: str = "", dst: str = BROKER) -> SupervisorReport:
        policy = self.supervisor.policy
        return SupervisorReport(
            dst=dst,
            reply_to=reply_to,
            host=socket.gethostname(),
            pid=os.getpid(),
            rig_dir=self.rig_dir,
            max_restarts=policy.max_restarts,
            window_s=policy.window_s,
            children=self.supervisor.report(),
        )

    def serve(self, seconds: float) -> None:
        """Answer requests for up to ``seconds``; heartbeat and publish when due."""
        deadline = self._clock() + seconds
        while True:
            self.client.tick()
            self.publish()
            left = deadline - self._clock()
            if left <= 0:
                return
            msg = self.client.recv(timeout=min(left, self.client.heartbeat_due_in() or left))
            if msg is None:
                continue
            if isinstance(msg, SupervisorQuery):
                self.client.send(self.report(reply_to=msg.id, dst=msg.src))
            elif isinstance(msg, ChildRestart):
                ok, detail = self.supervisor.restart(msg.child)
                log.info("restart of %r asked by %s: %s", msg.child, msg.src, detail)
                self.client.send(Ack(dst=msg.src, reply_to=msg.id, ok=ok, detail=detail))
                self.publish(force=True)
            elif isinstance(msg, Error):
                log.warning("broker: %s: %s", msg.code, msg.detail)

    def publish(self, force: bool = False) -> None:
        """A report to the broker (published) on a change, or when one is due."""
        children = self.supervisor.report()
        shape = tuple((c.name, c.state, c.pid) for c in children)
        now = self._clock()
        if not force and shape == self._last and now < self._next_report:
            return
        self._last = shape
        self._next_report = now + REPORT_EVERY_S
        self.client.send(self.report())

    def close(self) -> None:
        self.client.close()


def supervisor_keys(keys_dir: str) -> tuple[ClientKeys | None, str]:
    """The ``supervisor`` key pair of ``keys_dir`` (None without keys), and why
    there is none when the rig has keys but not that pair (else ``""``)."""
    if not keys_dir:
        return None, ""
    try:
        return ClientKeys.load(keys_dir, SUPERVISOR), ""
    except SecurityError as exc:
        return None, (
            f"no CurveZMQ key pair {SUPERVISOR!r} in {keys_dir} ({exc}): restarting given-up "
            f"children from llmo restart or the TUI is off. Make it with: llmo keys generate "
            f"{keys_dir} (existing pairs are kept)"
        )
