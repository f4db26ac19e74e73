"""The rules a worker holds its shell tasks to: ``Policy``, read from ``[policy]``.

``Policy.from_dict`` checks a ``[policy]`` table (or the JSON form
``Policy.to_dict`` writes for ``llmo worker --policy FILE``) and lists every
problem, each naming its key. ``worker.policy.check`` applies the rules.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmo.worker.rlimits import RLIMIT_KEYS, Rlimits, read_rlimits

DEFAULT_REFUSED_PATTERNS: tuple[str, ...] = (
    r"\bsudo\b",
    r"\bsu\b",
    r"\bdoas\b",
    r"\bpkexec\b",
    r"\bsetcap\b",
    # chmod giving a setuid or setgid bit: u+s, g=rxs, +s, 4755, 2755 ...
    r"\bchmod\s+(-\S+\s+)*([ugoa]*[+=][rwxXt]*s|[2-7][0-7]{3}\b)",
    r"\bmkfs(\.\w+)?\b",
    r"\bdd\s+.*\bof=/dev/",
    r">\s*/dev/(sd|hd|vd|xvd|nvme|mmcblk|dm-|md)",
)
POLICY_KEYS = ("plan_roots", "protected_paths", "refused_patterns", "rlimits")


class PolicyError(ValueError):
    """A ``[policy]`` table with problems; ``problems`` lists each, naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, kw_only=True, slots=True)
class Policy:
    """What a worker lets its shell tasks do. Paths are absolute and normalised."""

    plan_roots: tuple[str, ...] = ()
    protected_paths: tuple[str, ...] = ()
    refused_patterns: tuple[str, ...] = DEFAULT_REFUSED_PATTERNS
    rlimits: Mapping[str, Rlimits] = field(default_factory=dict)

    def limits_for(self, task_class: str) -> Rlimits | None:
        """The limits for a class: its own, else ``default``, else None."""
        return self.rlimits.get(task_class) or self.rlimits.get("default")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``from_dict`` reads back (``llmo worker --policy FILE``)."""
        return {
            "plan_roots": list(self.plan_roots),
            "protected_paths": list(self.protected_paths),
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
        default_roots: Iterable[str] = (),
    ) -> Policy:
        """A checked policy from a ``[policy]`` table; raises ``PolicyError`` listing every problem.

        Relative paths are taken from ``base_dir`` (the config file's folder).
        ``protect`` is always protected (the config file, the keys folder),
        whatever the table says; ``protected_paths`` absent means
        ``default_protected()`` as well. ``plan_roots`` absent means
        ``default_roots`` (the rig's plans folder, when the config has one).
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
            protected_paths=tuple(protected),
            refused_patterns=tuple(patterns),
            rlimits=rlimits,
        )


def default_protected() -> tuple[str, ...]:
    """Protected unless the config lists its own: the virtual environment llmo runs from
    (a system Python's prefix is the system's to protect)."""
    if sys.prefix != sys.base_prefix:
        return (os.path.normpath(sys.prefix),)
    return ()


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
