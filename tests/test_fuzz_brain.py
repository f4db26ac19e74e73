"""Fuzzing the brain's core: adversarial messages between ordinary ones.

A ``Rig`` (the pure core, a fake clock) runs a small plan on two simulated
workers while hypothesis mixes in duplicate and stale results, results for
attempts and batches that do not exist, results from the wrong worker,
model reports from unknown workers, heartbeats with absurd figures, plans
that are missing or broken, cancels of unknown batches, and random messages
of every type from known and unknown actors. Then the workers behave.

Whatever came before: ``step`` never fails inside (no "event ... failed"
and no illegal transition in its log), every accepted batch ends, no task
is recorded done twice, and each bad input is named in a log line, a
refusal or an error reply.
"""

from __future__ import annotations

import collections
import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llmo.brain.commands import Log
from llmo.brain.config import BrainConfig
from llmo.proto.messages import (
    Ack,
    BatchCancel,
    BatchEvent,
    Heartbeat,
    ModelStatus,
    PeerDown,
    PlanAccepted,
    PlanRejected,
    PlanSubmit,
    TaskAssign,
    TaskDone,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    WorkerDrain,
)
from tests.brain_fixtures import Rig, plan_text
from tests.strategies import messages
from tests.test_fuzz_tally import examples, fuzz_tally  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

WORKERS = ("w1", "w2")
PLAN = plan_text(
    "a | cpu | echo a | none",
    "b | cpu | echo b | a",
    "c | cpu | echo c | a",
    "d | cpu | echo d | b, c",
)
CONFIG = BrainConfig(
    backoff_base_s=1.0,
    retry_later_s=1.0,
    grace_s=2.0,
    kill_grace_s=2.0,
    assign_timeout_s=10.0,
    lost_grace_s=2.0,
    class_timeouts={"cpu": 20.0},
    max_refusals=2,
    load_timeout_s=20.0,
)
KINDS = (
    "answer",
    "answer",
    "duplicate_result",
    "unknown_attempt",
    "wrong_worker",
    "ghost_model_status",
    "absurd_heartbeat",
    "submit_missing",
    "submit_broken",
    "cancel_unknown",
    "cancel_real",
    "random_message",
    "peer_down",
    "tick",
)
ABSURD_INTS = st.sampled_from([-(2**63), -5, -1, 0, 1, 2**31, 2**63 - 1])
ABSURD_FLOATS = st.sampled_from(
    [-math.inf, -1e308, -1.0, 0.0, 1e-12, 5e-324, 1e9, 1e308, math.inf, math.nan]
)
ids = st.text(alphabet="abcxyz0123456789:_-", min_size=0, max_size=30)


@st.composite
def broken_plans(draw) -> str:
    """Plan text that is random, or a valid plan with lines dropped, doubled or garbled."""
    if draw(st.booleans()):
        return draw(st.text(max_size=200))
    lines = PLAN.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["drop", "double", "garble", "dep", "cycle"]))
        if how == "drop":
            del lines[i]
        elif how == "double":
            lines.insert(i, lines[i])
        elif how == "garble":
            lines[i] = draw(st.text(max_size=40))
        elif how == "dep":
            lines.insert(i, f"- **depends_on**: {draw(ids)}")
        else:
            lines.append("### e\n- **executor**: worker\n- **task_class**: cpu")
            lines.append("- **command**: `echo e`\n- **depends_on**: e\n")
        if not lines:
            lines = [""]
    return "\n".join(lines)


