"""``llmo.toml``: one file for the whole rig, read with ``tomllib``.

Theory of operation
-------------------
Every section and key is declared below with its type and default; a key the
schema does not know, or a value of the wrong type, is refused with the file,
the section and the key, so a typo never silently falls back to a default.
``[brain]`` holds the brain's settings (``brain.config.BrainConfig``) and
``[limits]`` the workers' resource limits; both are passed on as maps and
checked by their owners, which ``load`` calls so all errors surface at once.

    [rig]        name                   what the tools call this rig in their headers
    [endpoints]  broker, pub            ZeroMQ endpoints (env LLMO_BROKER/LLMO_PUB win
                                        over the defaults, flags win over both)
    [broker]     interval_s, liveness   heartbeat interval and misses before "down"
    [paths]      rig_dir, plans_dir     local state (journal, logs, model cache); plans
    [brain]      see brain.config.BrainConfig
    [limits]     see the worker's limits
    [cache]      dir, max_mb            the result cache of deterministic completions
                                        (``worker.cache``; default <rig_dir>/cache, 256 MB;
                                        max_mb = 0 turns it off)
    [security]   keys_dir, require_curve
                                        CurveZMQ keys (``llmo keys generate``; relative
                                        to this file); refuse to run without them
    [policy]     plan_roots, protected_paths, refused_patterns, [policy.rlimits.CLASS]
                                        what shell tasks may do (``worker.rules``);
                                        ``worker_policy`` adds this file, the keys and
                                        the rig folder to the protected paths,
                                        the keys and rig folders to the secret ones
    [[workers]]  name, gpus, role, model, n_gpu_layers, tensor_split, n_ctx, parallel,
                 threads, slots, vram_mb, task_user, max_output_mb
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmo.proto.endpoints import Endpoints, resolve, valid_actor_name
from llmo.proto.security import ENV_KEYS_DIR, ClientKeys, SecurityError, ServerKeys
from llmo.proto.vocab import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS

if TYPE_CHECKING:
    from llmo.worker.rules import Policy


class ConfigError(ValueError):
    """One or more problems in a config file; ``problems`` lists each."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerSpec:
    name: str
    gpus: tuple[int, ...] = ()
    role: str = "worker"
    model: str = ""
    n_gpu_layers: int = -1
    tensor_split: tuple[float, ...] = ()
    n_ctx: int = 4096  # per LLM sequence
    parallel: int = 4  # LLM sequences at once
    threads: int = 0
    slots: int = 2
    vram_mb: int = 0
    task_user: str = ""  # run its shell tasks as this user; empty: as the worker's
    max_output_mb: float | None = None  # a task's output cap; None: the worker's default


@dataclass(frozen=True, kw_only=True, slots=True)
class RigConfig:
    path: str = ""
    name: str = ""  # [rig] name: shown by status, submit --watch, watch and the monitor
    broker: str = ""
    pub: str = ""
    interval_s: float = HEARTBEAT_INTERVAL_S
    liveness: int = HEARTBEAT_LIVENESS
    rig_dir: str = ""
    plans_dir: str = ""
    keys_dir: str = ""
    require_curve: bool = False
    cache_dir: str = ""  # the result cache; empty: <rig_dir>/cache
    cache_mb: int | None = None  # its bound; None: the worker's default; 0: no cache
    brain: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    workers: tuple[WorkerSpec, ...] = ()

    def worker(self, name: str) -> WorkerSpec | None:
        return next((w for w in self.workers if w.name == name), None)


_SECTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "rig": {"name": str},
    "endpoints": {"broker": str, "pub": str},
    "broker": {"interval_s": (int, float), "liveness": int},
    "paths": {"rig_dir": str, "plans_dir": str},
    "security": {"keys_dir": str, "require_curve": bool},
    "cache": {"dir": str, "max_mb": int},
}
# Section keys whose ``RigConfig`` field has another name.
_FIELDS: dict[tuple[str, str], str] = {
    ("cache", "dir"): "cache_dir",
    ("cache", "max_mb"): "cache_mb",
}
_WORKER_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "gpus": list,
    "role": str,
    "model": str,
    "n_gpu_layers": int,
    "tensor_split": list,
    "n_ctx": int,
    "parallel": int,
    "threads": int,
    "slots": int,
    "vram_mb": int,
    "task_user": str,
    "max_output_mb": (int, float),
}


def _type_name(expected: type | tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        bool: "true or false",
    }
    if isinstance(expected, tuple):
        return "a number"
    return names.get(expected, expected.__name__)


def _check(where: str, value: Any, expected: type | tuple[type, ...], problems: list[str]) -> bool:
    if expected is bool:
        ok = isinstance(value, bool)
    else:
        ok = not isinstance(value, bool) and isinstance(value, expected)
    if not ok:
        problems.append(f"{where}: expected {_type_name(expected)}, got {value!r}")
        return False
    return True


