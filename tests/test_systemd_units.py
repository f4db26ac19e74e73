"""The systemd units: what they say, that systemd accepts them, that deploy/ holds them."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from llmo.cli.config import load
from llmo.cli.main import main
from llmo.cli.systemd_cmd import render
from llmo.worker.config import WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "llmo.example.toml"
DEPLOYED = ROOT / "deploy" / "systemd"
WORKERS = ["brain-llm", "gpu-1", "gpu-2", "gpu-4"]

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None
)
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not found: install the Debian package `systemd` to verify the units",
)


def parsed(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(text)
    return parser


@pytest.fixture(scope="module")
def units() -> dict[str, str]:
    return render(load(EXAMPLE), "/opt/llmo/bin/llmo", "/etc/llmo/llmo.toml")


def test_deploy_holds_the_units_of_the_example_config(units):
    assert sorted(p.name for p in DEPLOYED.iterdir()) == sorted(units)
    for name, text in units.items():
        assert (DEPLOYED / name).read_text() == text, (
            f"deploy/systemd/{name} differs from what `llmo systemd install` makes of "
            "deploy/llmo.example.toml"
        )


def test_restarts_are_bounded_and_a_bad_config_is_not_retried(units):
    for name in ("llmo-broker.service", "llmo-brain.service", "llmo-worker@.service"):
        unit = parsed(units[name])
        assert unit["Unit"]["StartLimitIntervalSec"] == "300"
        assert unit["Unit"]["StartLimitBurst"] == "6"
        assert unit["Service"]["Restart"] == "on-failure"
        assert int(unit["Service"]["RestartSec"]) >= 1
        assert unit["Service"]["RestartPreventExitStatus"] == "2"
        assert unit["Unit"]["PartOf"] == "llmo.target"


def test_services_are_sandboxed_and_write_only_to_the_rig_and_plans(units):
    writable = {
        "llmo-broker.service": None,
        "llmo-brain.service": "/var/lib/llmo /mnt/shared/plans",
        "llmo-worker@.service": "/mnt/shared/plans",  # not the brain's journal
    }
    for name, paths in writable.items():
        service = parsed(units[name])["Service"]
        assert service["User"] == "llmo"
        assert service["StandardOutput"] == "journal" and service["StandardError"] == "journal"
        for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
            assert service[key] == "yes", (name, key)
        assert service["ProtectSystem"] == "strict"
        assert service.get("ReadWritePaths") == paths
    broker, brain = (
        parsed(units[n])["Service"] for n in ("llmo-broker.service", "llmo-brain.service")
    )
    for service in (broker, brain):
        assert service["CapabilityBoundingSet"] == ""
        assert "AmbientCapabilities" not in service
    assert broker["UMask"] == "0027"
    worker = parsed(units["llmo-worker@.service"])["Service"]
    assert "PrivateDevices" not in worker and "ProtectClock" not in worker  # the GPUs


def test_workers_run_tasks_as_the_task_user_with_only_the_capabilities_to_switch(units):
    worker = parsed(units["llmo-worker@.service"])["Service"]
    assert worker["ExecStart"].endswith(" --name %i --task-user llmo-task")
    assert worker["AmbientCapabilities"] == "CAP_SETUID CAP_SETGID CAP_KILL"
    assert worker["CapabilityBoundingSet"] == "CAP_SETUID CAP_SETGID CAP_KILL"
    assert worker["NoNewPrivileges"] == "yes"
    # What the brain and the worker make in the plans share is group-writable, for the
    # task user in the share's group; nothing for others.
    for name in ("llmo-brain.service", "llmo-worker@.service"):
        assert parsed(units[name])["Service"]["UMask"] == "0007", name


def test_without_a_task_user_the_worker_holds_no_capability():
    units = render(load(EXAMPLE), "/opt/llmo/bin/llmo", "/etc/llmo/llmo.toml", task_user="")
    worker = parsed(units["llmo-worker@.service"])["Service"]
    assert worker["ExecStart"].endswith(" --name %i")
    assert worker["CapabilityBoundingSet"] == ""
    assert "AmbientCapabilities" not in worker


def test_each_worker_instance_reads_its_gpus_from_the_config(units):
    worker = parsed(units["llmo-worker@.service"])
    assert worker["Service"]["ExecStart"] == (
        "/opt/llmo/bin/llmo worker --config /etc/llmo/llmo.toml --name %i --task-user llmo-task"
    )
    assert worker["Service"]["KillMode"] == "mixed"  # the worker stops its own tasks
    assert "llmo-broker.service" in worker["Unit"]["After"]
    assert worker["Unit"]["RequiresMountsFor"] == "/mnt/shared/plans"
    target = parsed(units["llmo.target"])["Unit"]
    wants = target["Wants"].split()
    assert wants[:2] == ["llmo-broker.service", "llmo-brain.service"]
    assert wants[2:] == [f"llmo-worker@{w}.service" for w in WORKERS]
    assert "brain-llm on GPU 0,3" in units["llmo.target"]
    brain = parsed(units["llmo-brain.service"])["Service"]["ExecStart"]
    assert brain.endswith(
        "brain --config /etc/llmo/llmo.toml --journal /var/lib/llmo/brain.journal"
    )


def test_dry_run_prints_and_writes_nothing(tmp_path, capsys):
    unit_dir = tmp_path / "units"
    code = main(
        [
            "systemd",
            "install",
            "--config",
            str(EXAMPLE),
            "--prefix",
            "/srv/llmo",
            "--unit-dir",
            str(unit_dir),
            "--dry-run",
        ]
    )
    assert code == 0 and not unit_dir.exists()
    out = capsys.readouterr().out
    assert f"# --- {unit_dir / 'llmo-worker@.service'}" in out
    assert f"ExecStart=/srv/llmo/bin/llmo worker --config {EXAMPLE} --name %i" in out


def test_a_missing_config_is_named(tmp_path, capsys):
    assert main(["systemd", "install", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: no such file" in capsys.readouterr().err


def _verify(unit_dir: Path, names: list[str]) -> subprocess.CompletedProcess:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *(str(unit_dir / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit_dir,
    )


def _our_complaints(result: subprocess.CompletedProcess) -> list[str]:
    """systemd-analyze's lines about our units (others on the machine are not our business)."""
    text = result.stdout + result.stderr
    return [line for line in text.splitlines() if "llmo" in line]


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_installed_units(tmp_path, capsys):
    # A config path with a space checks the quoting; the units run this venv's llmo,
    # which verify requires to exist and be executable.
    config_dir = tmp_path / "etc llmo"
    config_dir.mkdir()
    config = config_dir / "llmo.toml"
    config.write_text(EXAMPLE.read_text())
    unit_dir = tmp_path / "units"
    assert main(["systemd", "install", "--config", str(config), "--unit-dir", str(unit_dir)]) == 0
    assert "systemctl enable --now llmo.target" in capsys.readouterr().out
    names = [
        "llmo.target",
        "llmo-broker.service",
        "llmo-brain.service",
        *(f"llmo-worker@{w}.service" for w in WORKERS),
    ]
    result = _verify(unit_dir, names)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _our_complaints(result) == []


