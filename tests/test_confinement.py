"""Tasks confined by the kernel: attacks run as real tasks on a real worker.

Each attack is a shell task a real worker (real broker on loopback, real
subprocesses) is given under the policy ``llmo`` itself derives
(``worker_policy``: plans folder as plan root, config, keys and rig folder
protected, keys, rig and ``~/.ssh`` secret). HOME, the keys, the rig and
the plans are temporary folders. Whatever the task does, the protected
files must be unchanged, the files it tries to create must not exist, and a
secret it tries to read must not reach its log. Each attack counts as
stopped by the policy (refused before it ran, reason ``policy``) or by the
kernel (it ran, and Landlock or ``no_new_privs`` stopped it); the module
prints ``llmo attacks: N tried, N stopped (kernel k, policy p)``.
"""

from __future__ import annotations

import argparse
import base64
import collections
import dataclasses
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmo.cli import up_cmd
from llmo.cli.config import RigConfig, worker_policy
from llmo.cli.worker_cmd import read_policy
from llmo.proto.messages import TaskAssign, TaskDone, TaskFailed
from llmo.worker import landlock
from llmo.worker.policy import check
from llmo.worker.rules import Policy
from tests.reporting import say
from tests.worker_fixtures import brain_factory, worker_factory  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(120)

SECRET = "curve-secret-7f3a9c"
SSH_SECRET = "ssh-private-e81b2d"
JOURNAL = b"journal-entry\n"
AUTHORIZED = "ssh-ed25519 AAAAoperator operator@pi\n"


class Attacks:
    def __init__(self) -> None:
        self.stopped: collections.Counter[str] = collections.Counter()
        self.tried = 0
        self.through: list[str] = []

    def line(self) -> str:
        stopped = sum(self.stopped.values())
        parts = ", ".join(f"{k} {n}" for k, n in sorted(self.stopped.items()))
        return f"llmo attacks: {self.tried} tried, {stopped} stopped ({parts or 'none'})"


@pytest.fixture(scope="module")
def attacks(request: pytest.FixtureRequest) -> Iterator[Attacks]:
    tally = Attacks()
    yield tally
    line = tally.line()
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        cache.set("llmo/attacks", {"tried": tally.tried, **tally.stopped})
    say(request.config, line)


@dataclasses.dataclass
class Site:
    """A rig on temporary folders: HOME with ``.ssh``, keys, rig folder, plans."""

    tmp: Path
    home: Path
    keys: Path
    rig: Path
    plans: Path
    plan: Path
    batch: Path
    config: Path
    stray: list[Path]  # files outside the temporary folders an attack may create

    @property
    def key_file(self) -> Path:
        return self.keys / "broker.key_secret"

    @property
    def journal(self) -> Path:
        return self.rig / "brain.journal"

    @property
    def authorized(self) -> Path:
        return self.home / ".ssh" / "authorized_keys"

    def snapshot(self) -> dict[str, bytes]:
        files = [self.key_file, self.journal, self.authorized, self.config]
        files += [self.home / ".ssh" / "id_ed25519", self.rig / "policy.json"]
        out = {str(f): f.read_bytes() for f in files if f.exists()}
        for folder in (self.keys, self.rig, self.home / ".ssh"):
            out[f"{folder}/"] = "\n".join(sorted(os.listdir(folder))).encode()
        return out

    def policy(self) -> Policy:
        rig = RigConfig(
            path=str(self.config),
            rig_dir=str(self.rig),
            keys_dir=str(self.keys),
            plans_dir=str(self.plans),
        )
        return worker_policy(rig)

    def assign(self, task_id: str, command: str) -> TaskAssign:
        return TaskAssign(
            dst="gpu-t",
            batch_id="b1",
            task_id=task_id,
            attempt_id=f"b1:{task_id}:1",
            task_class="cpu",
            command=command,
            plan_path=str(self.plan),
            batch_path=str(self.batch),
            log_path=str(self.batch / "logs" / f"{task_id}.log"),
        )


@pytest.fixture
def site(tmp_path, monkeypatch) -> Iterator[Site]:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text(AUTHORIZED)
    (home / ".ssh" / "id_ed25519").write_text(SSH_SECRET + "\n")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "broker.key_secret").write_text(SECRET + "\n")
    rig = tmp_path / "rig"
    rig.mkdir()
    (rig / "brain.journal").write_bytes(JOURNAL)
    plans = tmp_path / "plans"
    plan = plans / "p1"
    batch = plan / "history" / "b1"
    batch.mkdir(parents=True)
    config = tmp_path / "llmo.toml"
    config.write_text("[endpoints]\n")
    monkeypatch.setenv("HOME", str(home))
    tag = uuid.uuid4().hex[:8]
    stray = [Path(f"/etc/cron.d/llmo-attack-{tag}"), Path(f"/dev/sdzz{tag}")]
    site = Site(tmp_path, home, keys, rig, plans, plan, batch, config, stray)
    yield site
    for path in stray:  # should an attack have got through, leave nothing behind
        if path.is_file():
            path.unlink()