class Game:
    """One fuzz run: the rig, what was answered, and what each bad input drew."""

    def __init__(self) -> None:
        self.rig = Rig(CONFIG)
        for name in WORKERS:
            self.rig.worker(name, slots=2)
        accepted = self.rig.submit(PLAN, path="/plans/good")
        assert isinstance(accepted, PlanAccepted), accepted
        self.batches = [accepted.batch_id]
        self.answered: list[TaskAssign] = []
        self.unnamed: list[str] = []

    # --- helpers ------------------------------------------------------------------------

    def out_since(self, mark: int) -> list:
        return self.rig.commands[mark:]

    def named(self, mark: int, *words: str, what: str) -> None:
        """Some log, refusal or error since ``mark`` mentions every word."""
        for command in self.out_since(mark):
            text = ""
            if isinstance(command, Log):
                text = command.text
            else:
                msg = getattr(command, "msg", None)
                if isinstance(msg, Ack) and not msg.ok:
                    text = msg.detail
                elif isinstance(msg, PlanRejected):
                    text = " ".join((msg.plan_path, *msg.errors))
                elif msg is not None and msg.TYPE.value == "error":
                    text = msg.detail
            if text and all(w in text for w in words):
                return
        self.unnamed.append(what)

    def pending(self) -> list[TaskAssign]:
        done = {a.attempt_id for a in self.answered}
        return [a for a in self.rig.assigns() if a.attempt_id not in done]

    # --- moves ----------------------------------------------------------------------------

    def play(self, kind: str, data: st.DataObject) -> None:
        rig = self.rig
        mark = len(rig.commands)
        if kind == "answer":
            waiting = self.pending()
            if not waiting:
                return
            a = waiting[0]
            self.answered.append(a)
            rig.start(a)
            outcome = data.draw(st.sampled_from(["done", "done", "exit", "retry_later"]))
            if outcome == "done":
                rig.done(a)
            else:
                rig.failed(a, exit_code=1 if outcome == "exit" else 75)
        elif kind == "duplicate_result" and self.answered:
            a = data.draw(st.sampled_from(self.answered))
            if data.draw(st.booleans()):
                rig.done(a)
            else:
                reasons = st.sampled_from(["exit", "lost", "refused", "policy"])
                rig.failed(a, reason=data.draw(reasons))
            self.named(mark, a.attempt_id, what=f"duplicate result for {a.attempt_id}")
        elif kind == "unknown_attempt":
            batch_id = data.draw(st.sampled_from([*self.batches, "no-such-batch"]))
            attempt_id = "x" + data.draw(ids)  # never one the brain handed out
            task_id = data.draw(st.sampled_from(["a", "b", "zz"]))
            src = data.draw(st.sampled_from([*WORKERS, "stranger"]))
            fields = {"batch_id": batch_id, "task_id": task_id, "attempt_id": attempt_id}
            cls = data.draw(st.sampled_from([TaskDone, TaskFailed, TaskStarted, TaskProgress]))
            msg = cls(reason="exit", **fields) if cls is TaskFailed else cls(**fields)
            rig.msg(msg, src=src)
            if cls in (TaskDone, TaskFailed):
                self.named(mark, attempt_id, what=f"{cls.__name__} for unknown {attempt_id}")
        elif kind == "wrong_worker":
            waiting = self.pending()
            if not waiting:
                return
            a = waiting[0]
            liar = next(w for w in (*WORKERS, "stranger") if w != a.dst)
            fields = {"batch_id": a.batch_id, "task_id": a.task_id, "attempt_id": a.attempt_id}
            before = rig.task(a.batch_id, a.task_id).state  # done already by a late result?
            rig.msg(TaskDone(**fields), src=liar)
            after = rig.task(a.batch_id, a.task_id).state
            assert before == after or after != "done", "a result from the wrong worker"
            self.named(mark, a.attempt_id, what=f"TaskDone for {a.attempt_id} from {liar}")
        elif kind == "ghost_model_status":
            ghost = f"ghost-{data.draw(st.integers(0, 3))}"
            state = data.draw(st.sampled_from(["loading", "hot", "cold", "failed"]))
            rig.msg(ModelStatus(model=data.draw(ids), state=state), src=ghost)
            self.named(mark, ghost, what=f"ModelStatus from unknown {ghost}")
        elif kind == "absurd_heartbeat":
            src = data.draw(st.sampled_from([*WORKERS, "ghost-hb"]))
            beat = Heartbeat(
                role=data.draw(st.sampled_from(["worker", "brain", "client", "broker"])),
                state=data.draw(st.sampled_from(["", "cold", "hot", "loading", "draining"])),
                slots_total=data.draw(ABSURD_INTS),
                slots_free=data.draw(ABSURD_INTS),
                vram_budget_mb=data.draw(ABSURD_INTS),
                vram_used_mb=data.draw(ABSURD_INTS),
                tok_s=data.draw(ABSURD_FLOATS),
                interval_s=data.draw(ABSURD_FLOATS),
                active=tuple(data.draw(st.lists(ids, max_size=3))),
            )
            rig.msg(beat, src=src)
        elif kind == "submit_missing":
            path = f"/plans/missing-{data.draw(st.integers(0, 99))}"
            rig.msg(PlanSubmit(plan_path=path), src="submit-1")
            self.named(mark, path, what=f"PlanSubmit for missing {path}")
        elif kind == "submit_broken":
            path = f"/plans/broken-{len(rig.plans)}"
            reply = rig.submit(data.draw(broken_plans()), path=path)
            if isinstance(reply, PlanAccepted):
                self.batches.append(reply.batch_id)
            else:
                assert isinstance(reply, PlanRejected) and reply.errors, reply
                self.named(mark, path, what=f"broken plan {path}")
        elif kind == "cancel_unknown":
            batch_id = "nb-" + data.draw(ids)
            rig.msg(BatchCancel(batch_id=batch_id), src="cancel-1")
            self.named(mark, f"no batch {batch_id}", what=f"BatchCancel of unknown {batch_id!r}")
        elif kind == "cancel_real" and data.draw(st.integers(0, 3)) == 0:  # rarely
            rig.msg(BatchCancel(batch_id=data.draw(st.sampled_from(self.batches))), src="cancel-1")
        elif kind == "random_message":
            msg = data.draw(messages)
            src = data.draw(st.sampled_from([*WORKERS, "ghost-r", "submit-2", "broker"]))
            rig.msg(msg, src=src)
        elif kind == "peer_down":
            rig.msg(PeerDown(peer=data.draw(st.sampled_from([*WORKERS, "ghost-p"]))), src="broker")
        elif kind == "tick":
            rig.wait(data.draw(st.sampled_from([0.0, 0.5, 3.0, 30.0])))

    def heal(self) -> None:
        """The workers come back honest and answer everything until every batch ends."""
        rig = self.rig
        for name in WORKERS:
            rig.worker(name, slots=2)
            rig.msg(WorkerDrain(worker=name, drain=False), src="drain-1")
        self.answered.clear()
        rig.answered.clear()
        rig.auto(
            step_s=1.0,
            limit=20_000,
            until=lambda: all(b.state != "running" for b in rig.state.batches.values()),
        )


