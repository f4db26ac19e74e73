"""The command policy on a real worker: refusals answered and logged, escapes
refused, resource limits in force, secrets kept out of tasks. Real
subprocesses, a real broker on loopback."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

import pytest

from llmo.proto.messages import TaskAssign, TaskDone, TaskFailed
from llmo.worker.rlimits import Rlimits
from llmo.worker.rules import Policy
from llmo.worker.shell import KEEP_ENV, task_env
from tests.worker_fixtures import brain_factory, worker_factory  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(60)


@dataclasses.dataclass
class Rig:
    """A plan root with one plan and one batch folder, a config file and a keys
    folder beside it (not under the root), and the policy protecting them."""

    root: Path
    plan: Path
    batch: Path
    config: Path
    keys: Path

    @classmethod
    def make(cls, tmp_path: Path) -> Rig:
        root = tmp_path / "plans"
        plan = root / "p1"
        batch = plan / "history" / "20260101_000000"
        batch.mkdir(parents=True)
        config = tmp_path / "llmo.toml"
        config.write_text("[endpoints]\n")
        keys = tmp_path / "keys"
        keys.mkdir()
        (keys / "broker.key_secret").write_text("secret\n")
        return cls(root, plan, batch, config, keys)

    def policy(self, **changes) -> Policy:
        base = Policy(
            plan_roots=(str(self.root),), protected_paths=(str(self.config), str(self.keys))
        )
        return dataclasses.replace(base, **changes)

    def assign(self, task_id: str, command: str, **fields) -> TaskAssign:
        batch = Path(fields.pop("batch_path", self.batch))
        return TaskAssign(
            dst="gpu-t",
            batch_id="20260101_000000",
            task_id=task_id,
            attempt_id=f"20260101_000000:{task_id}:1",
            task_class=fields.pop("task_class", "cpu"),
            command=command,
            plan_path=str(fields.pop("plan_path", self.plan)),
            batch_path=str(batch),
            log_path=str(batch / "logs" / f"{task_id}.log"),
            **fields,
        )

    def log(self, task_id: str) -> str:
        return (self.batch / "logs" / f"{task_id}.log").read_text()


@pytest.fixture
def rig(tmp_path) -> Rig:
    return Rig.make(tmp_path)


@pytest.fixture
def start(running_broker, brain_factory, worker_factory):  # noqa: F811
    """``start(policy)``: a worker with that policy and a stand-in brain it has reached."""

    def go(policy: Policy, **config):
        brain = brain_factory(running_broker.endpoint)
        worker = worker_factory(running_broker.endpoint, policy=policy, **config)
        brain.heartbeat(worker.name)
        return brain

    return go


def run(brain, msg: TaskAssign, cls=(TaskDone, TaskFailed)):
    brain.send(msg)
    return brain.expect(cls, attempt_id=msg.attempt_id)


def refused(brain, msg: TaskAssign, rule: str) -> TaskFailed:
    result = run(brain, msg)
    assert isinstance(result, TaskFailed), result
    assert result.reason == "policy", result
    assert f": {rule}: " in result.error, result.error
    assert result.error.startswith("refused by the policy of gpu-t: ")
    return result


# --- refusals ------------------------------------------------------------------------------


def test_a_refused_pattern_is_answered_and_logged(start, rig):
    brain = start(rig.policy())
    msg = rig.assign("escalate", "sudo touch owned")
    result = refused(brain, msg, "refused_patterns")
    assert "sudo" in result.error and "sudo" in result.log_tail
    log = rig.log("escalate")
    assert "refused by the policy of gpu-t: refused_patterns" in log
    assert not (rig.batch / "owned").exists()
    # The worker goes on: the next task runs.
    assert isinstance(run(brain, rig.assign("fine", "echo ok > fine.txt")), TaskDone)
    assert (rig.batch / "fine.txt").read_text() == "ok\n"


def test_writes_into_protected_paths_by_dot_dot_are_refused(start, rig):
    brain = start(rig.policy())
    up = "../" * 4  # from the batch folder to tmp_path, where the config lives
    before = rig.config.read_text()
    refused(brain, rig.assign("clobber", f"echo pwned > {up}llmo.toml"), "protected_paths")
    refused(brain, rig.assign("steal", f"cp evil {up}keys/broker.key_secret"), "protected_paths")
    refused(
        brain, rig.assign("nested", f"sh -c 'rm -f $BATCH_PATH/{up}llmo.toml'"), "protected_paths"
    )
    assert rig.config.read_text() == before
    assert (rig.keys / "broker.key_secret").read_text() == "secret\n"
    assert "protected_paths" in rig.log("clobber")


def test_cd_out_of_the_plan_root_is_refused(start, rig):
    brain = start(rig.policy())
    up = "../" * 4
    refused(brain, rig.assign("leave", f"cd {up} && echo pwned > llmo.toml"), "plan_roots")
    refused(brain, rig.assign("root", "cd / && ls"), "plan_roots")
    assert rig.config.read_text() == "[endpoints]\n"
    # Moving about inside the root is fine.
    done = run(brain, rig.assign("inside", "cd ../.. && pwd > $BATCH_PATH/where.txt"))
    assert isinstance(done, TaskDone), done
    assert (rig.batch / "where.txt").read_text().strip() == str(rig.plan)


def test_a_batch_folder_outside_the_roots_is_refused_and_nothing_written_there(
    start, rig, tmp_path
):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    brain = start(rig.policy())
    msg = rig.assign("away", "echo x > x.txt", batch_path=outside)
    result = refused(brain, msg, "plan_roots")
    assert str(outside) in result.error
    assert list(outside.iterdir()) == []  # neither the task's file nor the worker's log


def test_a_link_out_of_the_batch_folder_is_followed(start, rig):
    (rig.batch / "k").symlink_to(rig.keys)
    brain = start(rig.policy())
    refused(brain, rig.assign("via-link", "echo pwned > k/broker.key_secret"), "protected_paths")
    assert (rig.keys / "broker.key_secret").read_text() == "secret\n"


def test_without_protection_the_kernel_still_stops_a_write_outside(start, rig):
    """Without protected paths or plan roots the pattern check lets the write
    through; the kernel rules (writes beneath the task's plan and batch folders
    and its TMPDIR only) stop it."""
    brain = start(rig.policy(protected_paths=(), plan_roots=()))
    up = "../" * 4
    result = run(brain, rig.assign("w", f"echo more >> {up}llmo.toml"))
    assert isinstance(result, TaskFailed) and result.reason != "policy", result
    assert "Permission denied" in result.log_tail
    assert rig.config.read_text() == "[endpoints]\n"
    done = run(brain, rig.assign("in-plan", "echo ok > $PLAN_PATH/ok.txt"))
    assert isinstance(done, TaskDone), done


def test_a_meta_task_is_not_shell_and_is_refused_as_meta_not_checked(start, rig):
    """A meta command is no shell text: the worker refuses it as the brain's work,
    whatever the policy's patterns say, and writes nothing to its log."""
    brain = start(rig.policy(refused_patterns=(r"unload",)))
    msg = rig.assign("unload", "unload_llm", task_class="meta")
    result = run(brain, msg)
    assert isinstance(result, TaskFailed) and result.reason == "refused", result
    assert "runs no meta tasks" in result.error, result.error
    assert not os.path.exists(msg.log_path)


