"""``llmo up``'s restart policy (pure) and its supervisor (real processes)."""

from __future__ import annotations

import sys
import threading

from llmo.cli.supervisor import RestartPolicy, Supervisor, restart_refusal
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


# A child that, on SIGTERM, notes it in a shared file, takes ``linger`` seconds
# (a worker letting its tasks finish) and notes its exit.
_STAGED = (
    "import signal, sys, time\n"
    "name, linger, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]\n"
    "def note(what):\n"
    "    with open(path, 'a') as f:\n"
    "        f.write(f'{name} {what}\\n')\n"
    "def term(*_):\n"
    "    note('term')\n"
    "    time.sleep(linger)\n"
    "    note('exit')\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "note('up')\n"
    "while True:\n"
    "    time.sleep(1)\n"
)


def test_stop_in_stages_keeps_the_later_stages_up_until_the_earlier_ones_exited(tmp_path):
    said: list[str] = []
    sup = Supervisor(say=said.append)
    notes = tmp_path / "notes"
    for name, linger in (("broker", 0), ("brain", 0), ("w1", 0.5), ("w2", 0.2)):
        argv = [sys.executable, "-c", _STAGED, name, str(linger), str(notes)]
        sup.add(name, argv, tmp_path / f"{name}.log")
    wait_for(lambda: notes.exists() and notes.read_text().count("up") == 4, 20, "children up")
    sup.stop(stages=[(["w1", "w2"], 20.0), (["brain"], 20.0), (["broker"], 20.0)])
    order = notes.read_text().splitlines()[4:]
    print(order)
    assert order.index("brain term") > order.index("w1 exit")
    assert order.index("brain term") > order.index("w2 exit")
    assert order.index("broker term") > order.index("brain exit")
    assert not any(child.running for child in sup.children.values())
    assert not said  # nobody had to be killed


def test_a_stage_past_its_timeout_is_killed_and_the_next_stage_follows(tmp_path):
    said: list[str] = []
    sup = Supervisor(say=said.append)
    notes = tmp_path / "notes"
    for name, linger in (("brain", 0), ("w1", 60)):
        argv = [sys.executable, "-c", _STAGED, name, str(linger), str(notes)]
        sup.add(name, argv, tmp_path / f"{name}.log")
    wait_for(lambda: notes.exists() and notes.read_text().count("up") == 2, 20, "children up")
    sup.stop(stages=[(["w1"], 0.5), (["brain"], 20.0)])
    order = notes.read_text().splitlines()[2:]
    assert order == ["w1 term", "brain term", "brain exit"], order
    assert any("w1 did not stop within" in line for line in said), said


def test_a_later_stage_that_dies_while_an_earlier_one_stops_is_restarted(tmp_path):
    sup = Supervisor(RestartPolicy(base_delay_s=0.01), say=lambda _: None)
    notes = tmp_path / "notes"
    for name, linger in (("brain", 0), ("w1", 5)):
        argv = [sys.executable, "-c", _STAGED, name, str(linger), str(notes)]
        sup.add(name, argv, tmp_path / f"{name}.log")
    wait_for(lambda: notes.exists() and notes.read_text().count("up") == 2, 20, "children up")
    brain = sup.children["brain"]
    first = brain.process
    assert first is not None

    def crash_brain() -> None:
        wait_for(lambda: "w1 term" in notes.read_text(), 20, "w1 to be stopping")
        sup.kill("brain")

    crasher = threading.Thread(target=crash_brain)
    crasher.start()
    sup.stop(stages=[(["w1"], 20.0), (["brain"], 20.0)])
    crasher.join()
    assert brain.process is not first  # restarted while w1 stopped, then stopped in turn
    assert notes.read_text().count("brain up") == 2


