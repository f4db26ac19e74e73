"""End to end through ``llmo up``: a named batch, its resume after a failure, and a task
whose model the rig does not have. Plans are written in the original system's format.

Each task appends its name to ``runs.log`` in the plan folder, so the test
counts what really ran.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_fixtures import Rig, module_rig_factory, one_test

__all__ = ["module_rig_factory"]

pytestmark = pytest.mark.timeout(240)

PLAN = """# Plan: data batch

## Objective
Prepare a data batch, process it, report on it.

## Tasks

### prepare
- **executor**: worker
- **task_class**: cpu
- **command**: `echo prepare >> {PLAN_PATH}/runs.log && echo {BATCH_ID} > {BATCH_PATH}/id.txt`
- **depends_on**: none

### process
- **executor**: worker
- **task_class**: cpu
- **command**: `echo process >> {PLAN_PATH}/runs.log && test -f {PLAN_PATH}/fixed`
- **depends_on**: prepare

### report
- **executor**: worker
- **task_class**: cpu
- **command**: `echo report >> {PLAN_PATH}/runs.log`
- **depends_on**: process
"""

UNKNOWN_MODEL = """# Plan: summaries

## Objective
Summarize with a model the rig does not have.

## Tasks

### summarize
- **executor**: worker
- **task_class**: llm
- **command**: `echo summarize >> {PLAN_PATH}/runs.log`
- **depends_on**: none
- **llm_model**: model_id_here
"""


@pytest.fixture(scope="module")
def shared_rig(module_rig_factory) -> Rig:
    return module_rig_factory(workers=1, brain={"backoff_base_s": 0.2, "backoff_max_s": 0.5})


@pytest.fixture
def rig(shared_rig) -> Iterator[Rig]:
    yield from one_test(shared_rig)


def write_plan(rig: Rig, name: str, text: str) -> Path:
    folder = rig.plans_dir / name
    folder.mkdir()
    (folder / "plan.md").write_text(text)
    return folder


def runs(plan: Path) -> Counter[str]:
    log = plan / "runs.log"
    return Counter(log.read_text().split()) if log.exists() else Counter()


def test_a_named_batch_resumed_after_a_failure_runs_only_what_had_not_succeeded(rig):
    plan = write_plan(rig, "data_batch", PLAN)

    first = rig.submit(plan, "--config", '{"BATCH_ID": "my_data_batch"}')

    assert first.returncode == 1, first
    assert first.state == "failed"
    assert first.history == plan / "history" / "my_data_batch"
    assert (first.history / "id.txt").read_text().strip() == "my_data_batch"
    assert runs(plan) == {"prepare": 1, "process": 3}

    again = rig.submit(plan, "--config", '{"BATCH_ID": "my_data_batch"}')
    assert again.returncode == 2, again
    assert "the batch folder" in again.stderr and "already exists" in again.stderr

    (plan / "fixed").write_text("")
    resumed = rig.submit(plan, "--resume", "my_data_batch")

    assert resumed.returncode == 0, resumed
    assert resumed.state == "complete"
    assert resumed.history == first.history
    assert runs(plan) == {"prepare": 1, "process": 4, "report": 1}
    rows = resumed.rows()
    assert {t: rows[t]["state"] for t in rows} == dict.fromkeys(
        ("prepare", "process", "report"), "done"
    )
    assert [e for e in resumed.events() if e["event"] == "batch_resumed"][-1]["kept"] == 1

    bogus = rig.llmo("submit", str(plan), "--config", '{"RUN_MODE": "bogus"}')
    assert bogus.returncode == 2
    assert "RUN_MODE is 'bogus'; use one of fresh, resume" in bogus.stderr


def test_a_task_naming_a_model_the_rig_does_not_have_fails_at_once(rig):
    plan = write_plan(rig, "summaries", UNKNOWN_MODEL)

    run = rig.submit(plan)

    assert run.returncode == 1, run
    assert run.state == "failed"
    row = run.rows()["summarize"]
    assert row["state"] == "failed"
    assert "definition error: unknown model 'model_id_here'" in row["error"]
    assert "this rig has: gemma" in row["error"]
    assert row["attempts"] == 0
    assert runs(plan) == {}