# --- resource limits -------------------------------------------------------------------------


def test_a_cpu_bound_task_is_stopped_by_its_cpu_limit(start, rig):
    brain = start(rig.policy(rlimits={"cpu": Rlimits(cpu_s=1)}))
    result = run(brain, rig.assign("spin", "while :; do :; done"))
    assert isinstance(result, TaskFailed), result
    assert result.reason == "exit"
    assert result.signal == signal.SIGXCPU
    assert "SIGXCPU" in result.error and "CPU time limit of 1s for cpu tasks" in result.error


def test_other_classes_are_not_limited_by_a_class_limit(start, rig):
    brain = start(rig.policy(rlimits={"script": Rlimits(cpu_s=1)}))
    result = run(brain, rig.assign("ulimit", "ulimit -t > cpu.txt"))
    assert isinstance(result, TaskDone), result
    assert (rig.batch / "cpu.txt").read_text().strip() == "unlimited"


OPEN_MANY = f"{sys.executable} -c \"fs = [open('/dev/null') for _ in range(64)]; print('opened')\""


def test_too_many_open_files_fail_under_the_limit(start, rig):
    brain = start(rig.policy(rlimits={"default": Rlimits(open_files=32)}))
    for task_class in ("cpu", "script"):  # "default" covers every class
        result = run(brain, rig.assign(f"files-{task_class}", OPEN_MANY, task_class=task_class))
        assert isinstance(result, TaskFailed), result
        assert result.exit_code == 1
        assert "Too many open files" in result.log_tail