def test_hurry_asks_the_children_being_stopped_again(tmp_path):
    """A second Ctrl-C to ``llmo up``: the stopping workers get SIGTERM again, which
    ends their grace at once."""
    script = (
        "import signal, sys, time\n"
        "path = sys.argv[1]\n"
        "asked = []\n"
        "signal.signal(signal.SIGTERM, lambda *_: asked.append(1))\n"
        "open(path, 'a').write('up\\n')\n"
        "while len(asked) < 2:\n"
        "    if asked and 'term' not in open(path).read():\n"
        "        open(path, 'a').write('term\\n')\n"
        "    time.sleep(0.01)\n"
        "open(path, 'a').write('asked twice\\n')\n"
    )
    sup = Supervisor(say=lambda _: None)
    notes = tmp_path / "notes"
    sup.add("w1", [sys.executable, "-c", script, str(notes)], tmp_path / "w1.log")
    wait_for(lambda: notes.exists() and "up" in notes.read_text(), 20, "w1 up")
    stopper = threading.Thread(target=sup.stop, kwargs={"stages": [(["w1"], 120.0)]})
    stopper.start()
    wait_for(lambda: "term" in notes.read_text(), 20, "w1 to be asked once")
    sup.hurry()
    stopper.join(60)
    assert not stopper.is_alive()
    assert notes.read_text().splitlines() == ["up", "term", "asked twice"]


# --- restarting a child the supervisor gave up on ------------------------------------


def test_only_a_child_given_up_on_may_be_restarted():
    states = {
        "broker": "running",
        "cpu-1": "given_up",
        "cpu-2": "restarting",
        "brain": "config_error",
        "cpu-3": "stopping",
    }
    assert restart_refusal("cpu-1", states) is None
    unknown = restart_refusal("/bin/sh", states)
    assert unknown is not None
    assert "no child named '/bin/sh'" in unknown and "brain, broker, cpu-1" in unknown
    running = restart_refusal("broker", states)
    assert running is not None and "running" in running and "gave up on" in running
    restarting = restart_refusal("cpu-2", states)
    assert restarting is not None and "restarting already" in restarting
    config = restart_refusal("brain", states)
    assert config is not None and "configuration error" in config
    stopping = restart_refusal("cpu-3", states)
    assert stopping is not None and "stopping" in stopping


def test_a_child_given_up_on_restarts_with_a_fresh_window(tmp_path):
    said: list[str] = []
    policy = RestartPolicy(max_restarts=1, window_s=600, base_delay_s=0.01)
    sup = Supervisor(policy, say=said.append)
    child = sup.add(
        "crasher",
        [sys.executable, "-c", "print('boom: no GPU 7', flush=True); raise SystemExit(3)"],
        tmp_path / "crasher.log",
    )

    def given_up() -> bool:
        sup.poll()
        return child.given_up

    wait_for(given_up, 30, "the supervisor to give up on the crasher", poll_s=0.01)
    (info,) = sup.report()
    assert (info.name, info.state, info.restarts, info.exit_code) == ("crasher", "given_up", 1, 3)
    assert info.reason == "boom: no GPU 7"
    ok, detail = sup.restart("crasher")
    assert ok, detail
    assert "crasher restarted" in detail
    assert not child.given_up and child.restarts == []
    assert sup.report()[0].state in ("running", "restarting", "given_up")
    # The window starts afresh: one more automatic restart before it gives up again.
    wait_for(given_up, 30, "the supervisor to give up on the crasher again", poll_s=0.01)
    assert len(child.restarts) == 1
    assert child.exit_codes == [3, 3, 3, 3]


def test_a_running_or_unknown_child_is_not_restarted(tmp_path):
    sup = Supervisor(RestartPolicy(max_restarts=1, window_s=600))
    child = sup.add(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log"
    )
    try:
        pid = child.process.pid if child.process else 0
        ok, detail = sup.restart("sleeper")
        assert not ok and "running" in detail
        ok, detail = sup.restart("rm -rf /")
        assert not ok and "no child named" in detail
        assert child.process is not None and child.process.pid == pid
        assert sup.report()[0].pid == pid
    finally:
        sup.stop(timeout=2.0)
