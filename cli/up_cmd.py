"""``llmo up``: the whole system on this machine, as supervised child processes.

Starts the broker, the brain and the workers (``--workers N`` CPU workers
plus one worker with role ``brain``; or the workers of ``--config``) on the
endpoints from flags, LLMO_BROKER / LLMO_PUB, the config, or the loopback
defaults. With no model given anywhere it uses the embedded Gemma 3 270M.
It prints where everything is, restarts a child that dies (``cli.supervisor``:
back-off, at most 6 restarts in 5 minutes), and on Ctrl-C or SIGTERM stops
the rig in order:

1. the workers, given ``--stop-grace`` seconds (default 10): they take no
   new work, running tasks may finish, and their results still reach the
   brain and are journaled (the brain and the broker stay up, and are
   restarted if they die). A task still running at the end of the grace is
   stopped (SIGTERM to its group, SIGKILL 5 s later) and reported
   ``interrupted``: it runs again later without spending an attempt;
2. the brain, which writes ``batch_interrupted`` to each unfinished batch's
   ``batch_events.jsonl``, rewrites its RUN_SUMMARY with status ``partial``
   (``"interrupted": true``) and journals the stop;
3. the broker.

A second Ctrl-C or SIGTERM while the workers stop ends their grace at once.
``llmo up`` again on the same rig folder resumes those batches from the
journal: tasks recorded done are not run again. A child that exits with code 2
(a configuration error, such as an endpoint the broker cannot bind) is not
restarted: the rig stops and ``llmo up`` exits 2 with that child's reason.
``--broker``/``--pub`` may list several endpoints for the broker to bind;
the other children connect to the loopback one.

A child that crashes more than ``--max-restarts`` times (default 6) within
``--restart-window`` seconds (default 300) is left stopped: given up on. The
operator sees it in ``llmo status`` and the TUI and starts it again with
``llmo restart NAME`` (or the TUI's ``x``): ``llmo up`` joins the broker as
the peer ``supervisor`` (``cli.up_link``) and restarts a child it gave up on,
by name, with its restart window reset.

One ``llmo up`` per rig folder: before anything is written or started it
locks ``<rig_dir>/llmo-up.lock`` (``brain.lockfile``; released by the
operating system when ``llmo up`` ends, however it ends) and writes its pid,
endpoints and start time there. A second ``llmo up`` on the same folder
exits 2 at once, naming the first's pid and endpoints, and starts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from llmo.cli.common import add_endpoint_flags, llmo_child, set_title
from llmo.cli.config import add_key_flags
from llmo.cli.supervisor import RestartPolicy
from llmo.cli.worker_cmd import LIMIT_FLAGS

if TYPE_CHECKING:
    from llmo.brain.lockfile import FileLock


STOP_GRACE_S = 10.0  # running tasks may finish this long when the rig stops
WORKER_KILL_S = 5.0  # a worker's SIGTERM-to-SIGKILL grace for its tasks (WorkerConfig)
WORKER_FLUSH_S = 5.0  # then its last results reach the brain and it exits
MAX_STOP_GRACE_S = 24 * 3600.0
BRAIN_STOP_S = 30.0  # the brain writes the summaries of unfinished batches
BROKER_STOP_S = 10.0
DEFAULT_POLICY = RestartPolicy()


def stop_stages(where: dict, grace_s: float) -> list[tuple[list[str], float]]:
    """Who stops when, and how long each stage may take before its stragglers are killed."""
    return [
        (list(where["workers"]), grace_s + WORKER_KILL_S + WORKER_FLUSH_S),
        (["brain"], BRAIN_STOP_S),
        (["broker"], BROKER_STOP_S),
    ]


def configure(parser: argparse.ArgumentParser) -> None:
    add_endpoint_flags(parser, connect=False)
    parser.add_argument("--workers", type=int, default=2, help="CPU workers to start (default 2)")
    parser.add_argument("--model", help="GGUF model for the workers (default: embedded Gemma)")
    parser.add_argument("--rig-dir", help="local state: journal, logs (default ./rig)")
    parser.add_argument("--config", help="llmo.toml for endpoints, workers, limits and keys")
    add_key_flags(parser, insecure=True)
    parser.add_argument("--threads", type=int, default=1, help="model threads per worker")
    parser.add_argument(
        "--no-brain-worker", action="store_true", help="do not start the brain-role worker"
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=STOP_GRACE_S,
        metavar="S",
        help="on Ctrl-C or SIGTERM, seconds running tasks may finish before they are "
        f"interrupted (default {STOP_GRACE_S:g})",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=DEFAULT_POLICY.max_restarts,
        metavar="N",
        help="restarts a crashing child gets within --restart-window before it is given up "
        f"on (default {DEFAULT_POLICY.max_restarts})",
    )
    parser.add_argument(
        "--restart-window",
        type=float,
        default=DEFAULT_POLICY.window_s,
        metavar="S",
        help=f"seconds over which restarts are counted (default {DEFAULT_POLICY.window_s:g})",
    )
    parser.add_argument(
        "--ready-file", help="write this file (endpoints as JSON) once every child is started"
    )


def plan_children(args: argparse.Namespace) -> tuple[dict, list[tuple[str, list[str]]]]:
    """Where things go and the argv of each child (name, argv)."""
    from llmo.cli.config import (
        RigConfig,
        WorkerSpec,
        cache_dir,
        keys_dir,
        load,
        server_keys,
        worker_policy,
    )
    from llmo.proto.endpoints import bind_list, local_endpoint, resolve
    from llmo.proto.security import check_bind

    config = load(args.config) if args.config else RigConfig()
    endpoints = resolve(args.broker or config.broker or None, args.pub or config.pub or None)
    # Refuse here what the broker would refuse, rather than restart it six times.
    keys = server_keys(config, args.keys_dir)
    binds = bind_list(endpoints.broker) + bind_list(endpoints.pub)
    check_bind(binds, keys, insecure=args.insecure)
    keys_flags = ["--keys-dir", keys_dir(config, args.keys_dir)] if keys is not None else []
    rig_dir = Path(args.rig_dir or config.rig_dir or "rig").resolve()
    model = args.model
    if not model:
        model = next((w.model for w in config.workers if w.model), "")
    if not model:
        from llmo.cli.models import default_model

        model = str(default_model())
    workers = list(config.workers)
    if not workers:
        workers = [
            WorkerSpec(name=f"cpu-{i}", slots=2, threads=args.threads)
            for i in range(1, args.workers + 1)
        ]
        if not args.no_brain_worker:
            workers.append(
                WorkerSpec(name="brain-llm", role="brain", slots=1, threads=args.threads)
            )
    brain_settings = dict(config.brain)
    brain_settings.setdefault("default_model", model)
    brain_settings.setdefault("brain_model", model)
    # What the rig serves, so a plan naming another model fails at once (brain.models).
    brain_settings.setdefault("models", list(dict.fromkeys(w.model or model for w in workers)))
    if args.config:  # plan files and foreach sources: inside the workers' plan roots
        roots = worker_policy(dataclasses.replace(config, rig_dir=str(rig_dir)), args.keys_dir)
        brain_settings.setdefault("plan_roots", list(roots.plan_roots))
    rig_dir.mkdir(parents=True, exist_ok=True)
    brain_config = rig_dir / "brain.json"
    brain_config.write_text(json.dumps(brain_settings, indent=2) + "\n")
    llmo = llmo_child()
    # The broker binds every endpoint given; the others connect to its local one.
    connect = local_endpoint(endpoints.broker)
    common = ["--broker", connect, *keys_flags]
    children = [
        (
            "broker",
            [
                *llmo,
                "broker",
                "--broker",
                endpoints.broker,
                *keys_flags,
                "--pub",
                endpoints.pub,
                "--interval",
                str(config.interval_s),
                "--liveness",
                str(config.liveness),
                *(["--insecure"] if args.insecure else []),
                *[arg for w in workers for arg in ("--worker", w.name)],
            ],
        ),
        (
            "brain",
            [
                *llmo,
                "brain",
                *common,
                "--journal",
                str(rig_dir / "brain.journal"),
                "--config",
                str(brain_config),
            ],
        ),
    ]
    limit_flags = [  # [limits] keys as the worker's own flags
        ("--" + dest.replace("_", "-"), str(config.limits[key]))
        for key, dest in LIMIT_FLAGS.items()
        if key in config.limits
    ]
    # The [policy] (none without --config), with the config, keys and rig folder it
    # protects: the workers learn the rig folder from it, so a bare `llmo up` has it too.
    policy_file = rig_dir / "policy.json"
    in_use = dataclasses.replace(config, rig_dir=str(rig_dir))
    policy = worker_policy(in_use, args.keys_dir).to_dict()
    policy_file.write_text(json.dumps(policy, indent=2) + "\n")
    limit_flags.append(("--policy", str(policy_file)))
    for w in workers:
        argv = [
            *llmo,
            "worker",
            *common,
            "--name",
            w.name,
            "--role",
            w.role,
            "--gpus",
            ",".join(str(g) for g in w.gpus),
            "--slots",
            str(w.slots),
            "--model",
            w.model or model,
            "--interval",
            str(config.interval_s),
            "--ctx",
            str(w.n_ctx),
            "--stop-deadline",
            str(args.stop_grace),
            "--parallel",
            str(w.parallel),
            "--cache-dir",
            cache_dir(config, str(rig_dir)),
        ]
        if config.cache_mb is not None:
            argv += ["--cache-mb", str(config.cache_mb)]
        if w.vram_mb:
            argv += ["--vram-mb", str(w.vram_mb)]
        if w.threads:
            argv += ["--threads", str(w.threads)]
        for flag, value in limit_flags:
            argv += [flag, value]
        if args.config and config.worker(w.name) is not None:
            # the rest of its entry (layers, tensor split); the flags win
            argv += ["--config", str(Path(args.config).resolve())]
        children.append((w.name, argv))
    where = {
        "broker": endpoints.broker,
        "pub": endpoints.pub,
        "connect": connect,
        "connect_pub": local_endpoint(endpoints.pub),
        "binds": binds,
        "rig_dir": str(rig_dir),
        "logs": str(rig_dir / "logs"),
        "model": model,
        "workers": [w.name for w in workers],
        "keys_dir": keys_dir(config, args.keys_dir) if keys is not None else "",
        "interval": config.interval_s,
    }
    return where, children


def in_use(endpoints: list[str]) -> list[str]:
    """The tcp endpoints that something on this machine already listens on.

    Checked before anything starts: a broker that cannot bind would only
    crash and restart, while the brain and workers started beside it joined
    the rig that does listen there, under the same names as its own.
    """
    busy = []
    for endpoint in endpoints:
        scheme, _, rest = endpoint.partition("://")
        host, _, port = rest.rpartition(":")
        if scheme != "tcp" or not port.isdigit():
            continue
        host = "0.0.0.0" if host in ("", "*") else host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ binds
            try:
                probe.bind((host, int(port)))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    busy.append(endpoint)
    return busy


RIG_LOCK = "llmo-up.lock"


class RigInUse(RuntimeError):
    """Another live ``llmo up`` holds the rig folder."""


def lock_rig(args: argparse.Namespace) -> FileLock:
    """Lock the rig folder (as ``plan_children`` will resolve it) for this ``llmo up``."""
    from llmo.brain.lockfile import FileLock, Locked
    from llmo.cli.config import RigConfig, load
    from llmo.proto.endpoints import resolve

    config = load(args.config) if args.config else RigConfig()
    endpoints = resolve(args.broker or config.broker or None, args.pub or config.pub or None)
    rig_dir = Path(args.rig_dir or config.rig_dir or "rig").resolve()
    rig_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "broker": endpoints.broker,
        "pub": endpoints.pub,
        "rig_dir": str(rig_dir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        return FileLock.acquire(str(rig_dir / RIG_LOCK), info)
    except Locked as exc:
        holder = exc.holder
        if "pid" not in holder:
            raise RigInUse(
                f"rig folder {rig_dir} is in use by another llmo up (pid unknown)"
            ) from None
        raise RigInUse(
            f"rig folder {rig_dir} is in use by llmo up pid {holder['pid']} "
            f"(broker {holder.get('broker', '?')}, pub {holder.get('pub', '?')})"
        ) from None


def run(args: argparse.Namespace) -> int:
    from llmo.cli.config import ConfigError

    set_title("llmo-up")
    try:
        rig_lock = lock_rig(args)
    except (ConfigError, RuntimeError, OSError) as exc:  # RigInUse among them
        print(f"llmo up: {exc}", file=sys.stderr)
        return 2
    try:
        return run_locked(args)
    finally:
        rig_lock.release()


def run_locked(args: argparse.Namespace) -> int:
    from llmo.cli.config import ConfigError
    from llmo.cli.supervisor import Supervisor
    from llmo.cli.up_link import UpLink, supervisor_keys
    from llmo.proto.endpoints import EndpointError
    from llmo.proto.security import SecurityError

    if not 0 <= args.stop_grace <= MAX_STOP_GRACE_S:  # NaN fails too
        print(
            f"llmo up: --stop-grace {args.stop_grace:g}: give seconds from 0 to "
            f"{MAX_STOP_GRACE_S:g}",
            file=sys.stderr,
        )
        return 2
    if args.max_restarts < 0 or not args.restart_window > 0:
        print(
            f"llmo up: --max-restarts {args.max_restarts} / --restart-window "
            f"{args.restart_window:g}: give a count of 0 or more and seconds above 0",
            file=sys.stderr,
        )
        return 2
    try:
        where, children = plan_children(args)
    except (ConfigError, SecurityError, EndpointError, RuntimeError, OSError) as exc:
        print(f"llmo up: {exc}", file=sys.stderr)
        return 2
    busy = in_use(where["binds"])
    if busy:
        print(
            f"llmo up: {', '.join(busy)} already in use: another rig (or program) listens "
            "there. Give this rig its own endpoints with --broker/--pub or LLMO_BROKER/LLMO_PUB.",
            file=sys.stderr,
        )
        return 2
    env = dict(os.environ, LLMO_BROKER=where["connect"], LLMO_PUB=where["connect_pub"])
    logs = Path(where["logs"])
    policy = RestartPolicy(max_restarts=args.max_restarts, window_s=args.restart_window)
    supervisor = Supervisor(policy, say=say)
    link: UpLink | None = None
    stopping: list[bool] = []

    def on_signal(*_: object) -> None:
        if stopping:  # asked again while stopping: what still runs is interrupted now
            supervisor.hurry()
        stopping.append(True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    # Whatever happens from here (a closed stdout pipe, a bug), the children
    # are stopped: they run in their own sessions and would outlive us.
    try:
        for name, argv in children:
            supervisor.add(name, argv, logs / f"{name}.log", env=env)
            if name == "broker":
                time.sleep(0.3)  # let it bind before the others connect
        say(f"llmo up: broker  {where['broker']} (PUB {where['pub']})")
        say(f"llmo up: rig     {where['rig_dir']}")
        say(f"llmo up: logs    {where['logs']}/<name>.log")
        say(f"llmo up: model   {where['model']}")
        say(f"llmo up: workers {', '.join(where['workers'])}")
        keys, no_key = supervisor_keys(where["keys_dir"])
        if no_key:
            say(f"llmo up: {no_key}")
        else:
            link = UpLink(
                supervisor,
                where["connect"],
                keys=keys,
                rig_dir=where["rig_dir"],
                interval=where["interval"],
            )
        say("llmo up: running; Ctrl-C stops everything. Try: llmo status")
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps(where) + "\n")
        while not stopping and supervisor.config_error is None:
            supervisor.poll()
            if link is not None:
                link.serve(0.2)
            else:
                time.sleep(0.2)
    finally:
        if link is not None:
            link.close()
        say(
            f"llmo up: stopping the workers (running tasks have {args.stop_grace:g} s to "
            "finish), then the brain, then the broker"
        )
        supervisor.stop(stages=stop_stages(where, args.stop_grace))
        say("llmo up: stopped")
    if supervisor.config_error is not None:
        name, reason = supervisor.config_error
        print(
            f"llmo up: stopped the rig: {name} has a configuration error: "
            f"{reason or 'see ' + str(logs / (name + '.log'))}",
            file=sys.stderr,
        )
        return 2
    return 0


def say(text: str) -> None:
    """Print for the operator; a closed pipe (``llmo up | tee`` after Ctrl-C) is ignored."""
    try:
        print(text, flush=True)
    except (BrokenPipeError, OSError):
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (silence further prints)
