"""The command policy as a pure check: each rule refuses what it should, names
itself, and lets ordinary commands through."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmo.worker.policy import MAX_COMMAND_BYTES, check, writable
from llmo.worker.rlimits import Rlimits
from llmo.worker.rules import DEFAULT_REFUSED_PATTERNS, Policy, PolicyError, default_protected
from tests.test_fuzz_tally import examples, fuzz_tally  # noqa: F401  (fixture)

ROOT = "/srv/plans"
PLAN = "/srv/plans/p1"
BATCH = "/srv/plans/p1/history/20260101_000000"
LOG = BATCH + "/logs/t.log"
CONFIG = "/etc/llmo/llmo.toml"
KEYS = "/etc/llmo/keys"
POLICY = Policy(plan_roots=(ROOT,), protected_paths=(CONFIG, KEYS))
ENV = {"HOME": "/etc/llmo", "BATCH_PATH": BATCH, "PLAN_PATH": PLAN}


def refused(command: str, policy: Policy = POLICY, **kwargs) -> str | None:
    kwargs.setdefault("log_path", LOG)
    kwargs.setdefault("env", ENV)
    return check(command, kwargs.pop("plan", PLAN), kwargs.pop("batch", BATCH), policy, **kwargs)


@pytest.mark.parametrize(
    "command",
    [
        "echo hello > out.txt",
        "echo hello >> $BATCH_PATH/out.txt 2>&1",
        "python3 script.py > out.json 2> err.txt",
        f"{sys.executable} -c 'print(1)' | tee out.txt",
        f"cat {CONFIG} | grep broker > found.txt",  # reading is not writing
        f"cp {CONFIG} ./copy.toml",
        f"dd if={CONFIG} of=copy.toml",
        "cd .. && ls > listing.txt",
        "cd $PLAN_PATH && make",
        "rm -rf build/ && mkdir -p build",
        "chmod 755 run.sh && ./run.sh",
        "sed -i s/a/b/ notes.txt",
        "echo sudoku and pseudocode, surely",
        "find . -name '*.tmp' -delete",
        "echo x >&2; echo y 2>&1; echo z >/dev/null",
        "awk '{print $1}' data.txt > col.txt",
        "",
    ],
)
def test_ordinary_commands_pass(command):
    assert refused(command) is None


@pytest.mark.parametrize(
    "command",
    [
        "sudo apt-get install foo",
        "su -c id",
        "doas reboot",
        "pkexec id",
        "chmod u+s ./tool",
        "chmod 4755 ./tool",
        "chmod -R g+s ./shared",
        "mkfs.ext4 /dev/sdb1",
        "dd if=/dev/zero of=/dev/sda bs=1M",
        "cat image > /dev/nvme0n1",
        "setcap cap_net_raw+ep ./tool",
    ],
)
def test_refused_patterns_are_named(command):
    reason = refused(command)
    assert reason is not None and reason.startswith("refused_patterns: "), reason


def test_default_patterns_are_the_documented_ones():
    assert any("sudo" in p for p in DEFAULT_REFUSED_PATTERNS)
    assert Policy().refused_patterns == DEFAULT_REFUSED_PATTERNS
    assert refused("sudo ls", Policy()) is not None


@pytest.mark.parametrize(
    "command",
    [
        f"echo pwned > {CONFIG}",
        f"echo pwned>>{CONFIG}",
        "echo pwned > ../../../../../etc/llmo/llmo.toml",  # out of the batch folder by ..
        "echo pwned > $BATCH_PATH/../../../../../etc/llmo/llmo.toml",
        "echo pwned > ${PLAN_PATH}/../../../etc/llmo/keys/broker.key_secret",
        "echo pwned > ~/llmo.toml",  # HOME is /etc/llmo here
        f"ls | tee -a {KEYS}/broker.key",
        f"cp evil.toml {CONFIG}",
        f"cp -t {KEYS} evil.key",
        f"mv evil.toml {CONFIG}",
        f"rm -f {CONFIG}",
        "rm -rf /etc",  # above a protected path
        "rm -rf /etc/llm*",  # a glob that reaches one
        "rm -rf /*",
        f"sed -i s/broker/evil/ {CONFIG}",
        f"perl -pi -e s/a/b/ {CONFIG}",
        f"dd if=evil of={CONFIG}",
        f"truncate -s 0 {CONFIG}",
        f"ln -s {KEYS} keys",  # a link in is a way around the check later
        f"find {KEYS} -delete",
        f"sh -c 'echo pwned > {CONFIG}'",
        f'bash -c "cd /etc/llmo; rm -f {CONFIG}"',
        f'echo "$(rm {CONFIG})"',
        f"echo `rm {CONFIG}`",
        f"(echo a; echo b) > {CONFIG}",
        f"{{ echo a; }} &> {CONFIG}",
        f"python3 -c \"open('{CONFIG}', 'w').write('x')\"",
        f'awk \'BEGIN {{print "x" > "{CONFIG}"}}\'',
        f"true\nrm {CONFIG}",
        f"env X=1 /bin/rm {CONFIG}",
        f"xargs rm < list && echo x >| {CONFIG}",
    ],
)
def test_writes_to_protected_paths_are_refused(command):
    reason = refused(command, Policy(protected_paths=(CONFIG, KEYS)))
    assert reason is not None and reason.startswith("protected_paths: "), reason


def test_cd_into_a_protected_folder_then_a_relative_write():
    policy = Policy(protected_paths=(CONFIG,))  # no plan roots: cd anywhere is allowed
    assert refused("cd /etc/llmo && rm llmo.toml", policy).startswith("protected_paths: ")
    assert refused("cd /etc/llmo && rm other.toml", policy) is None


def test_a_symbolic_link_into_a_protected_folder_is_followed(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    batch = tmp_path / "plans" / "p" / "history" / "b"
    batch.mkdir(parents=True)
    (batch / "k").symlink_to(keys)
    policy = Policy(plan_roots=(str(tmp_path / "plans"),), protected_paths=(str(keys),))
    reason = check("echo x > k/broker.key", str(batch.parent.parent), str(batch), policy)
    assert reason is not None and reason.startswith("protected_paths: "), reason
    assert check("echo x > kk/broker.key", str(batch.parent.parent), str(batch), policy) is None


def test_plan_roots_refuse_folders_outside_them(tmp_path):
    assert refused("ls", batch="/tmp/elsewhere").startswith("plan_roots: the batch folder")
    assert refused("ls", plan="/srv/other").startswith("plan_roots: the plan folder")
    assert refused("ls", batch="/srv/plans/../x").startswith("plan_roots: the batch folder")
    assert refused("ls", log_path="/var/log/x.log").startswith("plan_roots: the log file")
    assert refused("ls", batch="").startswith("plan_roots: the task has no batch folder")
    # A batch folder that is a link out of the roots is outside them.
    root = tmp_path / "plans"
    root.mkdir()
    (root / "p").symlink_to(tmp_path)
    reason = check("ls", str(root / "p"), str(root / "p"), Policy(plan_roots=(str(root),)))
    assert reason is not None and reason.startswith("plan_roots: "), reason


@pytest.mark.parametrize(
    "command", ["cd / && touch x", "cd ../../../.. && ls", "cd /tmp", "pushd /etc"]
)
def test_cd_out_of_the_plan_roots_is_refused(command):
    reason = refused(command)
    assert reason is not None and reason.startswith("plan_roots: "), reason
    assert "leaves the plan roots" in reason


def test_without_roots_or_protected_paths_only_patterns_apply():
    policy = Policy(protected_paths=())
    assert refused(f"echo x > {CONFIG}; cd /", policy, log_path="") is None
    assert refused("sudo id", policy) is not None


def test_the_log_file_may_not_be_protected():
    policy = Policy(protected_paths=(CONFIG,))
    reason = refused("true", policy, log_path=CONFIG)
    assert reason is not None and reason.startswith("protected_paths: the log file")
    assert not writable(CONFIG, policy)
    assert writable(LOG, policy)
    assert not writable("/var/log/x.log", POLICY)


def test_a_command_too_long_for_sh_is_refused_up_front():
    reason = refused("echo " + "x" * MAX_COMMAND_BYTES)
    assert reason is not None and reason.startswith("command_size: ")


@pytest.mark.parametrize(
    "fields",
    [{"command": "echo a\x00b"}, {"batch": BATCH + "\x00"}, {"log_path": "x\udc00\ud800"}],
)
def test_text_no_system_call_takes_is_refused(fields):
    command = fields.pop("command", "true")
    reason = refused(command, Policy(), **fields)
    assert reason is not None and reason.startswith("unusable_text: "), reason
    assert not writable("logs/\x00.log", Policy())


# --- reading the [policy] table ----------------------------------------------------------


def test_from_dict_fills_defaults_and_always_protects_what_it_is_told(tmp_path):
    policy = Policy.from_dict(
        {}, base_dir=str(tmp_path), protect=["llmo.toml", "keys"], default_roots=["plans"]
    )
    assert policy.plan_roots == (str(tmp_path / "plans"),)
    assert str(tmp_path / "llmo.toml") in policy.protected_paths
    assert str(tmp_path / "keys") in policy.protected_paths
    assert set(default_protected()) <= set(policy.protected_paths)
    assert policy.refused_patterns == DEFAULT_REFUSED_PATTERNS
    own = Policy.from_dict(
        {"protected_paths": ["/data/x"], "plan_roots": [], "refused_patterns": []},
        protect=["/etc/llmo/llmo.toml"],
        default_roots=["/ignored"],
    )
    assert own.protected_paths == ("/data/x", "/etc/llmo/llmo.toml")
    assert own.plan_roots == () and own.refused_patterns == ()


def test_rlimits_by_class_with_a_default():
    policy = Policy.from_dict(
        {"rlimits": {"cpu": {"cpu_s": 60, "open_files": 256}, "default": {"cpu_s": 600}}}
    )
    assert policy.limits_for("cpu") == Rlimits(cpu_s=60, open_files=256)
    assert policy.limits_for("script") == Rlimits(cpu_s=600)
    assert Policy().limits_for("cpu") is None
    assert Policy.from_dict(policy.to_dict()) == policy


def test_every_problem_of_a_policy_table_is_named():
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(
            {
                "plan_root": ["/x"],
                "protected_paths": "/etc",
                "refused_patterns": ["(unclosed"],
                "rlimits": {
                    "gpu": {"cpu_s": 1},
                    "cpu": {"cpu_s": -1, "files": 3, "address_space_mb": True},
                },
            }
        )
    problems = info.value.problems
    expected = [
        "[policy] unknown key 'plan_root'",
        "[policy] protected_paths: expected an array of paths",
        "[policy] refused_patterns: '(unclosed' is not a regex",
        "[policy.rlimits.gpu] unknown task class",
        "[policy.rlimits.cpu] cpu_s: expected a whole number >= 0, got -1",
        "[policy.rlimits.cpu] unknown key 'files'",
        "[policy.rlimits.cpu] address_space_mb: expected a whole number >= 0, got True",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
    assert len(problems) == len(expected)


def test_limits_above_the_workers_own_hard_limit_are_lowered_to_it():
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    settings_ = Rlimits(open_files=hard + 1000).settings()
    assert settings_ == ((resource.RLIMIT_NOFILE, hard, hard),)


# --- properties ------------------------------------------------------------------------

SHELLISH = st.text(alphabet="abcdefxyz0123 ./-=$;|&()<>\n\t*?[]{}~", max_size=60)


@given(prefix=SHELLISH)
@settings(max_examples=examples(300), deadline=None)
def test_a_protected_write_after_any_command_is_refused(prefix, fuzz_tally):  # noqa: F811
    """Whatever comes first (quotes and backslashes aside), a later line that
    writes to a protected path is refused, by that rule or another."""
    fuzz_tally.add("policy")
    command = f"{prefix}\necho pwned > {CONFIG}"
    assert refused(command) is not None


@given(command=st.text(max_size=200))
@settings(max_examples=examples(300), deadline=None)
def test_check_never_raises(command, fuzz_tally):  # noqa: F811
    fuzz_tally.add("policy")
    reason = refused(command)
    assert reason is None or reason.split(":", 1)[0] in (
        "plan_roots",
        "protected_paths",
        "refused_patterns",
        "command_size",
        "unusable_text",
    )


def test_paths_are_resolved_as_os_path_realpath_resolves_them(tmp_path, monkeypatch):
    from llmo.worker.policy import resolve

    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "f.txt").write_text("x")
    (tmp_path / "to_d").symlink_to(tmp_path / "d")
    (tmp_path / "chain").symlink_to("to_d")  # relative, through another link
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    (tmp_path / "loop_a").symlink_to("loop_b")
    (tmp_path / "loop_b").symlink_to("loop_a")
    monkeypatch.chdir(tmp_path / "d")
    for path in (
        str(tmp_path / "d" / "f.txt"),
        str(tmp_path / "to_d" / "e"),
        str(tmp_path / "chain" / "e" / ".." / "f.txt"),
        str(tmp_path / "chain" / "new" / "log.txt"),  # not there yet
        str(tmp_path / "dangling"),
        str(tmp_path / "loop_a" / "x"),
        str(tmp_path / "d" / "f.txt") + "/",  # a file taken as a folder
        str(tmp_path / "to_d") + "/",
        "e",  # relative to the working folder
        "../to_d/./e/",
        "",
        "/",
    ):
        assert resolve(path) == os.path.realpath(path), path