@pytest.fixture
def start(running_broker, brain_factory, worker_factory):  # noqa: F811
    def go(policy: Policy, **config):
        brain = brain_factory(running_broker.endpoint)
        worker = worker_factory(running_broker.endpoint, policy=policy, **config)
        brain.heartbeat(worker.name)
        return brain

    return go


def attack_commands(site: Site) -> dict[str, str]:
    """The attacks that got through the pattern policy alone, by name."""
    keys, key, rig = site.keys, site.key_file, site.rig
    up = os.path.relpath(site.tmp, site.batch)
    cron, disk = site.stray
    b64 = base64.b64encode(f"echo pwned >> {key}\n".encode()).decode()
    return {
        "variable": f"D={keys}; echo pwned >> $D/broker.key_secret",
        "cd-subshell": f'cd "$(echo {keys})" && echo pwned >> broker.key_secret',
        "find-exec": f"find {keys} -name '*_secret' -exec sh -c 'echo pwned >> \"$1\"' _ {{}} \\;",
        "xargs": f"echo {key} | xargs -n1 sh -c 'echo pwned >> \"$0\"'",
        "sort-o": f"echo pwned | sort -o {key}",
        "eval": f"C='echo pwned >>'; eval \"$C {key}\"",
        "base64": f"echo {b64} | base64 -d | sh",
        "script-file": f"printf 'echo pwned >> %s\\n' {key} > s.sh && sh s.sh",
        "dot-dot": f"echo pwned >> {up}/keys/broker.key_secret",
        "ssh-authorized-keys": "echo 'ssh-ed25519 AAAAevil evil' >> ~/.ssh/authorized_keys",
        "ssh-by-variable": "S=.ssh; echo 'ssh-ed25519 AAAAevil' >> $HOME/$S/authorized_keys",
        "journal-append": f"printf x >> {rig}/brain.journal",
        "journal-by-variable": f"R={rig}; printf x >> $R/brain.journal",
        "journal-python": f"python3 -c \"open('{rig}/' + 'brain.journal', 'ab').write(b'x')\"",
        "cron-literal": f"echo '* * * * * root id' > {cron}",
        "cron-by-variable": f"C=/etc/cro; echo '* * * * * root id' > ${{C}}n.d/{cron.name}",
        "tee-block-device": f"echo x | tee {disk}",
        "tee-by-variable": f"D=/dev/s; echo x | tee ${{D}}{disk.name[1:]}",
        "shred-block-device": f"shred -n1 {disk}",
        "read-key": f"cat {key}",
        "read-key-by-variable": f"K={keys}; cat $K/*",
        "read-ssh-key": "cat ~/.ssh/id_ed25519",
        "read-journal": f"F={rig}/brain.journal; cat $F",
        "copy-key-out": f"cp {key} stolen.txt; cat stolen.txt",
    }


def leaked(site: Site, name: str, result) -> list[str]:
    """What of the secrets the attack's log, result and batch folder show."""
    texts = [result.log_tail or ""]
    log = site.batch / "logs" / f"{name}.log"
    if log.exists():
        texts.append(log.read_text(errors="replace"))
    texts += [p.read_text(errors="replace") for p in site.batch.iterdir() if p.is_file()]
    found = []
    for secret in (SECRET, SSH_SECRET, JOURNAL.decode().strip()):
        if any(secret in t for t in texts):
            found.append(secret)
    return found


def run_attacks(brain, site: Site, commands: dict[str, str], attacks: Attacks) -> list[str]:
    """Each attack as a task; the ones that got through, with what they did."""
    before = site.snapshot()
    through = []
    for name, command in commands.items():
        msg = site.assign(name, command)
        brain.send(msg)
        result = brain.expect((TaskDone, TaskFailed), attempt_id=msg.attempt_id)
        after = site.snapshot()
        changed = [k for k in before.keys() | after.keys() if before.get(k) != after.get(k)]
        created = [str(p) for p in site.stray if p.exists()]
        secrets = leaked(site, name, result)
        attacks.tried += 1
        if changed or created or secrets:
            through.append(f"{name}: changed {changed}, created {created}, read {secrets}")
            for key in changed:  # put back what it changed, for the next attack to find
                if not key.endswith("/") and key in before:
                    Path(key).write_bytes(before[key])
            for path in site.stray:
                if path.is_file():
                    path.unlink()
        elif isinstance(result, TaskFailed) and result.reason == "policy":
            attacks.stopped["policy"] += 1
        else:
            attacks.stopped["kernel"] += 1
    return through


def test_every_attack_fails_to_touch_the_protected_files(start, site, attacks):
    brain = start(site.policy())
    through = run_attacks(brain, site, attack_commands(site), attacks)
    assert through == [], "\n".join(through)
    # An ordinary task still runs, writes its batch folder and its TMPDIR.
    msg = site.assign("ordinary", 'echo ok > ok.txt && touch "$TMPDIR/t" && cat ok.txt')
    brain.send(msg)
    done = brain.expect((TaskDone, TaskFailed), attempt_id=msg.attempt_id)
    assert isinstance(done, TaskDone), done
    assert (site.batch / "ok.txt").read_text() == "ok\n"


