"""Partitions, delay and loss between hosts, while a batch runs.

One rig for the module, spread over network namespaces (``tests.faults.netns``):
the broker on the hub host, the brain, workers ``w1`` and ``w2`` and the
tools (the Pi) each on a host of their own, joined by veth links, CurveZMQ
on every connection. The brain and ``w2`` connect through the
fault-injecting proxy (``tests.faults.proxy``, transparent until a scenario
sets a fault); ``w1`` connects directly.

Liveness: heartbeats every ``INTERVAL`` = 2 s, a peer silent for
``LIVENESS`` = 3 of them (``EXPIRY`` = 6 s) is down, for the broker
(``--interval 2 --liveness 3``) and the brain (3 x the worker's interval).
A 2 s partition stays under the expiry even counting the heartbeat interval
before it and TCP's retransmission back-off after it (the last retransmit
before the link comes back lands at 1.4 s, the next at 3 s); 10 s and 60 s
are past it, so the peer is declared down and its attempts given to others.

Each task appends its id to ``starts.txt`` when it begins and ``runs.txt``
when it ends (and where it ran, by network namespace, to ``where.txt``), on
the plans folder every host sees. After each scenario: the batch completes,
every task is recorded done exactly once (``batch_events.jsonl`` and
``RUN_SUMMARY.json``), no task that finished ran again unless the partition
was longer than the expiry, and the peers rejoin by themselves (the broker
logs them up again, ``llmo status --wait-ready`` finds the workers).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.e2e_fixtures import Submitted
from tests.faults.netns import (
    PREFIX,
    NetRig,
    Network,
    ip,
    namespaces,
    sweep_leftovers,
    unavailable,
)
from tests.reporting import say
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

INTERVAL = 2.0
LIVENESS = 3
EXPIRY = INTERVAL * LIVENESS
TASK_S = 3.0
WORKERS = ("w1", "w2")
PROXIED = ("brain", "w2")
REMOTE = "r1"  # the second rig's worker

SCRIPT = """#!/bin/sh
echo "$1 $(readlink /proc/self/ns/net)" >> "$3/where.txt"
echo "$1" >> "$3/starts.txt"
sleep "$2"
echo "$1" >> "$3/runs.txt"
"""


@pytest.fixture(scope="module")
def netrig(tmp_path_factory) -> Iterator[NetRig]:
    why = unavailable()
    if why:
        pytest.skip(why)
    swept = sweep_leftovers()
    if swept:
        print(f"deleted namespaces left by an earlier run: {', '.join(swept)}")
    net = Network()
    root = tmp_path_factory.mktemp("netns")
    rig = NetRig(net, root, interval=INTERVAL, liveness=LIVENESS)
    try:
        rig.through_proxy(PROXIED)
        rig.start(WORKERS, remote=[REMOTE])
        yield rig
    finally:
        try:
            hard = rig.stop()
            print(rig.all_logs())
            assert not hard, f"needed SIGKILL to stop: {hard}"
        finally:
            net.close()
            left = [ns for ns in os.listdir("/run/netns") if ns.startswith(net.prefix)]
            assert not left, f"namespaces left: {left}"


@pytest.fixture(autouse=True)
def reaped(request) -> Iterator[None]:
    """A scenario that failed leaves no submit watching into the next."""
    rig = request.getfixturevalue("netrig") if "netrig" in request.fixturenames else None
    yield
    if rig is not None:
        rig.reap_submits()


def test_namespaces_left_by_a_run_that_died_are_removed_by_the_next():
    why = unavailable()
    if why:
        pytest.skip(why)
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"{PREFIX}{dead.pid}-dead-hub"
    ip("netns", "add", name)
    try:
        sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "600"])
        wait_for(lambda: ip("netns", "pids", name).stdout.split(), 15, "the sleeper in it")
        assert name in sweep_leftovers()
        assert name not in namespaces()
        assert sleeper.wait(15) == -9  # what ran in it is gone too
    finally:
        ip("netns", "del", name, check=False)


class Batch:
    """A plan of independent counting tasks, submitted from the Pi's host."""

    def __init__(self, rig: NetRig, name: str, tasks: int, sleep_s: float = TASK_S) -> None:
        self.rig = rig
        self.tasks = [f"t{i}" for i in range(1, tasks + 1)]
        self.plan = rig.plans_dir / name
        self.plan.mkdir(parents=True)
        (self.plan / "count.sh").write_text(SCRIPT)
        out = [f"# Plan: {name}", "", "## Objective", "count runs", "", "## Tasks", ""]
        for task in self.tasks:
            out += [
                f"### {task}",
                "- **executor**: worker",
                "- **task_class**: cpu",
                f"- **command**: `sh {{PLAN_PATH}}/count.sh {task} {sleep_s} {{PLAN_PATH}}`",
                "- **depends_on**: none",
                "",
            ]
        (self.plan / "plan.md").write_text("\n".join(out))
        self.marks = {p.name: p.stat().st_size for p in rig.logs.glob("*.log")}
        self.submit = rig.submit_background(self.plan)

    def lines(self, name: str) -> list[str]:
        path = self.plan / name
        return path.read_text().splitlines() if path.exists() else []

    def started_on(self, host: str) -> list[str]:
        inode = f"net:[{self.rig.net.inode(host)}]"
        return [line.split()[0] for line in self.lines("where.txt") if line.endswith(inode)]

    def wait_started_on(self, host: str, timeout: float = 60.0) -> None:
        wait_for(
            lambda: self.started_on(host),
            timeout,
            lambda: f"a task to start on {host}\n{self.rig.all_logs()}",
        )

    def since(self, log: str) -> str:
        """What ``log`` got after the batch was submitted."""
        path = self.rig.logs / f"{log}.log"
        with open(path, "rb") as f:
            f.seek(self.marks.get(path.name, 0))
            return f.read().decode(errors="replace")

    def finish(self, timeout: float = 200.0) -> Submitted:
        try:
            out, err = self.submit.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.submit.kill()
            out, err = self.submit.communicate()
            raise AssertionError(f"the batch did not end\n{err}\n{self.rig.all_logs()}") from None
        return Submitted(self.submit.returncode, out, err)

    def started_again(self) -> int:
        """Starts beyond each task's first (a re-run, finished or not)."""
        return sum(n - 1 for n in Counter(self.lines("starts.txt")).values() if n > 1)

    def outcome(self, run: Submitted) -> tuple[int, int, dict[str, int]]:
        """(tasks never recorded done, finished tasks run again, runs per task)."""
        runs = Counter(self.lines("runs.txt"))
        done = Counter(e["task_id"] for e in run.events() if e["event"] == "task_succeeded")
        lost = sum(1 for t in self.tasks if done[t] == 0)
        rerun = sum(n - 1 for n in runs.values() if n > 1)
        return lost, rerun, dict(runs)


