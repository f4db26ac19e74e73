"""End to end: ``llmo load``, ``unload`` and ``drain`` on a real ``llmo up`` rig
wait for what the worker really did and exit non-zero with the reason when it
failed; ``llmo submit`` of a plan's ``plan.md`` runs the plan's folder; the
rig's processes carry their titles (``llmo-worker cpu-1``) in ``ps``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmo.cli.models import default_model
from tests.e2e_fixtures import Rig, module_rig_factory, one_test
from tests.waiting import wait_for

__all__ = ["module_rig_factory"]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def shared(module_rig_factory) -> Rig:
    return module_rig_factory(workers=2)


@pytest.fixture
def rig(shared) -> Iterator[Rig]:
    yield from one_test(shared)


def said(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"


def test_a_load_that_fails_exits_1_with_the_workers_reason(rig):
    done = rig.llmo("load", "cpu-1", "/nonexistent/model.gguf", "--timeout", "60")
    assert done.returncode == 1, said(done)
    assert done.stdout.splitlines()[0] == "cpu-1 loading /nonexistent/model.gguf", said(done)
    assert done.stderr.startswith("llmo load: cpu-1 failed to load /nonexistent/model.gguf: "), (
        said(done)
    )
    assert "/nonexistent/model.gguf" in done.stderr.split(": ", 2)[2], said(done)


def test_unload_of_a_worker_with_nothing_loaded_is_refused(rig):
    done = rig.llmo("unload", "cpu-2")
    assert done.returncode == 1, said(done)
    assert done.stderr.strip() == "llmo unload: cpu-2 has no model loaded", said(done)


def test_load_then_unload_wait_for_hot_and_cold(rig):
    model = str(default_model())
    done = rig.llmo("load", "cpu-1", model, "--timeout", "240", timeout=260)
    assert done.returncode == 0, said(done)
    assert done.stdout.splitlines()[-1].startswith("cpu-1 hot with "), said(done)
    worker = next(w for w in rig.status()["workers"] if w["name"] == "cpu-1")
    assert worker["state"] == "hot", worker
    done = rig.llmo("unload", "cpu-1", "--timeout", "120", timeout=140)
    assert done.returncode == 0, said(done)
    assert done.stdout.splitlines()[-1].startswith("cpu-1 unloaded"), said(done)
    worker = next(w for w in rig.status()["workers"] if w["name"] == "cpu-1")
    assert worker["state"] == "cold", worker


def test_drain_waits_for_running_work_and_names_it(rig):
    plan = rig.plan("nap")
    sent = rig.llmo("submit", str(plan), "--config", '{"NAP_S": 300}', "--json")
    assert sent.returncode == 0, said(sent)
    batch = json.loads(sent.stdout)["batch_id"]

    def napping() -> str | None:
        workers = rig.status()["workers"]
        return next((w["name"] for w in workers if w["attempts"]), None)

    worker = wait_for(napping, 60, lambda: f"the nap task to start\n{rig.logs()}")
    try:
        done = rig.llmo("drain", worker, "--timeout", "2")
        assert done.returncode == 1, said(done)
        assert done.stdout.splitlines()[0] == f"{worker} draining", said(done)
        assert f"{worker} still runs {batch}/nap" in done.stderr, said(done)
        done = rig.llmo("drain", worker, "--no-wait")
        assert done.returncode == 0, said(done)
        assert f"{worker} still runs {batch}/nap" in done.stdout, said(done)
    finally:
        cancelled = rig.llmo("cancel", batch)
    assert cancelled.returncode == 0, said(cancelled)
    done = rig.llmo("drain", worker, "--timeout", "60", timeout=80)
    assert done.returncode == 0, said(done)
    assert done.stdout.splitlines()[-1].startswith(f"{worker} drained: nothing running")
    done = rig.llmo("drain", worker, "--undo", "--timeout", "60", timeout=80)
    assert done.returncode == 0, said(done)
    assert done.stdout.splitlines()[-1] == f"{worker} back in service", said(done)


def test_submit_of_a_plan_md_runs_its_folder(rig):
    plan: Path = rig.plan("hello")
    run = rig.submit(plan / "plan.md")
    assert run.returncode == 0, run
    assert run.state == "complete", run
    assert run.history.is_relative_to(plan / "history"), run


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def test_processes_carry_their_llmo_titles(rig):
    children = rig.children()
    expected = {
        "broker": "llmo-broker",
        "brain": "llmo-brain",
        "cpu-1": "llmo-worker cpu-1",
        "cpu-2": "llmo-worker cpu-2",
        "brain-llm": "llmo-worker brain-llm",
    }
    assert set(expected) <= set(children), children
    for name, title in expected.items():
        assert _cmdline(children[name]) == title, name
        assert _comm(children[name]) == title[:15], name
    assert _cmdline(rig.process.pid) == "llmo-up"


def test_a_missing_setproctitle_leaves_the_title_alone(monkeypatch):
    import sys

    from llmo.cli.common import set_title

    monkeypatch.setitem(sys.modules, "setproctitle", None)  # import raises ImportError
    with open("/proc/self/cmdline", "rb") as f:
        before = f.read()
    set_title("llmo-test")
    with open("/proc/self/cmdline", "rb") as f:
        assert f.read() == before
