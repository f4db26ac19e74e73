"""``llmo up``'s restart policy (pure) and its supervisor (real processes)."""

from __future__ import annotations

import sys

from llmo.cli.supervisor import RestartPolicy, Supervisor
from tests.waiting import wait_for


def test_policy_backs_off_and_gives_up_after_six_in_five_minutes():
    policy = RestartPolicy(max_restarts=6, window_s=300, base_delay_s=0.5, max_delay_s=30)
    restarts: list[float] = []
    delays = []
    now = 0.0
    while (delay := policy.decide(restarts, now)) is not None:
        delays.append(delay)
        now += delay
        restarts.append(now)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    # Once the early restarts leave the window, the child may restart again.
    assert policy.decide(restarts, restarts[0] + 300.1) == 16.0


def test_crashing_child_is_restarted_then_left_stopped(tmp_path):
    said: list[str] = []
    sup = Supervisor(RestartPolicy(max_restarts=3, window_s=60, base_delay_s=0.01), say=said.append)
    child = sup.add(
        "crasher",
        [sys.executable, "-c", "print('up'); raise SystemExit(3)"],
        tmp_path / "crasher.log",
    )

    def given_up() -> bool:
        sup.poll()
        return child.given_up

    wait_for(given_up, 30, "the supervisor to give up on the crasher", poll_s=0.01)
    assert child.exit_codes == [3, 3, 3, 3]
    assert len(child.restarts) == 3
    assert "leaving it stopped" in said[-1] and "crasher.log" in said[-1]
    assert (tmp_path / "crasher.log").read_text().count("up") == 4


def test_stop_terminates_the_whole_group(tmp_path):
    sup = Supervisor()
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    child = sup.add("stubborn", [sys.executable, "-c", script], tmp_path / "stubborn.log")
    log = tmp_path / "stubborn.log"
    grandchild = int(wait_for(lambda: log.read_text().split(), 10, "the grandchild's pid")[0])
    sup.stop(timeout=1.0)
    assert not child.running
    wait_for(lambda: not _alive(grandchild), 5, f"the grandchild {grandchild} to stop")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_children_stop_when_the_supervisor_is_killed(tmp_path):
    """A SIGKILLed ``llmo up`` leaves no child behind (they run in their own sessions)."""
    import signal as sig
    import subprocess

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from cli.supervisor import Supervisor\n"
        "sup = Supervisor()\n"
        "child = sup.add('sleeper', [sys.executable, '-c', 'import time; time.sleep(60)'],\n"
        f"              Path({str(tmp_path)!r}) / 'sleeper.log')\n"
        "print(child.process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as up:
        child = int(up.stdout.readline())
        assert _alive(child)
        up.send_signal(sig.SIGKILL)
        up.wait(timeout=10)
    wait_for(lambda: not _alive(child), 10, f"the supervised child {child} to stop")
