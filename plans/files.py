"""The thin functions that read files: a plan folder and a foreach source.

Everything else in ``plans`` is pure. These turn every failure to read into
a typed result (a ``Problem`` or a ``ForeachError``) with the path in it, so
a caller never sees an ``OSError`` or a ``JSONDecodeError``.

Confinement. A foreach source is read only when its real path (``..`` and
symbolic links resolved) lies inside the plan's folder, the batch folder or
one of the configured plan roots; otherwise ``ForeachError`` names the path
and where it leads, and nothing is read. The check is made on the path
before it is opened and again on the file actually opened (through
``/proc/self/fd``), so a link swapped in between is caught too; only a
regular file is read (a FIFO would stall the reader). ``outside_roots`` is
the same test for a plan file.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from llmo.plans.expand import items_from_json
from llmo.plans.model import ForeachError, Plan, PlanError, Problem
from llmo.plans.parser import parse_plan
from llmo.plans.variables import substitute

PLAN_FILE = "plan.md"


def load_plan(plan_dir: str | Path) -> tuple[Plan | None, list[Problem]]:
    """Read and validate ``<plan_dir>/plan.md`` (a path to a plan.md file also works)."""
    path = Path(plan_dir)
    if not path.exists() and path.name == PLAN_FILE:  # the file was meant
        return None, [Problem(str(path), 0, "", f"there is no plan file {path}")]
    file = path if path.is_file() else path / PLAN_FILE
    if not path.exists():
        return None, [Problem(str(file), 0, "", f"there is no plan folder {path}")]
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [Problem(str(file), 0, "", f"{path} has no {PLAN_FILE}")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(str(file), 0, "", f"cannot read the plan: {exc}")]
    return parse_plan(text, str(file))


def split_foreach(spec: str) -> tuple[str, str]:
    """``(json file, dotted path)`` of a substituted ``foreach`` value."""
    file, sep, path = spec.rpartition(":")
    if not sep or "/" in path or "\\" in path:
        return spec.strip(), ""
    return file.strip(), path.strip()


def within(path: str, roots: Iterable[str]) -> bool:
    """``path`` (already resolved) is one of ``roots`` or inside one (resolved here)."""
    for root in roots:
        real = os.path.realpath(root)
        if path == real or path.startswith(real.rstrip("/") + "/"):
            return True
    return False


def outside_roots(file: str, roots: Iterable[str]) -> str | None:
    """Why ``file`` may not be read: it leads outside every root; ``None`` when it is inside."""
    roots = [r for r in roots if r]
    real = os.path.realpath(file)
    if within(real, roots):
        return None
    where = f" (it leads to {real})" if real != file else ""
    return f"{file}{where} is outside the plan roots ({', '.join(roots) or 'none'})"


def foreach_roots(variables: Mapping[str, object], roots: Iterable[str] = ()) -> list[str]:
    """Where a run's foreach sources may lie: its plan folder, its batch folder, ``roots``."""
    own = [variables.get("PLAN_PATH"), variables.get("BATCH_PATH")]
    return [str(r) for r in (*own, *roots) if isinstance(r, str) and r]


def read_foreach_items(
    spec: str,
    variables: Mapping[str, object],
    *,
    base_dir: str | None = None,
    roots: Iterable[str] | None = None,
) -> list[object]:
    """The items named by a ``foreach`` value such as ``{BATCH_PATH}/manifest.json:items``.

    Placeholders are substituted first; a relative file is read from
    ``base_dir`` (the batch folder, where tasks run). With ``roots`` given
    (``()`` for none configured) the file must lie inside the run's plan
    folder, its batch folder or one of ``roots``; ``None`` skips the check.
    Raises ``ForeachError`` for an undefined placeholder, a file outside the
    roots, a missing or unreadable file, bad JSON, a missing key or a value
    that is not an array.
    """
    try:
        resolved = substitute(spec, variables)
    except PlanError as exc:
        raise ForeachError(f"foreach {spec}: {exc}") from None
    name, path = split_foreach(resolved)
    file = name if base_dir is None else os.path.join(base_dir, name)
    allowed = None if roots is None else foreach_roots(variables, roots)
    try:
        if allowed is not None and (why := outside_roots(file, allowed)):
            raise ForeachError(f"the foreach source {why}; it was not read")
        data = json.loads(read_confined(file, allowed, "the foreach source"))
    except FileNotFoundError:
        raise ForeachError(f"the foreach source {file} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ForeachError(
            f"the foreach source {file} is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ForeachError(f"cannot read the foreach source {file}: {exc}") from None
    try:
        return items_from_json(data, path)
    except ForeachError as exc:
        raise ForeachError(f"the foreach source {file}: {exc}") from None


def read_confined(file: str, allowed: list[str] | None, what: str) -> str:
    """The text of regular file ``file``, checked once opened to lie inside ``allowed``.

    ``ForeachError`` names ``what`` and the path when it is not a regular
    file or leads outside; ``OSError`` and ``UnicodeDecodeError`` pass through.
    """
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ForeachError(f"{what} {file} is not a regular file; it was not read")
        opened = f"/proc/self/fd/{fd}"
        if allowed is not None and os.path.exists(opened):
            real = os.readlink(opened)
            if not within(real, allowed):
                raise ForeachError(
                    f"{what} {file} (it leads to {real}) is outside the plan roots "
                    f"({', '.join(allowed)}); it was not read"
                )
        os.set_blocking(fd, True)
        with os.fdopen(fd, encoding="utf-8") as handle:
            fd = -1
            return handle.read()
    finally:
        if fd >= 0:
            os.close(fd)
