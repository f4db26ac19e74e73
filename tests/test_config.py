"""llmo.toml: the example parses; every wrong key or value is named with its file."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmo.cli.config import ConfigError, load, parse

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "llmo.example.toml"


def test_the_example_describes_the_five_gpu_rig():
    config = load(EXAMPLE)
    assert [w.name for w in config.workers] == ["brain-llm", "gpu-1", "gpu-2", "gpu-4"]
    brain = config.worker("brain-llm")
    assert brain.role == "brain" and brain.gpus == (0, 3) and brain.tensor_split == (1.0, 1.0)
    assert sorted(g for w in config.workers for g in w.gpus) == [0, 1, 2, 3, 4]
    assert config.interval_s == 1.0 and config.liveness == 3
    assert config.brain["max_attempts"] == 3


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"endpoint": {}}, "unknown section [endpoint]"),
        ({"broker": {"intervals": 1}}, "[broker] unknown key 'intervals'"),
        ({"broker": {"liveness": "3"}}, "[broker] liveness: expected an integer, got '3'"),
        ({"broker": {"liveness": True}}, "[broker] liveness: expected an integer"),
        ({"workers": [{"gpus": [1]}]}, "[[workers]] #1: 'name' must be a plain name"),
        ({"workers": [{"name": "gpu-1", "gpu": [1]}]}, "[[workers]] 'gpu-1': unknown key 'gpu'"),
        ({"workers": [{"name": "a"}, {"name": "a"}]}, "[[workers]] 'a': duplicate worker name"),
        ({"workers": [{"name": "a", "role": "boss"}]}, "role: expected 'worker' or 'brain'"),
        ({"workers": [{"name": "a", "gpus": [-1]}]}, "gpus: expected GPU indexes"),
        ({"workers": [{"name": "a", "slots": 0}]}, "slots: must be at least 1"),
        ({"security": {"keys": "/etc/llmo/keys"}}, "[security] unknown key 'keys'"),
        ({"security": {"keys_dir": 1}}, "[security] keys_dir: expected a string, got 1"),
        (
            {"security": {"require_curve": "yes"}},
            "[security] require_curve: expected true or false, got 'yes'",
        ),
    ],
)
def test_each_problem_is_named(data, expected):
    with pytest.raises(ConfigError) as info:
        parse(data, "/etc/llmo/llmo.toml")
    assert any(expected in p for p in info.value.problems), info.value.problems
    assert str(info.value).startswith("/etc/llmo/llmo.toml: ")


def test_all_problems_at_once():
    with pytest.raises(ConfigError) as info:
        parse({"broker": {"liveness": "x", "bogus": 1}, "workers": [{"name": "a", "slots": "2"}]})
    assert len(info.value.problems) == 3


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[broker\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load(bad)


def test_limits_are_checked_against_the_worker():
    with pytest.raises(ConfigError) as info:
        parse({"limits": {"gpu_warn_c": 70, "max_temp": 80, "power_w": "lots"}})
    assert info.value.problems == [
        "[limits] unknown key 'max_temp' (known: gpu_warn_c, cpu_warn_c, gpu_critical_c, "
        "vram_percent, power_w, resume_margin_c, backoff_s, backoff_factor, backoff_max_s)",
        "[limits] power_w: expected a number, got 'lots'",
    ]


def test_security_keys_dir_is_relative_to_the_file(tmp_path):
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    path = config_dir / "llmo.toml"
    path.write_text('[security]\nkeys_dir = "keys"\nrequire_curve = true\n')
    config = load(path)
    assert config.keys_dir == str(config_dir / "keys") and config.require_curve is True
    path.write_text('[security]\nkeys_dir = "/etc/llmo/keys"\n')
    assert load(path).keys_dir == "/etc/llmo/keys" and load(path).require_curve is False
    assert parse({}).keys_dir == "" and parse({}).require_curve is False


def test_the_example_uses_curve_keys():
    config = load(EXAMPLE)
    assert config.keys_dir == "/etc/llmo/keys" and config.require_curve is True


# --- [policy] ---------------------------------------------------------------------------------


def test_policy_problems_are_named_with_the_rest():
    with pytest.raises(ConfigError) as info:
        parse(
            {
                "broker": {"liveness": "x"},
                "policy": {"plan_root": ["/x"], "rlimits": {"cpu": {"cpu_s": "1h"}}},
            }
        )
    problems = info.value.problems
    assert "[policy] unknown key 'plan_root'" in problems[1]
    assert problems[2].startswith("[policy.rlimits.cpu] cpu_s: expected a whole number")
    assert len(problems) == 3


def test_worker_policy_protects_the_config_keys_and_rig(tmp_path):
    from llmo.cli.config import worker_policy

    path = tmp_path / "etc" / "llmo.toml"
    path.parent.mkdir()
    path.write_text(
        '[security]\nkeys_dir = "keys"\n'
        f'[paths]\nrig_dir = "{tmp_path}/rig"\nplans_dir = "{tmp_path}/plans"\n'
        '[policy]\nprotected_paths = ["secrets"]\n'
        "[policy.rlimits.cpu]\ncpu_s = 60\n"
    )
    policy = worker_policy(load(path))
    assert policy.plan_roots == (str(tmp_path / "plans"),)
    assert set(policy.protected_paths) == {
        str(tmp_path / "etc" / "secrets"),  # relative to the file
        str(path),
        str(tmp_path / "etc" / "keys"),
        str(tmp_path / "rig"),
    }
    assert policy.limits_for("cpu").cpu_s == 60 and policy.limits_for("llm") is None


def test_the_rig_folder_is_not_protected_when_plans_live_in_it(tmp_path):
    from llmo.cli.config import worker_policy

    config = parse({"paths": {"rig_dir": str(tmp_path), "plans_dir": str(tmp_path / "plans")}})
    policy = worker_policy(config)
    assert str(tmp_path) not in policy.protected_paths
    assert policy.plan_roots == (str(tmp_path / "plans"),)


def test_the_example_policy():
    from llmo.cli.config import worker_policy

    policy = worker_policy(load(EXAMPLE))
    assert policy.plan_roots == ("/mnt/shared/plans",)
    assert {"/etc/llmo", "/etc/llmo/keys", "/var/lib/llmo", str(EXAMPLE)} <= set(
        policy.protected_paths
    )
    assert policy.limits_for("cpu").cpu_s == 3600
    assert any("sudo" in p for p in policy.refused_patterns)


def test_up_hands_the_policy_to_every_worker(tmp_path):
    import argparse
    import json

    from llmo.cli import up_cmd

    path = tmp_path / "llmo.toml"
    path.write_text(
        f'[paths]\nplans_dir = "{tmp_path}/plans"\n'
        '[[workers]]\nname = "gpu-1"\n[[workers]]\nname = "gpu-2"\n'
    )
    parser = argparse.ArgumentParser()
    up_cmd.configure(parser)
    args = parser.parse_args(
        ["--config", str(path), "--rig-dir", str(tmp_path / "rig"), "--model", "m.gguf"]
    )
    _, children = up_cmd.plan_children(args)
    workers = [argv for name, argv in children if name.startswith("gpu-")]
    assert len(workers) == 2
    for argv in workers:
        policy_file = argv[argv.index("--policy") + 1]
        data = json.loads(Path(policy_file).read_text())
        assert data["plan_roots"] == [str(tmp_path / "plans")]
        assert str(path) in data["protected_paths"]
        assert str(tmp_path / "rig") in data["protected_paths"]
        assert argv[argv.index("--config") + 1] == str(path.resolve())  # its own entry too


def test_llmo_worker_refuses_a_broken_policy_file(tmp_path):
    from llmo.cli import worker_cmd

    bad = tmp_path / "policy.json"
    bad.write_text('{"rlimits": {"gpu": {}}}')
    with pytest.raises(ValueError, match=r"\[policy.rlimits.gpu\] unknown task class"):
        worker_cmd.read_policy(str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        worker_cmd.read_policy(str(bad))
    good = tmp_path / "good.json"
    good.write_text('{"plan_roots": ["plans"], "protected_paths": []}')
    policy = worker_cmd.read_policy(str(good))
    assert policy.plan_roots == (str(tmp_path / "plans"),) and policy.protected_paths == ()


def test_tensor_split_needs_one_share_per_gpu():
    with pytest.raises(ConfigError) as info:
        parse({"workers": [{"name": "brain-llm", "gpus": [0, 3], "tensor_split": [1, 1, 1]}]})
    assert "3 shares for 2 GPUs [0, 3]" in info.value.problems[0]


def test_up_passes_limits_as_the_workers_own_flags(tmp_path):
    import argparse

    from llmo.cli import up_cmd, worker_cmd

    path = tmp_path / "llmo.toml"
    path.write_text("[limits]\ngpu_warn_c = 70.0\npower_w = 120.0\n")
    parser = argparse.ArgumentParser()
    up_cmd.configure(parser)
    args = parser.parse_args(
        ["--config", str(path), "--rig-dir", str(tmp_path / "rig"), "--model", "m.gguf"]
    )
    _, children = up_cmd.plan_children(args)
    argv = dict(children)["cpu-1"]
    assert argv[argv.index("--max-temp") + 1] == "70.0"
    assert argv[argv.index("--max-power") + 1] == "120.0"
    # and the worker understands them
    worker_parser = argparse.ArgumentParser()
    worker_cmd.configure(worker_parser)
    parsed = worker_parser.parse_args(["--name", "cpu-1", "--max-temp", "70", "--max-power", "120"])
    assert (parsed.max_temp, parsed.max_power) == (70.0, 120.0)
