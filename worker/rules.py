"""The rules a worker holds its shell tasks to: ``Policy``, read from ``[policy]``.

``plan_roots`` (and ``writable_paths``) are where tasks may write, which the
kernel enforces (``worker.landlock``); ``secret_paths`` (always ``~/.ssh``,
and the keys and rig folders ``llmo.cli.config.worker_policy`` adds) are
what tasks may neither read nor write; ``protected_paths`` may not be
written. ``refused_patterns`` and the literal checks of ``worker.policy``
refuse the obvious cases early, with a reason.

``Policy.from_dict`` checks a ``[policy]`` table (or the JSON form
``Policy.to_dict`` writes for ``llmo worker --policy FILE``) and lists every
problem, each naming its key. ``worker.policy.check`` applies the rules.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from llmo.worker.rlimits import RLIMIT_KEYS, Rlimits, read_rlimits

DEFAULT_REFUSED_PATTERNS: tuple[str, ...] = (
    r"\b(sudo|su|doas|pkexec|setcap|crontab)\b",
    # chmod or install giving a setuid or setgid bit: u+s, g=rxs, +s, 4755, 02755 ...
    r"\b(chmod|install)\s+(-\S+\s+)*(-m\s*)?([ugoa]*[+=][rwxXt]*s|0?[2-7][0-7]{3}\b)",
    r"\b(mkfs(\.\w+)?|mke2fs|mkswap|wipefs|fdisk|sfdisk|parted)\b",
    # a disk by its device path, for any program (dd of=, shred, tee, >, ...)
    r"/dev/(sd|hd|vd|xvd|nvme|mmcblk|dm-|md|loop)\w*",
    r"/etc/(cron|sudoers|systemd|init\.d|profile|ld\.so)",
)
POLICY_KEYS = (
    "plan_roots",
    "writable_paths",
    "protected_paths",
    "secret_paths",
    "refused_patterns",
    "rlimits",
)


class PolicyError(ValueError):
    """A ``[policy]`` table with problems; ``problems`` lists each, naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, kw_only=True, slots=True)
class Policy:
    """What a worker lets its shell tasks do. Paths are absolute and normalised."""

    plan_roots: tuple[str, ...] = ()
    writable_paths: tuple[str, ...] = ()  # besides the plan roots: a model cache ...
    protected_paths: tuple[str, ...] = ()
    secret_paths: tuple[str, ...] = field(default_factory=lambda: default_secret())
    refused_patterns: tuple[str, ...] = DEFAULT_REFUSED_PATTERNS
    rlimits: Mapping[str, Rlimits] = field(default_factory=dict)

    def limits_for(self, task_class: str) -> Rlimits | None:
        """The limits for a class: its own, else ``default``, else None."""
        return self.rlimits.get(task_class) or self.rlimits.get("default")

    def with_secret(self, *paths: str) -> Policy:
        """This policy with ``paths`` (absolute) also secret."""
        more = [os.path.abspath(p) for p in paths if p]
        return replace(self, secret_paths=tuple(dict.fromkeys((*self.secret_paths, *more))))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``from_dict`` reads back (``llmo worker --policy FILE``)."""
        return {
            "plan_roots": list(self.plan_roots),
            "writable_paths": list(self.writable_paths),
            "protected_paths": list(self.protected_paths),
            "secret_paths": list(self.secret_paths),
            "refused_patterns": list(self.refused_patterns),
            "rlimits": {
                name: {k: getattr(lim, k) for k in RLIMIT_KEYS}
                for name, lim in self.rlimits.items()
            },
        }

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        base_dir: str = "",
        protect: Iterable[str] = (),
        secret: Iterable[str] = (),
        default_roots: Iterable[str] = (),
    ) -> Policy:
        """A checked policy from a ``[policy]`` table; raises ``PolicyError`` listing every problem.

        Relative paths are taken from ``base_dir`` (the config file's folder).
        ``protect`` is always protected (the config file, the keys folder),
        whatever the table says; ``protected_paths`` absent means
        ``default_protected()`` as well. ``secret`` (the keys and rig folders)
        and ``default_secret()`` are always secret, besides ``secret_paths``.
        ``plan_roots`` absent means ``default_roots`` (the rig's plans folder,
        when the config has one).
        """
        problems: list[str] = []
        for key in data:
            if key not in POLICY_KEYS:
                problems.append(f"[policy] unknown key {key!r} (known: {', '.join(POLICY_KEYS)})")
        base = base_dir or os.getcwd()
        roots = _paths(data, "plan_roots", base, problems)
        if roots is None:
            roots = [_absolute(p, base) for p in default_roots if p]
        protected = _paths(data, "protected_paths", base, problems)
        if protected is None:
            protected = list(default_protected())
        for path in protect:
            if path and _absolute(path, base) not in protected:
                protected.append(_absolute(path, base))
        writable = _paths(data, "writable_paths", base, problems) or []
        secrets = _paths(data, "secret_paths", base, problems) or []
        for path in (*default_secret(), *secret):
            if path and _absolute(path, base) not in secrets:
                secrets.append(_absolute(path, base))
        patterns = data.get("refused_patterns", list(DEFAULT_REFUSED_PATTERNS))
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            problems.append(
                f"[policy] refused_patterns: expected an array of regexes, got {patterns!r}"
            )
            patterns = []
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.append(f"[policy] refused_patterns: {pattern!r} is not a regex: {exc}")
        rlimits = read_rlimits(data.get("rlimits", {}), problems)
        if problems:
            raise PolicyError(problems)
        return cls(
            plan_roots=tuple(roots),
            writable_paths=tuple(writable),
            protected_paths=tuple(protected),
            secret_paths=tuple(secrets),
            refused_patterns=tuple(patterns),
            rlimits=rlimits,
        )


def default_protected() -> tuple[str, ...]:
    """Protected unless the config lists its own: the virtual environment llmo runs from
    (a system Python's prefix is the system's to protect)."""
    if sys.prefix != sys.base_prefix:
        return (os.path.normpath(sys.prefix),)
    return ()


def default_secret() -> tuple[str, ...]:
    """Secret whatever the config says: the worker's user's ``~/.ssh``."""
    return (os.path.normpath(os.path.join(os.path.expanduser("~"), ".ssh")),)


def _absolute(path: str, base: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def _paths(data: Mapping[str, Any], key: str, base: str, problems: list[str]) -> list[str] | None:
    if key not in data:
        return None
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        problems.append(f"[policy] {key}: expected an array of paths, got {value!r}")
        return []
    return [_absolute(p, base) for p in value]