def parse(data: dict[str, Any], path: str = "llmo.toml") -> RigConfig:
    """A checked ``RigConfig`` from parsed TOML; raises ``ConfigError`` listing every problem."""
    problems: list[str] = []
    known = {*_SECTIONS, "brain", "limits", "policy", "workers"}
    for key in data:
        if key not in known:
            problems.append(f"unknown section [{key}] (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for section, keys in _SECTIONS.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            problems.append(f"[{section}] must be a table")
            continue
        for key, value in table.items():
            if key not in keys:
                problems.append(f"[{section}] unknown key {key!r} (known: {', '.join(keys)})")
            elif _check(f"[{section}] {key}", value, keys[key], problems):
                field_name = _FIELDS.get((section, str(key)), str(key))
                values[field_name] = float(value) if key == "interval_s" else value
    if isinstance(values.get("cache_mb"), int) and values["cache_mb"] < 0:
        problems.append(f"[cache] max_mb: must be 0 (no cache) or more, got {values['cache_mb']}")
    for section in ("brain", "limits", "policy"):
        table = data.get(section, {})
        if not isinstance(table, dict):
            problems.append(f"[{section}] must be a table")
        else:
            values[section] = dict(table)
    workers = []
    seen: set[str] = set()
    raw_workers = data.get("workers", [])
    if not isinstance(raw_workers, list):
        problems.append("[[workers]] must be an array of tables")
        raw_workers = []
    for index, raw in enumerate(raw_workers):
        spec = _worker(raw, index, seen, problems)
        if spec is not None:
            workers.append(spec)
    values["workers"] = tuple(workers)
    problems.extend(_owner_checks(values))
    if problems:
        raise ConfigError(path, problems)
    return RigConfig(path=path, **values)


def _worker(raw: Any, index: int, seen: set[str], problems: list[str]) -> WorkerSpec | None:
    label = f"[[workers]] #{index + 1}"
    if not isinstance(raw, dict):
        problems.append(f"{label} must be a table")
        return None
    name = raw.get("name")
    if isinstance(name, str):
        label = f"[[workers]] {name!r}"
    ok = True
    for key, value in raw.items():
        if key not in _WORKER_KEYS:
            problems.append(f"{label}: unknown key {key!r} (known: {', '.join(_WORKER_KEYS)})")
            ok = False
        elif not _check(f"{label} {key}", value, _WORKER_KEYS[key], problems):
            ok = False
    if not isinstance(name, str) or not valid_actor_name(name):
        problems.append(f"{label}: 'name' must be a plain name such as gpu-1")
        return None
    if name in seen:
        problems.append(f"{label}: duplicate worker name")
        ok = False
    seen.add(name)
    if raw.get("role", "worker") not in ("worker", "brain"):
        problems.append(f"{label} role: expected 'worker' or 'brain', got {raw['role']!r}")
        ok = False
    gpus = raw.get("gpus", [])
    if isinstance(gpus, list) and not all(isinstance(g, int) and g >= 0 for g in gpus):
        problems.append(f"{label} gpus: expected GPU indexes such as [0, 3], got {gpus!r}")
        ok = False
    split = raw.get("tensor_split", [])
    if isinstance(split, list) and not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in split
    ):
        problems.append(f"{label} tensor_split: expected numbers, got {split!r}")
        ok = False
    elif isinstance(split, list) and isinstance(gpus, list) and split and len(split) != len(gpus):
        problems.append(
            f"{label} tensor_split: {len(split)} shares for {len(gpus)} GPUs {gpus!r}; "
            "give one share per GPU"
        )
        ok = False
    cap = raw.get("max_output_mb")
    if isinstance(cap, int | float) and not isinstance(cap, bool) and cap < 0:
        problems.append(f"{label} max_output_mb: must be 0 (no cap) or more, got {cap!r}")
        ok = False
    for key in ("slots", "n_ctx", "parallel"):
        if isinstance(raw.get(key), int) and raw[key] < 1:
            problems.append(f"{label} {key}: must be at least 1")
            ok = False
    if not ok:
        return None
    fields = dict(raw)
    fields["gpus"] = tuple(gpus)
    fields["tensor_split"] = tuple(float(v) for v in split)
    return WorkerSpec(**fields)


def _owner_checks(values: dict[str, Any]) -> list[str]:
    """Let the brain check ``[brain]`` and the worker ``[limits]``; errors name the key."""
    problems = []
    limits = values.get("limits")
    if limits:
        try:
            from llmo.worker.limits import LimitsConfig
        except ImportError:
            pass
        else:
            known = [f.name for f in dataclasses.fields(LimitsConfig)]
            for key, value in limits.items():
                if key not in known:
                    problems.append(f"[limits] unknown key {key!r} (known: {', '.join(known)})")
                elif isinstance(value, bool) or not isinstance(value, int | float):
                    problems.append(f"[limits] {key}: expected a number, got {value!r}")
    policy = values.get("policy")
    if policy:
        from llmo.worker.rules import Policy, PolicyError

        try:
            Policy.from_dict(policy)
        except PolicyError as exc:
            problems.extend(exc.problems)
    brain = values.get("brain")
    if brain:
        try:
            from llmo.brain.config import BrainConfig

            BrainConfig.from_dict(brain)
        except ImportError:
            pass
        except (TypeError, ValueError) as exc:
            problems.append(f"[brain] {exc}")
    return problems


