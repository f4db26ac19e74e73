"""``llmo systemd install``: the systemd units of a rig, made from its llmo.toml.

Theory of operation
-------------------
``render`` is pure: from the config, the path of the ``llmo`` executable
and the config's own path it makes four unit files::

    llmo-broker.service     the broker (binds the [endpoints])
    llmo-brain.service      the brain (journal in rig_dir, history in plans_dir)
    llmo-worker@.service    one instance per [[workers]] entry, ``%i`` = its name;
                            ``llmo worker --config ... --name %i`` reads its GPUs,
                            model and slots from the config and sets
                            CUDA_VISIBLE_DEVICES before CUDA loads
    llmo.target             wants the broker, the brain and every worker instance

Stopping (``systemctl stop llmo.target``): systemd stops units in the
reverse of their start order, and each worker is ordered after the brain
and the brain after the broker, so the workers stop first. A worker given
SIGTERM takes no new work and lets its running tasks finish for
``WORKER_STOP_GRACE_S`` (the worker's ``--stop-deadline``); what still runs then is
interrupted (SIGTERM, SIGKILL ``WORKER_KILL_S`` later) and reported so; its
``TimeoutStopSec`` covers all of that and the delivery of its last results.
Then the brain marks unfinished batches interrupted, then the broker goes.

Restarts: ``Restart=on-failure`` after ``RestartSec``, at most 6 starts in
300 s (``StartLimitBurst`` / ``StartLimitIntervalSec``); after that the unit
stays failed and says so in ``systemctl status``, instead of the relaunch
loop the original's ``Restart=always`` made. Exit code 2 (a bad config or
missing keys) is not retried at all. Each service runs as the ``llmo`` user,
logs to journald, and is sandboxed: no new privileges, a read-only system,
no home folders, a private /tmp, writes only to rig_dir (and the plans
folder for the brain and the workers). The workers keep /dev (the GPUs), so
they go without PrivateDevices and ProtectClock.

Capabilities: none, except that a worker runs its shell tasks as the task
user (``--task-user llmo-task``), for which it holds ``CAP_SETUID``,
``CAP_SETGID`` (to switch each task's child) and ``CAP_KILL`` (to abort and
kill a process of another user) as ambient capabilities, and nothing else
in its bounding set; the tasks themselves hold none (``worker.taskuser``).
The brain and the workers run with ``UMask=0007`` so that batch folders and
logs they make in the plans share are writable by its group.

The files in ``deploy/systemd/`` are ``render`` of ``deploy/llmo.example.toml``
with llmo in /opt/llmo; a test keeps them equal.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = "/etc/llmo/llmo.toml"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
DEFAULT_USER = "llmo"
DEFAULT_RIG_DIR = "/var/lib/llmo"
RESTART_SEC = 5
START_LIMIT_INTERVAL_S = 300
START_LIMIT_BURST = 6
# A worker's own stop (``llmo worker --stop-deadline``, WorkerConfig): running tasks
# may finish this long, then get SIGTERM and, this much later, SIGKILL.
WORKER_STOP_GRACE_S = 30
WORKER_KILL_S = 5
# ... and its last results reach the brain: systemd's own SIGKILL comes after all that
WORKER_STOP_TIMEOUT_S = WORKER_STOP_GRACE_S + WORKER_KILL_S + 25
USAGE_EXIT = 2  # llmo's exit code for a bad config or missing keys: retrying cannot help

TARGET = "llmo.target"
BROKER_UNIT = "llmo-broker.service"
BRAIN_UNIT = "llmo-brain.service"
WORKER_TEMPLATE = "llmo-worker@.service"

# For every service: what it may not do. Devices and writable paths are per unit.
_HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK"""
# What a worker needs to run its tasks as the task user: switch groups and uid in
# the task's child, and signal (abort, kill) processes of another user.
TASK_USER_CAPABILITIES = "CAP_SETUID CAP_SETGID CAP_KILL"
DEFAULT_TASK_USER = "llmo-task"
# The brain and the workers: files and folders they make are group-writable (the
# plans share's group holds the task user), never open to others.
SHARED_UMASK = "0007"


