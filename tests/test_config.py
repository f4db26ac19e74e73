"""llmo.toml: the example parses; every wrong key or value is named with its file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.config import ConfigError, load, parse

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