def check(batch: Batch, run: Submitted, *, reruns_allowed: bool) -> tuple[int, int]:
    lost, rerun, runs = batch.outcome(run)
    print(f"runs per task: {runs}; lost {lost}, re-run {rerun}")
    assert run.returncode == 0 and run.state == "complete", run
    done = Counter(e["task_id"] for e in run.events() if e["event"] == "task_succeeded")
    assert done == Counter(batch.tasks), f"recorded done: {done}"
    rows = run.rows()
    assert sorted(rows) == sorted(batch.tasks), rows
    assert all(row["state"] == "done" for row in rows.values()), rows
    assert set(runs) == set(batch.tasks), f"never finished: {set(batch.tasks) - set(runs)}"
    if not reruns_allowed:
        assert rerun == 0, f"finished tasks ran again after a partition under the expiry: {runs}"
    return lost, rerun


def rejoined(rig: NetRig, batch: Batch, peers: tuple[str, ...], timeout: float = 120.0) -> float:
    """Wait for the broker to hear ``peers`` again and the brain to list the workers;
    the seconds it took."""
    began = time.monotonic()
    for peer in peers:
        wait_for(
            lambda p=peer: (
                f"peer '{p}' is up" in batch.since("broker")
                or f"peer '{p}' is down" not in batch.since("broker")
            ),
            timeout,
            lambda p=peer: f"the broker to hear {p} again\n{rig.all_logs()}",
        )
    rig.wait_ready([*WORKERS], timeout)
    return time.monotonic() - began


def declared_down(batch: Batch, peer: str) -> bool:
    return f"peer '{peer}' is down" in batch.since("broker")


PARTITIONS = [
    ("w1", 2.0),
    ("w1", 10.0),
    ("brain", 2.0),
    ("brain", 10.0),
    ("w1", 60.0),
    ("brain", 60.0),
]


