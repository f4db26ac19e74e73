"""Tasks run as a separate user: a second barrier besides Landlock.

A real worker (real broker on loopback, real subprocesses) configured with
``task_user = "nobody"`` runs each task as that user: ``id -u`` prints its
uid, the task writes its result into its batch folder (a folder shared with
the task user's group, as ``docs/deploy.md`` sets up the plans share), and a
file mode 0600 owned by the worker's user in a "keys" folder stays
unreadable, even with Landlock turned off (``landlock_abi=0``), so the user
barrier stands on its own. A worker asked for a user that does not exist
refuses to start, with the reason in one line.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llmo.proto.messages import TaskAssign, TaskDone, TaskFailed
from llmo.worker import taskuser
from llmo.worker.config import WorkerConfig
from llmo.worker.rules import Policy
from llmo.worker.service import Worker
from tests.worker_fixtures import FakeTelemetry, brain_factory, worker_factory  # noqa: F401

pytestmark = pytest.mark.timeout(120)

SECRET = "curve-secret-task-user-5c1e"
CLI = [sys.executable, "-m", "llmo.cli.main"]


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


NOBODY = _nobody()
needs_switch = pytest.mark.skipif(
    NOBODY is None or taskuser.switch_refusal() != "",
    reason=(
        "needs a `nobody` user and root or CAP_SETUID+CAP_SETGID to run tasks as it"
        if NOBODY is None
        else f"cannot switch users here: {taskuser.switch_refusal()}"
    ),
)


@pytest.fixture
def shared(tmp_path):
    """The plan and batch folders, shared with nobody's group (setgid, group-writable),
    and a keys folder with a secret file mode 0600 owned by this test's user."""
    assert NOBODY is not None
    os.chmod(tmp_path, 0o755)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    secret = keys / "broker.key_secret"
    secret.write_text(SECRET + "\n")
    os.chmod(secret, 0o600)
    plan = tmp_path / "plans" / "p1"
    batch = plan / "history" / "b1"
    batch.mkdir(parents=True)
    for folder in (tmp_path / "plans", plan, plan / "history", batch):
        os.chown(folder, os.getuid(), NOBODY.pw_gid)
        os.chmod(folder, 0o2770)
    return tmp_path, keys, secret, plan, batch


def _assign(plan: Path, batch: Path, task_id: str, command: str) -> TaskAssign:
    return TaskAssign(
        dst="gpu-t",
        batch_id="b1",
        task_id=task_id,
        attempt_id=f"b1:{task_id}:1",
        task_class="cpu",
        command=command,
        plan_path=str(plan),
        batch_path=str(batch),
        log_path=str(batch / "logs" / f"{task_id}.log"),
    )


def _run(brain, msg: TaskAssign):
    brain.send(msg)
    return brain.expect((TaskDone, TaskFailed), attempt_id=msg.attempt_id)


@needs_switch
@pytest.mark.parametrize("landlock_abi", [None, 0], ids=["landlock", "no-landlock"])
def test_tasks_run_as_the_task_user_and_cannot_read_the_workers_secrets(
    running_broker,
    brain_factory,  # noqa: F811
    worker_factory,  # noqa: F811
    shared,
    landlock_abi,
):
    _, keys, secret, plan, batch = shared
    assert NOBODY is not None
    policy = Policy(plan_roots=(str(plan.parent),), secret_paths=(str(keys),))
    brain = brain_factory(running_broker.endpoint)
    worker = worker_factory(
        running_broker.endpoint, policy=policy, task_user="nobody", landlock_abi=landlock_abi
    )
    brain.heartbeat(worker.name)

    who = _run(
        brain,
        _assign(
            plan,
            batch,
            "who",
            'id -u > uid.txt && id -G > groups.txt && echo "$HOME" > home.txt'
            ' && touch "$TMPDIR/t" && grep -h "^Cap" /proc/self/status > caps.txt',
        ),
    )
    assert isinstance(who, TaskDone), who
    assert (batch / "uid.txt").read_text().strip() == str(NOBODY.pw_uid)
    assert (batch / "uid.txt").stat().st_uid == NOBODY.pw_uid
    groups = set((batch / "groups.txt").read_text().split())
    assert "0" not in groups, f"the task kept the worker's groups: {groups}"
    caps = dict(line.split(":\t") for line in (batch / "caps.txt").read_text().splitlines())
    held = {k: v.strip() for k, v in caps.items() if int(v, 16) != 0 and k != "CapBnd"}
    assert held == {}, f"the task holds capabilities: {held}"
    home = (batch / "home.txt").read_text().strip()
    assert home.startswith(os.path.join("/", "tmp")) or "llmo-task-" in home, home

    steal = _run(brain, _assign(plan, batch, "steal", f"cat {secret} > stolen.txt"))
    assert (isinstance(steal, TaskDone) and steal.exit_code != 0) or isinstance(steal, TaskFailed)
    stolen = batch / "stolen.txt"
    assert not stolen.exists() or SECRET not in stolen.read_text()
    log = (batch / "logs" / "steal.log").read_text()
    assert SECRET not in log
    assert "Permission denied" in log, log
    # The private temporary folders went with their attempts.
    assert not list(Path("/tmp").glob("llmo-task-*/t"))


