"""Fuzzing a real worker: malformed and adversarial assignments and cancels.

One worker (a real ``Worker`` in a thread, real subprocesses, a real broker
on loopback) takes what hypothesis makes: assignments with absurd timeouts,
grace periods and VRAM, every task class, commands that are huge, hold NUL
bytes or odd text, folders and logs that do not exist or lie outside its
plan root, environments with names no process can have, the same attempt id
twice, cancels of attempts it never had, and random messages of the other
types. Every attempt id mentioned must get a result, the worker must stay
up, and afterwards it must still run an ordinary task.

The worker's plan root is a temporary folder, so its logs cannot land
anywhere else, and a folder in it is protected, which the tasks try to
write into.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import shlex
import time
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmo.proto.messages import (
    MESSAGE_CLASSES,
    Ack,
    Message,
    TaskAssign,
    TaskCancel,
    TaskDone,
    TaskFailed,
    WorkerDrain,
)
from llmo.worker.config import WorkerConfig
from llmo.worker.policy import MAX_COMMAND_BYTES
from llmo.worker.rules import Policy
from llmo.worker.service import Worker
from tests.conftest import RunningBroker
from tests.strategies import record
from tests.test_fuzz_tally import examples, fuzz_tally  # noqa: F401  (fixture)
from tests.waiting import wait_until
from tests.worker_fixtures import FakeBrain, FakeTelemetry, RunningWorker

pytestmark = pytest.mark.timeout(180)

NAME = "gpu-f"
RESULT_WAIT_S = 20.0


@dataclasses.dataclass
class Bench:
    root: Path
    batch: Path
    brain: FakeBrain
    worker: RunningWorker
    results: dict[str, list[Message]] = dataclasses.field(default_factory=dict)

    def collect(self, wanted: set[str], timeout: float = RESULT_WAIT_S) -> set[str]:
        """Receive until every attempt id in ``wanted`` has a result; the ids still missing."""
        deadline = time.monotonic() + timeout
        missing = {a for a in wanted if a not in self.results}
        while missing and time.monotonic() < deadline:
            msg = self.brain.client.recv(0.05)
            if isinstance(msg, TaskDone | TaskFailed):
                # Acknowledged as the brain would, or the worker sends it again.
                self.brain.client.send(Ack(dst=msg.src, reply_to=msg.id))
                self.results.setdefault(msg.attempt_id, []).append(msg)
                missing.discard(msg.attempt_id)
        return missing


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-worker")
    batch = root / "plan" / "history" / "b1"
    batch.mkdir(parents=True)
    context = zmq.Context()
    broker = RunningBroker()
    brain = FakeBrain(broker.endpoint, context)
    config = WorkerConfig(
        name=NAME,
        slots=2,
        heartbeat_s=0.2,
        stop_deadline_s=2.0,
        stop_grace_s=0.5,
        confirm_s=0.5,
        threads=1,
        policy=Policy(plan_roots=(str(root),), protected_paths=(str(root / "protected"),)),
    )
    worker = Worker(config, broker.endpoint, telemetry=FakeTelemetry(), context=context)
    running = RunningWorker(worker)
    brain.heartbeat(NAME)
    yield Bench(root=root, batch=batch, brain=brain, worker=running)
    running.stop()
    brain.close()
    broker.stop()
    context.destroy(linger=0)


# --- inputs -------------------------------------------------------------------------------

ABSURD_SECONDS = st.sampled_from([-1e308, -1.0, 0.0, 1e-9, 0.05, 5.0, 1e308, math.inf, math.nan])
ABSURD_MB = st.sampled_from([-(2**63), -1, 0, 100, 2**31, 2**63 - 1])


def commands(root: Path) -> st.SearchStrategy[str]:
    """Commands that end by themselves, and text no shell should be given."""
    quick = st.sampled_from(
        [
            "true",
            "exit 3",
            "exit 75",
            "echo out; echo err >&2",
            "sleep 0.05",
            "trap '' TERM; sleep 0.3",
            "cat /nonexistent",
            "kill -9 $$",
            "",
            "load_llm",
            "unload_llm",
            "load_llm /no/such/model.gguf",
            "echo x > ../../../protected/escaped.txt",  # from the batch folder
            "sudo true",
        ]
    )
    echoed = st.text(max_size=200).map(lambda t: f"printf %s {shlex.quote(t)} > /dev/null")
    huge = st.sampled_from([MAX_COMMAND_BYTES - 100, MAX_COMMAND_BYTES + 1, 2_000_000]).map(
        lambda n: "true " + "#" * n
    )
    nul = st.just("echo a\x00b")
    return st.one_of(quick, quick, echoed, huge, nul)


def folders(root: Path, batch: Path) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            str(batch),
            str(batch),
            str(root / "missing" / "deeper"),
            str(root / "plan" / "history" / "b1" / "logs" / "t.log"),  # a file, not a folder
            "/",
            "relative/folder",
            "",
            str(batch) + "\x00",
        ]
    )


@st.composite
def assignments(draw, prefix: str, root: Path, batch: Path) -> TaskAssign:
    """An ordinary assignment with up to three of its fields made absurd."""
    attempt = f"{prefix}-{draw(st.integers(0, 3))}"
    fields = {
        "task_class": draw(st.sampled_from(["cpu", "cpu", "script"])),
        "command": draw(commands(root)),
        "batch_path": str(batch),
        "log_path": str(batch / "logs" / f"{attempt}.log"),
        "env": {},
        "timeout_s": 5.0,
        "grace_s": 0.5,
        "vram_mb": 0,
        "model": "",
        "executor": "worker",
    }
    absurd = {
        "task_class": st.sampled_from(["llm", "brain", "meta"]),
        "batch_path": folders(root, batch),
        "log_path": st.sampled_from(
            ["", str(root / "no" / "such" / "x.log"), "/proc/x", str(batch), "x\x00.log"]
        ),
        "env": st.sampled_from(
            [{"A=B": "1"}, {"": "x"}, {"NUL": "a\x00b"}, {"PATH": "/nowhere"}, {"X": "y" * 10**5}]
        ),
        "timeout_s": ABSURD_SECONDS,
        "grace_s": ABSURD_SECONDS,
        "vram_mb": ABSURD_MB,
        "model": st.sampled_from(["m", "/no/such/model.gguf", "x" * 1000]),
        "executor": st.just("brain"),
    }
    for name in draw(st.lists(st.sampled_from(sorted(absurd)), max_size=3, unique=True)):
        fields[name] = draw(absurd[name])
    return TaskAssign(
        dst=NAME,
        batch_id="fuzz",
        task_id=attempt,
        attempt_id=attempt,
        plan_path=str(root / "plan"),
        **fields,
    )


@st.composite
def cancels(draw, prefix: str) -> TaskCancel:
    attempt = draw(st.sampled_from([f"{prefix}-{draw(st.integers(0, 3))}", f"{prefix}-never"]))
    return TaskCancel(
        dst=NAME,
        batch_id=draw(st.sampled_from(["fuzz", "other", ""])),
        task_id=draw(st.text(max_size=10)),
        attempt_id=attempt,
        mode=draw(st.sampled_from(["abort", "kill"])),
        reason=draw(st.text(max_size=20)),
    )


OTHER_TYPES = [
    cls
    for cls in MESSAGE_CLASSES.values()
    if cls not in (TaskAssign, TaskCancel, WorkerDrain)  # a drain would stop the run on purpose
]
others = (
    st.sampled_from(OTHER_TYPES).flatmap(record).map(lambda m: dataclasses.replace(m, dst=NAME))
)
counter = itertools.count()


@given(data=st.data())
@settings(
    max_examples=examples(250),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_every_input_is_answered_and_the_worker_stays_up(bench, data, fuzz_tally):  # noqa: F811
    prefix = f"e{next(counter)}"
    one = st.one_of(
        assignments(prefix, bench.root, bench.batch),
        assignments(prefix, bench.root, bench.batch),
        cancels(prefix),
        others,
    )
    batch = data.draw(st.lists(one, min_size=1, max_size=6))
    for msg in batch:
        bench.brain.send(msg)
    wanted = {m.attempt_id for m in batch if isinstance(m, TaskAssign | TaskCancel)}
    missing = bench.collect(wanted)
    assert bench.worker.thread.is_alive(), "the worker died"
    assert not missing, f"no result for {sorted(missing)}"
    fuzz_tally.add("worker", len(batch))


def test_the_worker_still_runs_an_ordinary_task(bench, fuzz_tally):  # noqa: F811
    assert bench.worker.thread.is_alive()
    # A fuzzed cancel can answer for an attempt id before a fuzzed assignment of the
    # same id ends, so attempts of the examples may still be running: let them end.
    assert wait_until(lambda: not bench.worker.worker.attempts.running, 60)
    msg = TaskAssign(
        dst=NAME,
        batch_id="fuzz",
        task_id="ordinary",
        attempt_id="ordinary-1",
        task_class="cpu",
        command="echo fine > fine.txt",
        plan_path=str(bench.root / "plan"),
        batch_path=str(bench.batch),
        log_path=str(bench.batch / "logs" / "ordinary.log"),
    )
    bench.brain.send(msg)
    assert not bench.collect({"ordinary-1"})
    result = bench.results["ordinary-1"][-1]
    assert isinstance(result, TaskDone), result
    assert (bench.batch / "fine.txt").read_text() == "fine\n"
    assert not (bench.root / "protected" / "escaped.txt").exists()
    fuzz_tally.add("worker")


# --- what the fuzzing found ------------------------------------------------------------------


def assign(bench: Bench, attempt: str, **fields) -> TaskAssign:
    base = TaskAssign(
        dst=NAME,
        batch_id="fuzz",
        task_id=attempt,
        attempt_id=attempt,
        task_class="cpu",
        command="true",
        plan_path=str(bench.root / "plan"),
        batch_path=str(bench.batch),
        log_path=str(bench.batch / "logs" / f"{attempt}.log"),
    )
    return dataclasses.replace(base, **fields)


@pytest.mark.parametrize(
    ("attempt", "fields", "reason", "words"),
    [
        ("nul-cmd", {"command": "echo a\x00b"}, "policy", "unusable_text"),
        ("nul-env", {"env": {"NUL": "a\x00b"}}, "spawn_error", "null byte"),
        ("eq-env", {"env": {"A=B": "1"}}, "spawn_error", "environment variable"),
        ("nul-log", {"log_path": "/tmp/x\x00.log"}, "policy", "unusable_text"),
    ],
)
def test_text_that_no_system_call_takes_is_answered_not_fatal(
    bench, attempt, fields, reason, words
):
    """These made Popen (or open) raise ValueError through the worker's loop and stop it."""
    bench.brain.send(assign(bench, attempt, **fields))
    assert not bench.collect({attempt})
    result = bench.results[attempt][-1]
    assert isinstance(result, TaskFailed), result
    assert result.reason == reason and words in result.error, result
    assert bench.worker.thread.is_alive()


@pytest.mark.parametrize(
    ("attempt", "fields", "words"),
    [
        ("neg-vram", {"vram_mb": -4096}, "vram_mb"),
        ("nan-timeout", {"timeout_s": math.nan}, "timeout_s"),
        ("inf-grace", {"grace_s": math.inf}, "grace_s"),
        ("neg-grace", {"grace_s": -1.0}, "grace_s"),
    ],
)
def test_absurd_figures_are_refused(bench, attempt, fields, words):
    """A negative VRAM claim would have grown the budget for everyone else; a NaN or
    infinite timeout or grace would have left a stuck attempt's slot taken for good."""
    bench.brain.send(assign(bench, attempt, **fields))
    assert not bench.collect({attempt})
    result = bench.results[attempt][-1]
    assert isinstance(result, TaskFailed) and result.reason == "refused", result
    assert words in result.error, result.error