def test_the_same_task_opens_its_files_without_the_limit(start, rig):
    brain = start(rig.policy())
    result = run(brain, rig.assign("files-free", OPEN_MANY))
    assert isinstance(result, TaskDone), result
    assert "opened" in result.log_tail


def test_address_space_limit(start, rig):
    grab = f"{sys.executable} -c \"b = bytearray(1024 * 1024 * 1024); print('got it')\""
    brain = start(rig.policy(rlimits={"cpu": Rlimits(address_space_mb=256)}))
    result = run(brain, rig.assign("grab", grab))
    assert isinstance(result, TaskFailed), result
    assert "MemoryError" in result.log_tail


# --- the environment ---------------------------------------------------------------------------

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "aws",
    "AWS_ACCESS_KEY_ID": "aws-id",
    "GITHUB_TOKEN": "gh",
    "HF_TOKEN": "hf",
    "OPENAI_API_KEY": "the-operators-own",
    "LLM_API_KEY": "a-stale-one",
    "LLMO_CURVE_SECRET_KEY": "curve-secret",
    "DATABASE_PASSWORD": "pw",
    "SSH_AUTH_SOCK": "/tmp/agent",
    "LD_PRELOAD": "/tmp/evil.so",
}


def test_no_secret_of_the_worker_reaches_a_task(start, rig, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    brain = start(rig.policy())
    result = run(brain, rig.assign("env", "env -0 > env.bin"))
    assert isinstance(result, TaskDone), result
    pairs = (rig.batch / "env.bin").read_bytes().decode().split("\0")
    env = dict(pair.split("=", 1) for pair in pairs if pair)
    assert not set(SECRETS) & set(env), set(SECRETS) & set(env)
    assert not set(SECRETS.values()) & set(env.values())
    secretish = [n for n in env if any(w in n for w in ("KEY", "TOKEN", "SECRET", "PASSWORD"))]
    assert secretish == []


def test_only_the_workers_own_endpoint_key_is_given():
    base = dict(os.environ, **SECRETS, PATH="/usr/bin:/bin", HOME="/home/llmo")
    msg = TaskAssign(batch_id="b", task_id="t", attempt_id="a", task_class="llm", command="true")
    own = {"LLM_API_BASE": "http://127.0.0.1:1/v1", "LLM_API_KEY": "meter-key"}
    env = task_env(msg, base=base, extra=own)
    assert env["LLM_API_KEY"] == "meter-key"
    allowed = {*KEEP_ENV, "PLAN_PATH", "BATCH_PATH", "BATCH_ID", "TASK_ID", "ATTEMPT_ID"}
    allowed.add("WORKER_NAME")
    allowed |= {"PYTHONUNBUFFERED", *own}
    assert set(env) <= allowed, set(env) - allowed
    assert not {v for k, v in env.items() if k != "PATH"} & set(SECRETS.values())