def test_a_task_user_that_does_not_exist_is_refused_in_one_line():
    with pytest.raises(taskuser.TaskUserError) as caught:
        taskuser.resolve("no-such-user-llmo")
    assert str(caught.value).count("\n") == 0
    assert "'no-such-user-llmo'" in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_a_worker_with_a_missing_task_user_does_not_start(running_broker):
    config = WorkerConfig(name="gpu-t", task_user="no-such-user-llmo")
    with pytest.raises(taskuser.TaskUserError, match="no-such-user-llmo"):
        Worker(config, running_broker.endpoint, telemetry=FakeTelemetry())


def test_llmo_worker_refuses_a_missing_task_user_with_exit_code_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmo.cli.main",
            "worker",
            "--name",
            "gpu-t",
            "--broker",
            "tcp://127.0.0.1:1",
            "--task-user",
            "no-such-user-llmo",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--task-user" in lines[0] and "no-such-user-llmo" in lines[0]
    assert "does not exist" in lines[0]


def test_without_the_privilege_to_switch_the_reason_is_given():
    status = "Name:\tllmo\nCapEff:\t0000000000000000\n"
    why = taskuser.switch_refusal(uid=1000, status=status)
    assert "CAP_SETUID" in why and "CAP_SETGID" in why
    both = (1 << taskuser.CAP_SETUID) | (1 << taskuser.CAP_SETGID)
    assert taskuser.switch_refusal(uid=1000, status=f"CapEff:\t{both:016x}\n") == ""
    assert taskuser.switch_refusal(uid=0, status=status) == ""
    with pytest.raises(taskuser.TaskUserError, match="CAP_SETUID"):
        taskuser.resolve("nobody", uid=1000, status=status)


SETPRIV = shutil.which("setpriv")
AS_SERVICE = """
import subprocess
from llmo.worker import taskuser
from llmo.worker.shell import ShellAttempt
user = taskuser.resolve("nobody")
out = subprocess.run(["sh", "-c", "id -u; grep ^Cap /proc/self/status"],
                     preexec_fn=user.become, capture_output=True, text=True).stdout
print(out, end="")
shell = ShellAttempt.spawn("sleep 60", cwd="/", env={}, log_path="/dev/null", user=user)
shell.kill()
print("killed by", shell.reap().signal)
"""


@pytest.mark.skipif(
    SETPRIV is None or os.getuid() != 0 or NOBODY is None,
    reason="needs root, setpriv (util-linux) and a `nobody` user to start a worker as the "
    "systemd unit does: a non-root user with ambient capabilities",
)
def test_a_non_root_worker_with_ambient_capabilities_leaves_none_to_its_tasks():
    """As ``llmo-worker@`` runs it: uid llmo, ambient CAP_SETUID CAP_SETGID CAP_KILL.
    Switching between two non-root users keeps capabilities unless they are dropped."""
    caps = "+setuid,+setgid,+kill"
    result = subprocess.run(
        [
            str(SETPRIV),
            "--reuid=4242",
            "--regid=4242",
            "--clear-groups",
            f"--inh-caps={caps}",
            f"--ambient-caps={caps}",
            "--",
            sys.executable,
            "-c",
            AS_SERVICE,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "65534", result.stdout
    held = [line for line in lines if line.startswith("Cap") and not line.startswith("CapBnd")]
    assert held and all(line.endswith("0000000000000000") for line in held), held
    assert lines[-1] == f"killed by {signal.SIGKILL.value}", result.stdout


def test_the_task_user_of_a_workers_entry_is_checked_at_start(tmp_path):
    config = tmp_path / "llmo.toml"
    config.write_text(
        '[endpoints]\nbroker = "tcp://127.0.0.1:1"\n\n'
        '[[workers]]\nname = "gpu-t"\ntask_user = "no-such-user-llmo"\n'
    )
    result = subprocess.run(
        [*CLI, "worker", "--config", str(config), "--name", "gpu-t"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines() == [
        "llmo worker: --task-user no-such-user-llmo: task user 'no-such-user-llmo' does not "
        "exist on this machine (create it: useradd --system --no-create-home --shell "
        "/usr/sbin/nologin no-such-user-llmo)"
    ]