@pytest.mark.parametrize(
    ("host", "seconds"), PARTITIONS, ids=[f"{h}-{s:g}s" for h, s in PARTITIONS]
)
def test_a_partitioned_host_rejoins_and_every_task_is_recorded_once(
    netrig: NetRig, fault_table, request, host: str, seconds: float
):
    rig = netrig
    rig.wait_ready([*WORKERS])
    batch = Batch(rig, f"cut-{host}-{seconds:g}", tasks=8)
    batch.wait_started_on("w1")
    rig.net.cut(host)
    try:
        time.sleep(seconds)  # the fault itself: the link stays down this long
    finally:
        rig.net.heal(host)
    took = rejoined(rig, batch, (host,))
    run = batch.finish()
    longer = seconds > EXPIRY
    assert declared_down(batch, host) == longer, batch.since("broker")
    lost, rerun = check(batch, run, reruns_allowed=longer)
    again = batch.started_again()
    note = (
        f"{'past' if longer else 'under'} the {EXPIRY:g} s expiry; {again} started again; "
        f"rejoined {took:.0f} s after"
    )
    fault_table.row(f"{host} partitioned {seconds:g} s", lost=lost, rerun=rerun, note=note)
    say(request.config, f"partition {host} {seconds:g} s: lost {lost}, re-run {rerun}, {note}")


# What the proxy says when the test sets its fault back to ``pass``.
SAID = re.compile(r"fault pass after [^:]*: delayed=(\d+) stalls=(\d+) resets=(\d+)")

PROXY_FAULTS = [
    ("delay 0.05", "50 ms each way", False),
    ("stall 0.3 0.2 1.0", "loss as stalls of 0.2-1 s", False),
    ("reset 0.25", "loss as connection resets", False),
]


@pytest.mark.parametrize(
    ("words", "what", "reruns_allowed"),
    PROXY_FAULTS,
    ids=[w.split()[0] for w, _, _ in PROXY_FAULTS],
)
def test_a_faulty_link_to_the_brain_and_a_worker_loses_and_repeats_nothing(
    netrig: NetRig, fault_table, request, words: str, what: str, reruns_allowed: bool
):
    rig = netrig
    rig.wait_ready([*WORKERS])
    batch = Batch(rig, f"proxy-{words.split()[0]}", tasks=16, sleep_s=1.5)
    rig.fault(words)
    try:
        batch.wait_started_on("w2")
        run = batch.finish()
    finally:
        rig.fault("pass")
    lost, rerun = check(batch, run, reruns_allowed=reruns_allowed)
    rig.wait_ready([*WORKERS])
    did = wait_for(lambda: SAID.search(batch.since("proxy")), 15, "the proxy's report")
    counts = dict(zip(("delay", "stall", "reset"), (int(n) for n in did.groups()), strict=True))
    kind = words.split()[0]
    assert counts[kind] > 0, f"the proxy injected no {kind}: {did[0]}"
    label = {"delay": "chunks delayed", "stall": "stalls", "reset": "resets"}[kind]
    note = f"brain and w2 through the proxy: {counts[kind]} {label}"
    fault_table.row(f"proxy: {what}", lost=lost, rerun=rerun, note=note)
    say(request.config, f"proxy {what}: lost {lost}, re-run {rerun}; {note}")


def test_a_second_rigs_worker_joins_over_the_network_and_takes_tasks(
    netrig: NetRig, fault_table, request
):
    rig = netrig
    rig.net.add("rig2")
    rig.start_worker(REMOTE, host="rig2")
    rig.wait_ready([*WORKERS, REMOTE])
    batch = Batch(rig, "second-rig", tasks=10, sleep_s=2.0)
    batch.wait_started_on("rig2")
    run = batch.finish()
    lost, rerun = check(batch, run, reruns_allowed=False)
    taken = batch.started_on("rig2")
    assert taken, "the second rig's worker took no task"
    fault_table.row(
        "a second rig's worker joins",
        lost=lost,
        rerun=rerun,
        note=f"it ran {len(taken)} of {len(batch.tasks)} tasks",
    )
    say(request.config, f"second rig: {REMOTE} ran {len(taken)} tasks; lost {lost}, re-run {rerun}")


FAULTS = [
    *(f"{host} partitioned {s:g} s (link down)" for host, s in PARTITIONS),
    *(f"proxy: {what}" for _, what, _ in PROXY_FAULTS),
    "a second rig's worker joins over the network",
]