def _arg(text: str) -> str:
    """A path as one word of a unit file: ``%`` escaped, quoted if it has spaces."""
    text = text.replace("%", "%%")
    if any(c.isspace() for c in text) or '"' in text:
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _header(config_path: str) -> str:
    return (
        f"# Made by `llmo systemd install` from {config_path}.\n"
        "# Change the config and run it again; put local changes in a drop-in\n"
        "# (systemctl edit UNIT), not here.\n"
    )


def _service(
    *,
    header: str,
    description: str,
    after: list[str],
    mounts: list[str],
    exec_start: str,
    user: str,
    identifier: str,
    writable: list[str],
    private_devices: bool,
    stop_timeout_s: int,
    kill_mode: str = "",
    capabilities: str = "",
    umask: str = "0027",
) -> str:
    unit = [
        header,
        "[Unit]",
        f"Description={description}",
        "Wants=network-online.target",
        f"After={' '.join(['network-online.target', *after])}",
        f"PartOf={TARGET}",
    ]
    if mounts:
        unit.append(f"RequiresMountsFor={' '.join(_arg(m) for m in mounts)}")
    unit += [
        f"StartLimitIntervalSec={START_LIMIT_INTERVAL_S}",
        f"StartLimitBurst={START_LIMIT_BURST}",
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"Group={user}",
        f"ExecStart={exec_start}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        f"RestartPreventExitStatus={USAGE_EXIT}",
        f"TimeoutStopSec={stop_timeout_s}",
    ]
    if kill_mode:
        unit.append(f"KillMode={kill_mode}")
    unit += [
        "Environment=PYTHONUNBUFFERED=1",
        "StandardOutput=journal",
        "StandardError=journal",
        f"SyslogIdentifier={identifier}",
        _HARDENING,
        f"CapabilityBoundingSet={capabilities}",
    ]
    if capabilities:
        unit.append(f"AmbientCapabilities={capabilities}")
    unit += [f"UMask={umask}"]
    if private_devices:
        # ProtectClock adds a device rule, which would close /dev to all else:
        # only for the units that need no devices (not the workers' GPUs).
        unit += ["PrivateDevices=yes", "ProtectClock=yes"]
    if writable:
        unit.append(f"ReadWritePaths={' '.join(_arg(p) for p in writable)}")
    unit += ["", "[Install]", f"WantedBy={TARGET}", ""]
    return "\n".join(unit)


