"""Resource limits per task class, applied to a shell attempt's process.

Theory of operation
-------------------
``Rlimits`` per task class: CPU time (SIGXCPU at the limit, SIGKILL
``CPU_GRACE_S`` later), address space and open files. A limit above the
worker's own hard limit is lowered to it. They are applied by the task's
own shell before its command (``shell_prefix``: ``ulimit`` lines, soft then
hard, and exit 126 with the reason when one fails), so the worker can start
the shell with ``vfork`` instead of forking its whole address space to run
Python between fork and exec. A worker with a task user still forks: the
limits are then ``setrlimit`` calls in the child (``preexec``), before it
changes user.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass

CPU_GRACE_S = 2  # SIGXCPU at cpu_s, SIGKILL this much CPU time later
RLIMIT_CLASSES = ("script", "llm", "cpu", "brain", "default")
RLIMIT_KEYS = ("cpu_s", "address_space_mb", "open_files")


@dataclass(frozen=True, kw_only=True, slots=True)
class Rlimits:
    """Per-attempt resource limits; 0 means no limit."""

    cpu_s: int = 0
    address_space_mb: int = 0
    open_files: int = 0

    def settings(self) -> tuple[tuple[int, int, int], ...]:
        """``(resource, soft, hard)`` for each limit set, capped at the worker's own hard limits."""
        wanted = []
        if self.cpu_s:
            wanted.append((resource.RLIMIT_CPU, self.cpu_s, self.cpu_s + CPU_GRACE_S))
        if self.address_space_mb:
            size = self.address_space_mb * 1024 * 1024
            wanted.append((resource.RLIMIT_AS, size, size))
        if self.open_files:
            wanted.append((resource.RLIMIT_NOFILE, self.open_files, self.open_files))
        out = []
        for res, soft, hard in wanted:
            _, current_hard = resource.getrlimit(res)
            if current_hard != resource.RLIM_INFINITY:
                hard = min(hard, current_hard)
                soft = min(soft, hard)
            out.append((res, soft, hard))
        return tuple(out)


# resource -> (its ``ulimit`` option, bytes per unit of that option), as POSIX
# shells (dash, bash, busybox ash) read them
ULIMIT_OPTIONS = {
    resource.RLIMIT_CPU: ("t", 1),
    resource.RLIMIT_AS: ("v", 1024),
    resource.RLIMIT_NOFILE: ("n", 1),
}


def shell_prefix(settings: tuple[tuple[int, int, int], ...]) -> str:
    """Shell lines that apply ``settings`` to the shell itself (so to all it starts), to
    run before the task's command; "" when there are none."""
    if not settings:
        return ""

    def value(limit: int, unit: int) -> str:
        return "unlimited" if limit == resource.RLIM_INFINITY else str(limit // unit)

    steps = []
    for res, soft, hard in settings:
        option, unit = ULIMIT_OPTIONS[res]
        steps.append(f"ulimit -S -{option} {value(soft, unit)}")
        steps.append(f"ulimit -H -{option} {value(hard, unit)}")
    failed = 'echo "llmo: the task\'s resource limits could not be set" >&2; exit 126'
    return f"{{ {' && '.join(steps)}; }} || {{ {failed}; }}\n"


def preexec(settings: tuple[tuple[int, int, int], ...]) -> Callable[[], None] | None:
    """A ``preexec_fn`` that applies ``settings`` in the child, or None when there are none."""
    if not settings:
        return None

    def apply() -> None:
        for res, soft, hard in settings:
            resource.setrlimit(res, (soft, hard))

    return apply


def read_rlimits(table: object, problems: list[str]) -> dict[str, Rlimits]:
    """``[policy.rlimits]``: limits per task class; each problem is appended to ``problems``."""
    if not isinstance(table, dict):
        problems.append(f"[policy] rlimits: expected a table of task classes, got {table!r}")
        return {}
    out = {}
    for name, limits in table.items():
        where = f"[policy.rlimits.{name}]"
        if name not in RLIMIT_CLASSES:
            problems.append(f"{where} unknown task class (known: {', '.join(RLIMIT_CLASSES)})")
            continue
        if not isinstance(limits, dict):
            problems.append(f"{where} must be a table")
            continue
        values = {}
        for key, value in limits.items():
            if key not in RLIMIT_KEYS:
                problems.append(f"{where} unknown key {key!r} (known: {', '.join(RLIMIT_KEYS)})")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{where} {key}: expected a whole number >= 0, got {value!r}")
            else:
                values[key] = value
        out[name] = Rlimits(**values)
    return out
