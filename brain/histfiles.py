"""The shell's side of the history files that need the disk: links, artifact counts,
and ``env_manifest.json``.

Theory of operation
-------------------
The core decides what to write; these functions do the parts that must look
at the disk, so they run in the brain's shell (``service.write_files``):

- ``link_file``: ``logs/batch_events.jsonl`` (where the original system kept
  its events) is a relative symbolic link to ``../batch_events.jsonl``.
  Relative symbolic links work on NFS and survive moving or copying the
  batch folder (``rsync -a``, ``tar``, ``cp -a``). A file system that takes
  no symbolic links (some SMB mounts) gets a hard link to the same file
  instead: the events file is only ever appended to, never replaced, so both
  names keep showing the same lines. If neither can be made the reason is
  raised (the shell logs it); the events file itself is unaffected.
- ``with_artifacts``: RUN_SUMMARY.json's ``artifact_counts`` (files under
  ``output/``, ``results/`` and ``logs/``), counted only when the batch has
  ended or was interrupted, and at most ``MAX_SCAN`` entries per folder, so
  a refresh never walks a huge folder on the shared drive.
- ``env_manifest``: every ``*.py`` file of the plan folder (not its
  ``history/``) is parsed with ``ast`` for its imports; each top-level
  module is looked up with ``importlib.util.find_spec`` in the brain's own
  Python environment. Workers run scripts with their own interpreter, so
  ``available`` says what the brain's machine has: a rig whose workers share
  the brain's virtualenv (the usual install) gets the answer for them too.
"""

from __future__ import annotations

import ast
import datetime
import importlib.util
import json
import os
import sys
from typing import Any

ARTIFACT_FOLDERS = ("output", "results", "logs")
MAX_SCAN = 100_000  # entries counted per folder; beyond it the count says at least
MAX_SCRIPTS = 2_000  # Python files of a plan folder scanned for imports
MAX_SCRIPT_BYTES = 2 * 1024 * 1024  # a larger file is skipped, and listed as skipped


def link_file(path: str, target: str) -> str:
    """Make ``path`` a link to ``target`` (relative to ``path``'s folder); returns
    ``"symlink"``, ``"hardlink"`` or ``"exists"``."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    real = os.path.normpath(os.path.join(folder, target))
    if os.path.lexists(path):
        return "exists"
    try:
        os.symlink(target, path)
        return "symlink"
    except OSError as first:
        try:
            with open(real, "a", encoding="utf-8"):
                pass  # a hard link needs the file to exist
            os.link(real, path)
            return "hardlink"
        except OSError as second:
            raise OSError(
                second.errno, f"cannot link {path} to {real}: symlink: {first}; hard link: {second}"
            ) from second


def count_files(folder: str) -> int:
    """Plain files under ``folder`` (recursively), at most ``MAX_SCAN`` entries looked at."""
    seen = 0
    found = 0
    stack = [folder]
    while stack and seen < MAX_SCAN:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    seen += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                        found += 1
                    if seen >= MAX_SCAN:
                        break
        except OSError:
            continue
    return found


def artifact_counts(history: str) -> dict[str, int]:
    return {name: count_files(os.path.join(history, name)) for name in ARTIFACT_FOLDERS}


def with_artifacts(text: str, history: str, mode: str) -> str:
    """RUN_SUMMARY.json's text with ``artifact_counts`` first in its object: counted
    (``mode == "count"``) or empty (``"none"``, while the batch runs)."""
    counted = artifact_counts(history) if mode == "count" else {}
    head = json.dumps({"artifact_counts": counted})
    body = text.lstrip()
    if not body.startswith("{"):
        return text
    rest = body[1:].lstrip()
    joiner = "" if rest.startswith("}") else ", "
    return head[:-1] + joiner + rest


def imports_of(source: str) -> set[str]:
    """Top-level modules a Python source imports (relative imports left out)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def plan_scripts(plan_path: str) -> list[str]:
    """The plan folder's ``*.py`` files, its ``history/`` and hidden folders left out."""
    found: list[str] = []
    seen = 0
    for root, dirs, files in os.walk(plan_path):
        dirs[:] = sorted(d for d in dirs if d != "history" and not d.startswith("."))
        seen += len(dirs) + len(files)
        if seen > MAX_SCAN:  # a data folder inside the plan: stop, never walk it all
            return found
        for name in sorted(files):
            if name.endswith(".py"):
                found.append(os.path.join(root, name))
                if len(found) >= MAX_SCRIPTS:
                    return found
    return found


def env_manifest(plan_path: str, now: float) -> dict[str, Any]:
    """``env_manifest.json``: each module the plan's scripts import, who imports it,
    and whether the brain's Python environment can import it."""
    scripts = plan_scripts(plan_path)
    local = {os.path.splitext(os.path.basename(p))[0] for p in scripts}
    users: dict[str, list[str]] = {}
    unreadable: list[dict[str, str]] = []
    for path in scripts:
        rel = os.path.relpath(path, plan_path)
        try:
            if os.path.getsize(path) > MAX_SCRIPT_BYTES:
                unreadable.append({"script": rel, "error": "larger than 2 MB, not scanned"})
                continue
            with open(path, encoding="utf-8") as handle:
                names = imports_of(handle.read())
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as exc:
            unreadable.append({"script": rel, "error": str(exc)[:300]})
            continue
        for name in names:
            users.setdefault(name, []).append(rel)
    modules = []
    for name in sorted(users):
        kind = (
            "stdlib" if name in sys.stdlib_module_names else "local" if name in local else "third"
        )
        available = kind != "third" or _found(name)
        modules.append(
            {"module": name, "kind": kind, "available": available, "imported_by": users[name]}
        )
    missing = [m["module"] for m in modules if not m["available"]]
    return {
        "plan_path": plan_path,
        "generated_at": datetime.datetime.fromtimestamp(now, tz=datetime.UTC).isoformat(),
        "checked_in": "brain",
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "scripts": [os.path.relpath(p, plan_path) for p in scripts],
        "modules": modules,
        "missing": missing,
        "unreadable": unreadable,
    }


def _found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