@needs_systemd_analyze
def test_systemd_analyze_verify_would_catch_a_broken_unit(tmp_path):
    # The check above can fail: here the unit's llmo does not exist.
    units = render(load(EXAMPLE), str(tmp_path / "no" / "llmo"), "/etc/llmo/llmo.toml")
    (tmp_path / "llmo-broker.service").write_text(units["llmo-broker.service"])
    result = _verify(tmp_path, ["llmo-broker.service"])
    assert result.returncode != 0
    assert any("not executable" in line for line in _our_complaints(result))


def test_workers_stop_first_then_the_brain_then_the_broker(units):
    """systemd stops in the reverse of start order: a worker, ordered after the brain,
    is stopped (its grace and its last results included) before the brain is."""
    worker = parsed(units["llmo-worker@.service"])
    brain = parsed(units["llmo-brain.service"])
    assert "llmo-brain.service" in worker["Unit"]["After"].split()
    assert "llmo-broker.service" in worker["Unit"]["After"].split()
    assert "llmo-broker.service" in brain["Unit"]["After"].split()
    # The worker's grace for running tasks, its SIGTERM-to-SIGKILL wait, then a few
    # seconds for its last results: systemd must not kill it before that.
    defaults = WorkerConfig(name="w")
    need = defaults.stop_deadline_s + defaults.stop_grace_s + 5
    assert int(worker["Service"]["TimeoutStopSec"]) >= need