def test_a_setuid_file_a_task_makes_raises_nothing(start, site, attacks):
    """``chmod 04755`` on a copy of a shell: the policy refuses the literal form; built
    in a variable it runs, and what the setuid file runs has no_new_privs set."""
    brain = start(site.policy())
    show = "-c 'grep NoNewPrivs /proc/self/status'"
    make = f"cp /bin/sh ./rootsh && chmod 04755 ./rootsh && ./rootsh {show}"
    evade = f"M=04755; cp /bin/sh ./rootsh2 && chmod $M ./rootsh2 && ./rootsh2 {show}"
    msg = site.assign("setuid-literal", make)
    brain.send(msg)
    result = brain.expect((TaskDone, TaskFailed), attempt_id=msg.attempt_id)
    attacks.tried += 1
    assert isinstance(result, TaskFailed) and result.reason == "policy", result
    assert not (site.batch / "rootsh").exists()
    attacks.stopped["policy"] += 1
    msg = site.assign("setuid-variable", evade)
    brain.send(msg)
    result = brain.expect((TaskDone, TaskFailed), attempt_id=msg.attempt_id)
    attacks.tried += 1
    assert isinstance(result, TaskDone), result
    assert "NoNewPrivs:\t1" in result.log_tail, result.log_tail
    attacks.stopped["kernel"] += 1


def test_a_bare_llmo_up_protects_the_rig_folder(start, site, attacks, monkeypatch):
    """Without --config, the workers are still given the rig folder as secret:
    a task can neither append to the journal nor read it."""
    monkeypatch.chdir(site.tmp)
    parser = argparse.ArgumentParser()
    up_cmd.configure(parser)
    monkeypatch.delenv("LLMO_KEYS_DIR", raising=False)
    args = parser.parse_args(["--rig-dir", str(site.rig), "--model", "m.gguf"])
    _, children = up_cmd.plan_children(args)
    argv = dict(children)["cpu-1"]
    assert "--policy" in argv, argv
    policy = read_policy(argv[argv.index("--policy") + 1])
    assert str(site.rig) in policy.secret_paths
    brain = start(policy)
    rig = site.rig
    commands = {
        "bare-journal-append": f"printf x >> {rig}/brain.journal",
        "bare-journal-variable": f"R={rig}; printf x >> $R/brain.journal",
        "bare-journal-read": f"cat {rig}/brain.journal",
        "bare-policy-rewrite": f"R={rig}; echo '{{}}' > $R/policy.json",
    }
    through = run_attacks(brain, site, commands, attacks)
    assert through == [], "\n".join(through)


@pytest.mark.parametrize(
    "command",
    [
        "s\\udo id",
        '"sudo" id',
        "install -m 4755 /bin/sh ./sh",
        "install -m 04755 /bin/sh ./sh",
        "chmod 04755 ./x",
        "mke2fs /dev/sdb1",
        "wipefs -a /dev/sdb",
        "shred /dev/sda",
        "echo x | tee /dev/sda",
        "echo x > /etc/cron.d/evil",
        "crontab evil.txt",
        "echo x >> ~/.ssh/authorized_keys",
    ],
)
def test_escalation_patterns_are_refused_early(site, command):
    reason = check(
        command,
        str(site.plan),
        str(site.batch),
        site.policy(),
        env={"HOME": str(site.home)},
    )
    assert reason is not None, command


def test_without_landlock_the_worker_warns_and_still_sets_no_new_privs(start, site, caplog):
    """The degraded path: ABI 0 (as on a kernel without Landlock). One loud warning
    at start; tasks run with no_new_privs; writes are the file system's to refuse."""
    assert landlock.probe()[0] >= 1, "this test needs a kernel with Landlock (CI has one)"
    assert landlock.probe(0) == (0, "Landlock is turned off in this worker's configuration")
    outside = site.tmp / "outside.txt"
    with caplog.at_level(logging.WARNING, logger="llmo"):
        brain = start(site.policy(), landlock_abi=0)
    warnings = [r.getMessage() for r in caplog.records if "NOT confined" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("tasks are NOT confined by the kernel: ")
    msg = site.assign("degraded", f"P={outside}; echo x > $P; grep NoNewPrivs /proc/self/status")
    brain.send(msg)
    result = brain.expect((TaskDone, TaskFailed), attempt_id=msg.attempt_id)
    assert isinstance(result, TaskDone), result
    assert "NoNewPrivs:\t1" in result.log_tail
    assert outside.exists()  # no kernel rule stopped it


def test_the_read_complement_lists_the_siblings_of_the_way_down(tmp_path):
    (tmp_path / "a" / "keys").mkdir(parents=True)
    (tmp_path / "a" / "plans").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "link").symlink_to(tmp_path / "a" / "keys")
    got = list(landlock.allow_except(str(tmp_path), [str(tmp_path / "a" / "keys")]))
    assert got == [str(tmp_path / "a" / n) for n in ("notes.txt", "plans")] + [str(tmp_path / "b")]
    # A root inside a denied folder is granted: an explicit plan root in the rig folder.
    inner = str(tmp_path / "a" / "plans")
    assert list(landlock.allow_except(inner, [str(tmp_path / "a")])) == [inner]
