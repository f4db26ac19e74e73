"""Properties of the core over random plans and random worker failures.

For random DAGs run on a few simulated workers that succeed, fail, ask to
retry later, hang or die (and come back), every batch ends; every task that
succeeds is recorded once; no task is assigned before all its dependencies
are done; and replaying the recorded events gives the same state.
"""

from __future__ import annotations

import collections

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmo.brain.config import BrainConfig
from llmo.brain.core import new_state, step
from llmo.proto.messages import BatchEvent, PeerDown, TaskAssign
from tests.brain_fixtures import Rig, plan_text

pytestmark = pytest.mark.timeout(120)

OUTCOMES = ["done", "done", "done", "fail", "retry_later", "hang", "die"]


@st.composite
def dags(draw):
    n = draw(st.integers(1, 10))
    tasks = []
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        tasks.append((f"t{i}", sorted(f"t{d}" for d in deps)))
    return tasks


@given(
    plan=dags(),
    workers=st.integers(1, 3),
    slots=st.integers(1, 2),
    outcomes=st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=30),
    batches=st.integers(1, 2),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_dags_with_failures(plan, workers, slots, outcomes, batches):
    cfg = BrainConfig(
        backoff_base_s=1.0,
        retry_later_s=1.0,
        grace_s=2.0,
        kill_grace_s=2.0,
        class_timeouts={"cpu": 5.0},
    )
    rig = Rig(cfg)
    names = [f"w{i}" for i in range(workers)]
    for name in names:
        rig.worker(name, slots=slots)
    text = plan_text(*[f"{t} | cpu | run {t} | {', '.join(d) or 'none'}" for t, d in plan])
    ids = [rig.submit(text, path=f"/plans/p{b}").batch_id for b in range(batches)]
    deps = dict(plan)
    draws = iter(outcomes * 200)
    dead: dict[str, float] = {}
    seen = 0
    for _ in range(5000):
        if all(rig.state.batches[b].state != "running" for b in ids):
            break
        new = [m for m in rig.sent[seen:] if isinstance(m, TaskAssign)]
        seen = len(rig.sent)
        for a in new:
            batch = rig.state.batches[a.batch_id]
            for dep in deps[a.task_id]:  # no dependency released early
                assert batch.tasks[dep].state == "done", (a.task_id, dep)
            outcome = next(draws, "done")
            if a.dst in dead:
                continue
            if outcome == "hang":
                rig.start(a)
                continue
            if outcome == "die":
                rig.start(a)
                rig.msg(PeerDown(peer=a.dst), src="broker")
                dead[a.dst] = rig.now
                continue
            rig.start(a)
            if outcome == "done":
                rig.done(a)
            elif outcome == "fail":
                rig.failed(a, exit_code=1)
            else:
                rig.failed(a, exit_code=75)
        rig.tick(1.0)
        for name in names:
            if name in dead and rig.now - dead[name] > 3:
                del dead[name]
                rig.worker(name, slots=slots)
            elif name not in dead:
                rig.heartbeat(name)
    else:
        raise AssertionError("the batches did not end")
    for batch_id in ids:
        batch = rig.state.batches[batch_id]
        assert batch.state in ("complete", "failed")
        succeeded = collections.Counter(
            m.task_id
            for m in rig.sent
            if isinstance(m, BatchEvent) and m.event == "task_succeeded" and m.batch_id == batch_id
        )
        assert all(n == 1 for n in succeeded.values())
        done = {t.id for t in batch.tasks.values() if t.state == "done"}
        assert done == set(succeeded)
        for task in batch.tasks.values():
            if task.state == "done":
                assert all(batch.tasks[d].state == "done" for d in deps[task.id])
            assert task.state in ("done", "failed", "skipped")
        assert (batch.state == "complete") == (len(done) == len(plan))
    # a replay of the same events gives the same decisions
    state = new_state()
    replayed = []
    for now, event in rig.events:
        state, commands = step(state, event, now)
        replayed.extend(commands)
    assert replayed == rig.commands
    assert {b: rig.states(b) for b in ids} == {
        b: {t.id: t.state for t in state.batches[b].tasks.values()} for b in ids
    }