def load(path: str | Path) -> RigConfig:
    """Read and check a config file; raises ``ConfigError`` naming the file."""
    text_path = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(text_path, ["no such file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(text_path, [f"not valid TOML: {exc}"]) from None
    config = parse(data, text_path)
    if config.keys_dir and not Path(config.keys_dir).is_absolute():
        keys_dir = Path(text_path).resolve().parent / config.keys_dir
        config = dataclasses.replace(config, keys_dir=str(keys_dir))
    return config


# --- what a process takes from the config --------------------------------------------------


def add_key_flags(parser: argparse.ArgumentParser, *, insecure: bool = False) -> None:
    """``--keys-dir`` (and for what binds, ``--insecure``)."""
    parser.add_argument(
        "--keys-dir",
        help="CurveZMQ keys folder made by `llmo keys generate` (default: [security] keys_dir "
        f"of the config, else ${ENV_KEYS_DIR}; none: plain TCP)",
    )
    if insecure:
        parser.add_argument(
            "--insecure",
            action="store_true",
            help="allow binding a non-loopback address without CurveZMQ keys (plain text)",
        )


def endpoints(config: RigConfig, broker: str | None = None, pub: str | None = None) -> Endpoints:
    """Flags first, then the config's [endpoints], then LLMO_BROKER / LLMO_PUB, then loopback."""
    return resolve(broker or config.broker or None, pub or config.pub or None)


def keys_dir(config: RigConfig, flag: str | None = None) -> str:
    """``--keys-dir``, else [security] keys_dir, else $LLMO_KEYS_DIR; empty: no keys."""
    return flag or config.keys_dir or os.environ.get(ENV_KEYS_DIR, "")


def worker_policy(config: RigConfig, keys_flag: str | None = None) -> Policy:
    """The workers' command policy: ``[policy]`` (paths relative to this file), with the
    config file, the keys folder and the rig folder always protected, the keys and
    rig folders (and ``~/.ssh``) secret, and the plans folder as the plan root
    unless ``plan_roots`` says otherwise."""
    from llmo.worker.rules import Policy

    base = os.path.dirname(os.path.abspath(config.path)) if config.path else os.getcwd()
    protect = [os.path.abspath(config.path)] if config.path else []
    secret = []
    keys = keys_dir(config, keys_flag)
    if keys:
        protect.append(os.path.abspath(keys))
        secret.append(os.path.abspath(keys))
    roots = [os.path.abspath(config.plans_dir)] if config.plans_dir else []
    given_roots = config.policy.get("plan_roots")
    all_roots = roots if given_roots is None else [os.path.join(base, r) for r in given_roots]
    if config.rig_dir:
        # The journal, the logs and the model cache. Plan roots inside the rig folder
        # stay writable: the kernel rules grant them within the secret folder.
        rig = os.path.abspath(config.rig_dir)
        secret.append(rig)
        inside = [r for r in map(os.path.normpath, all_roots) if f"{r}/".startswith(f"{rig}/")]
        if not inside:
            protect.append(rig)
    try:
        return Policy.from_dict(
            config.policy, base_dir=base, protect=protect, secret=secret, default_roots=roots
        )
    except ValueError as exc:
        raise ConfigError(config.path or "llmo.toml", [str(exc)]) from None


def cache_dir(config: RigConfig, rig_dir: str | None = None) -> str:
    """The result cache's folder: ``[cache] dir``, else ``<rig folder>/cache``."""
    if config.cache_dir:
        return os.path.abspath(config.cache_dir)
    return os.path.join(os.path.abspath(rig_dir or config.rig_dir or "rig"), "cache")


def _required(config: RigConfig, who: str) -> SecurityError:
    return SecurityError(
        f"{config.path or 'llmo.toml'} says [security] require_curve = true, but no keys folder "
        f"is set for {who}: set [security] keys_dir (or --keys-dir, or ${ENV_KEYS_DIR})"
    )


def server_keys(config: RigConfig, flag: str | None = None) -> ServerKeys | None:
    """The broker's keys, or None for plain TCP; raises ``SecurityError``."""
    folder = keys_dir(config, flag)
    if not folder:
        if config.require_curve:
            raise _required(config, "the broker")
        return None
    return ServerKeys.load(folder)


def client_keys(config: RigConfig, name: str, flag: str | None = None) -> ClientKeys | None:
    """The key pair ``name`` connects with, or None for plain TCP; raises ``SecurityError``."""
    folder = keys_dir(config, flag)
    if not folder:
        if config.require_curve:
            raise _required(config, repr(name))
        return None
    return ClientKeys.load(folder, name)