@given(data=st.data(), moves=st.lists(st.sampled_from(KINDS), min_size=1, max_size=40))
@settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_the_core_survives_adversarial_messages(data, moves, fuzz_tally):  # noqa: F811
    game = Game()
    for kind in moves:
        game.play(kind, data)
    game.heal()
    rig = game.rig
    fuzz_tally.add("brain", len(rig.events))  # every message and tick the core stepped
    failures = [
        c.text
        for c in rig.commands
        if isinstance(c, Log)
        and c.level == "error"
        and (c.text.startswith("event ") or "illegal transition" in c.text)
    ]
    assert failures == []
    assert game.unnamed == [], "bad input nobody named"
    for batch_id in game.batches:
        batch = rig.state.batches[batch_id]
        assert batch.state in ("complete", "failed", "cancelled"), (batch_id, rig.states(batch_id))
    succeeded = collections.Counter(
        (m.batch_id, m.task_id)
        for m in rig.sent
        if isinstance(m, BatchEvent) and m.event == "task_succeeded"
    )
    assert all(n == 1 for n in succeeded.values()), succeeded
    event(f"first batch {rig.state.batches[game.batches[0]].state}")


def test_a_model_report_from_an_unknown_worker_is_logged():
    """Found by the fuzz test above: it used to vanish without a word."""
    rig = Rig(CONFIG)
    out = rig.msg(ModelStatus(model="m", state="hot"), src="ghost-1")
    logs = [c.text for c in out if isinstance(c, Log)]
    assert any("unknown worker ghost-1" in text for text in logs), logs
    assert "ghost-1" not in rig.state.workers