def render(
    config,
    llmo: str,
    config_path: str,
    user: str = DEFAULT_USER,
    task_user: str = DEFAULT_TASK_USER,
) -> dict[str, str]:
    """The unit files (name -> text) for ``config`` (a ``cli.config.RigConfig``);
    the workers run their tasks as ``task_user`` (empty: as ``user``)."""
    header = _header(config_path)
    run = f"{_arg(llmo)} {{}} --config {_arg(config_path)}"
    rig_dir = config.rig_dir or DEFAULT_RIG_DIR
    plans = [config.plans_dir] if config.plans_dir else []
    units = {
        BROKER_UNIT: _service(
            header=header,
            description="llmo broker: routes messages between the Pi, the brain and the workers",
            after=[],
            mounts=[],
            exec_start=run.format("broker") + " --systemd",
            user=user,
            identifier="llmo-broker",
            writable=[],
            private_devices=True,
            stop_timeout_s=15,
        ),
        BRAIN_UNIT: _service(
            header=header,
            description="llmo brain: plans, scheduling, journal and run history",
            after=[BROKER_UNIT],
            mounts=plans,
            exec_start=run.format("brain")
            + f" --journal {_arg(str(Path(rig_dir) / 'brain.journal'))}",
            user=user,
            identifier="llmo-brain",
            writable=[rig_dir, *plans],
            private_devices=True,
            stop_timeout_s=30,
            umask=SHARED_UMASK,  # batch folders the task user writes in
        ),
        WORKER_TEMPLATE: _service(
            header=header,
            description="llmo worker %i: its GPUs and model come from the config",
            # After the brain: at stop (reverse order) the workers go first, and the
            # brain records the results finished in their grace.
            after=[BROKER_UNIT, BRAIN_UNIT],
            mounts=plans,
            exec_start=run.format("worker")
            + " --name %i"
            + (f" --task-user {_arg(task_user)}" if task_user else ""),
            user=user,
            identifier="llmo-worker@%i",
            # Not the rig folder: the brain's journal lives there, and tasks run
            # as the worker. A worker writes only task history (plans folder).
            writable=plans or [rig_dir],
            private_devices=False,
            # SIGTERM lets running attempts finish, then aborts them (reported
            # interrupted); only the worker gets it, so it can do that to its tasks.
            stop_timeout_s=WORKER_STOP_TIMEOUT_S,
            kill_mode="mixed",
            capabilities=TASK_USER_CAPABILITIES if task_user else "",
            umask=SHARED_UMASK,
        ),
    }
    wants = [BROKER_UNIT, BRAIN_UNIT, *(f"llmo-worker@{w.name}.service" for w in config.workers)]
    gpus = ", ".join(f"{w.name} on GPU {','.join(map(str, w.gpus)) or '-'}" for w in config.workers)
    units[TARGET] = "\n".join(
        [
            header,
            "[Unit]",
            "Description=llmo on this rig: the broker, the brain and the workers",
            f"# Workers: {gpus or 'none in the config'}",
            "Wants=" + " ".join(wants),
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )
    return units


def llmo_path(prefix: str | None) -> str:
    """The llmo the units run: PREFIX/bin/llmo, else the one beside this Python."""
    if prefix:
        return str(Path(prefix).absolute() / "bin" / "llmo")
    beside = Path(sys.executable).parent / "llmo"
    if beside.exists():
        return str(beside.absolute())
    from shutil import which

    found = which("llmo")
    if found:
        return str(Path(found).absolute())
    raise FileNotFoundError("no llmo executable found: install llmo, or give --prefix")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = sub.add_parser(
        "install",
        help="write the units for the workers of the config",
        description="Write llmo-broker.service, llmo-brain.service, llmo-worker@.service "
        "and llmo.target for the rig described by the config.",
    )
    install.add_argument(
        "--config",
        default=os.environ.get("LLMO_CONFIG") or DEFAULT_CONFIG,
        help="the rig's llmo.toml; the units read it at each start "
        f"(default: $LLMO_CONFIG, else {DEFAULT_CONFIG})",
    )
    install.add_argument(
        "--prefix",
        help="where llmo is installed: the units run PREFIX/bin/llmo "
        "(default: the llmo of this Python environment)",
    )
    install.add_argument(
        "--unit-dir",
        default=DEFAULT_UNIT_DIR,
        help=f"where to write the units (default {DEFAULT_UNIT_DIR})",
    )
    install.add_argument(
        "--user", default=DEFAULT_USER, help=f"the user the services run as ({DEFAULT_USER})"
    )
    install.add_argument(
        "--task-user",
        default=DEFAULT_TASK_USER,
        help=f"the user the workers run shell tasks as ({DEFAULT_TASK_USER}; '' for the "
        "service user, and the workers hold no capability)",
    )
    install.add_argument(
        "--dry-run", action="store_true", help="print the units instead of writing them"
    )


def run(args: argparse.Namespace) -> int:
    from llmo.cli.config import ConfigError, load

    config_path = str(Path(args.config).absolute())
    try:
        config = load(config_path)
        llmo = llmo_path(args.prefix)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"llmo systemd: {exc}", file=sys.stderr)
        return 2
    units = render(config, llmo, config_path, args.user, args.task_user)
    if args.dry_run:
        for name, text in units.items():
            print(f"# --- {Path(args.unit_dir) / name}")
            print(text)
        return 0
    if not config.workers:
        print(f"llmo systemd: warning: {config_path} names no [[workers]]", file=sys.stderr)
    unit_dir = Path(args.unit_dir)
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        for name, text in units.items():
            (unit_dir / name).write_text(text)
    except OSError as exc:
        print(f"llmo systemd: cannot write {unit_dir}: {exc} (run as root?)", file=sys.stderr)
        return 1
    for name in units:
        print(f"wrote {unit_dir / name}")
    workers = " ".join(f"llmo-worker@{w.name}" for w in config.workers)
    print(
        "\nnext:\n"
        "  systemctl daemon-reload\n"
        "  systemctl enable --now llmo.target\n"
        f"  systemctl status llmo-broker llmo-brain {workers}\n"
        "  journalctl -u 'llmo-*' -f"
    )
    return 0
