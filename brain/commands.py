"""What the core asks the shell to do. Plain frozen records; the shell executes them.

The core never performs I/O: it returns these, in order, and the shell carries
them out after the event that caused them is safely in the journal. Sends are
fire-and-forget; file reads come back as events (``PlanLoaded``,
``ManifestRead``) so that the journal holds what was read and a replay never
touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmo.proto.messages import Message


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` (its ``dst`` set); the shell stamps src, id and time."""

    msg: Message


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Read ``<plan_path>/plan.md`` for request ``request_id``; answer with ``PlanLoaded``.

    ``history``, when set, is a batch folder the submission names (``BATCH_ID``,
    ``RESUME_BATCH_ID``): the answer also says whether it exists and which
    tasks its earlier run recorded as succeeded (``brain.prior``)."""

    request_id: str
    plan_path: str
    history: str = ""


@dataclass(frozen=True, slots=True)
class ReadManifest:
    """Read a foreach source: ``plans.read_foreach_items(spec, variables)``, a
    relative file taken from the batch folder (``BATCH_PATH``); answer with
    ``ManifestRead``."""

    batch_id: str
    task_id: str
    spec: str
    variables: dict[str, str]


@dataclass(frozen=True, slots=True)
class MakeDirs:
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppendLines:
    """Append text lines (each without its newline) to a file, creating it."""

    path: str
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WriteFile:
    """Replace a file's content (atomically: write a temporary file, rename).

    ``artifacts`` is for RUN_SUMMARY.json only: ``"count"`` has the shell count
    the files of the batch folder (the file's folder) and add
    ``artifact_counts`` to the JSON object; ``"none"`` adds it empty (while a
    batch runs, so that a refresh never walks a large output folder)."""

    path: str
    text: str
    artifacts: str = ""


@dataclass(frozen=True, slots=True)
class LinkFile:
    """Make ``path`` a symbolic link to ``target`` (relative to ``path``'s folder),
    or a hard link where the file system takes no symbolic links."""

    path: str
    target: str


@dataclass(frozen=True, slots=True)
class RemoveFile:
    """Remove a file that no longer tells the truth (none there: nothing to do)."""

    path: str


@dataclass(frozen=True, slots=True)
class WriteEnvManifest:
    """Write ``path``: the Python modules the plan folder's scripts import, and
    whether the brain's environment has each (``brain.envscan``)."""

    plan_path: str
    path: str


@dataclass(frozen=True, slots=True)
class Log:
    level: str  # "info", "warning", "error"
    text: str


Command = (
    Send
    | RemoveFile
    | ReadPlan
    | ReadManifest
    | MakeDirs
    | AppendLines
    | WriteFile
    | LinkFile
    | WriteEnvManifest
    | Log
)
