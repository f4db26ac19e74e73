"""The two thin functions that read files: a plan folder and a foreach source.

Everything else in ``plans`` is pure. These turn every failure to read into
a typed result (a ``Problem`` or a ``ForeachError``) with the path in it, so
a caller never sees an ``OSError`` or a ``JSONDecodeError``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from llmo.plans.expand import items_from_json
from llmo.plans.model import ForeachError, Plan, PlanError, Problem
from llmo.plans.parser import parse_plan
from llmo.plans.variables import substitute

PLAN_FILE = "plan.md"


def load_plan(plan_dir: str | Path) -> tuple[Plan | None, list[Problem]]:
    """Read and validate ``<plan_dir>/plan.md`` (a path to a plan.md file also works)."""
    path = Path(plan_dir)
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


def read_foreach_items(
    spec: str, variables: Mapping[str, object], *, base_dir: str | None = None
) -> list[object]:
    """The items named by a ``foreach`` value such as ``{BATCH_PATH}/manifest.json:items``.

    Placeholders are substituted first; a relative file is read from
    ``base_dir`` (the batch folder, where tasks run). Raises ``ForeachError``
    for an undefined placeholder, a missing or unreadable file, bad JSON, a
    missing key or a value that is not an array.
    """
    try:
        resolved = substitute(spec, variables)
    except PlanError as exc:
        raise ForeachError(f"foreach {spec}: {exc}") from None
    name, path = split_foreach(resolved)
    file = name if base_dir is None else os.path.join(base_dir, name)
    try:
        with open(file, encoding="utf-8") as handle:
            data = json.load(handle)
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
