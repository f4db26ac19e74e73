"""Shell tasks as another user: the barrier that stands without Landlock.

Theory of operation
-------------------
With ``task_user`` set (``llmo worker --task-user NAME``, ``[[workers]]
task_user``), every shell task runs as that user instead of the worker's,
so what the worker's user may read (the keys it connects with, the rig
folder) is closed to tasks by plain file permissions, whether or not the
kernel has Landlock.

``resolve`` runs once at start: the user must exist (``pwd``) and the
worker must be able to switch to it: root, or ``CAP_SETUID`` and
``CAP_SETGID`` in its effective set (the systemd unit grants them as
ambient capabilities); else ``TaskUserError`` says why in one line and the
worker does not start. The user's groups (``getgrouplist``) are looked up
then too, so the child makes no NSS calls.

``become`` runs in each task's child between fork and exec, after the
resource limits and BEFORE ``no_new_privs`` and Landlock. Order matters:

1. ``setgroups`` (the task user's groups, not the worker's), then
   ``setresgid``: both need ``CAP_SETGID``, which goes with the next step;
2. ``setresuid``: real, effective and saved uid, so there is no way back;
3. the capabilities are dropped explicitly (ambient set cleared, ``capset``
   to nothing). Switching from root does that by itself, but from a
   non-root worker holding ambient ``CAP_SETUID`` it does not, and ambient
   capabilities would survive ``exec`` into the task: with them the task
   could switch back, or to root;
4. the ids are read back and must be the task user's;
5. then ``landlock.restrict_self``: ``no_new_privs`` (so no setuid file
   raises the task again) and the ruleset.

The private temporary folder of an attempt (``TMPDIR``, also its ``HOME``:
the task user has none and the worker's is the rig folder) must belong to
the task user, but the worker holds no ``CAP_CHOWN``: ``make_tmp`` and
``remove_tmp`` run ``mkdir`` and ``rm`` as the task user, in a child that
``become``s it first.

Signals: aborting or killing a task of another user needs ``CAP_KILL``
(or root); the systemd unit grants it with the two above.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import secrets
import subprocess
import tempfile
from dataclasses import dataclass

CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
HELPER_TIMEOUT_S = 60.0

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class TaskUserError(Exception):
    """The task user cannot be used; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class TaskUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def become(self) -> None:
        """In the child, before ``no_new_privs`` and Landlock: see the module's docstring."""
        os.setgroups(list(self.groups))
        os.setresgid(self.gid, self.gid, self.gid)
        os.setresuid(self.uid, self.uid, self.uid)
        drop_capabilities()
        if os.getresuid() != (self.uid,) * 3 or os.getresgid() != (self.gid,) * 3:
            raise OSError(f"still not {self.name} after setresuid")

    def make_tmp(self) -> str:
        """A new private folder in the temporary folder, owned by this user, mode 0700."""
        path = os.path.join(tempfile.gettempdir(), f"llmo-task-{secrets.token_hex(6)}")
        self._as_user(["/bin/mkdir", "-m", "0700", "--", path], f"mkdir {path}")
        return path

    def remove_tmp(self, path: str) -> None:
        """Remove ``path`` and all the task made in it, as this user."""
        self._as_user(["/bin/rm", "-rf", "--", path], f"rm -rf {path}")

    def _as_user(self, argv: list[str], what: str) -> None:
        try:
            done = subprocess.run(
                argv,
                env={"PATH": os.defpath, "LC_ALL": "C"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                close_fds=True,
                cwd="/",
                preexec_fn=self.become,  # setgroups, setresgid, setresuid, capset only
                timeout=HELPER_TIMEOUT_S,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise OSError(f"{what} as {self.name}: {exc}") from None
        if done.returncode != 0:
            why = done.stderr.decode("utf-8", "replace").strip() or f"exit {done.returncode}"
            raise OSError(f"{what} as {self.name}: {why}")


def drop_capabilities() -> None:
    """Clear the ambient set, then effective, permitted and inheritable (always allowed)."""
    # EINVAL: a kernel before 4.3 has no ambient set, so nothing to clear.
    if _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        if err != 22:
            raise OSError(err, f"prctl(PR_CAP_AMBIENT_CLEAR_ALL): {os.strerror(err)}")
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def effective_capabilities(status: str | None = None) -> int:
    """``CapEff`` of ``/proc/self/status`` (or of the text given); 0 when unknown."""
    if status is None:
        try:
            with open("/proc/self/status", encoding="ascii", errors="replace") as f:
                status = f.read()
        except OSError:
            return 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split(":", 1)[1].strip(), 16)
            except ValueError:
                return 0
    return 0


def switch_refusal(uid: int | None = None, status: str | None = None) -> str:
    """Why this process cannot switch a child to another user; empty when it can."""
    if (os.getuid() if uid is None else uid) == 0:
        return ""
    caps = effective_capabilities(status)
    missing = [
        name
        for name, bit in (("CAP_SETUID", CAP_SETUID), ("CAP_SETGID", CAP_SETGID))
        if not caps & (1 << bit)
    ]
    if not missing:
        return ""
    return (
        f"the worker runs as uid {os.getuid() if uid is None else uid} without "
        f"{' and '.join(missing)} (run it as root, or give it AmbientCapabilities="
        "CAP_SETUID CAP_SETGID CAP_KILL as the llmo-worker@ unit does)"
    )


def resolve(name: str, *, uid: int | None = None, status: str | None = None) -> TaskUser:
    """The task user ``name``, checked; raises ``TaskUserError`` with a one-line reason."""
    shown = repr(name).replace("\n", "\\n")
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, ValueError):  # ValueError: a NUL byte
        raise TaskUserError(
            f"task user {shown} does not exist on this machine (create it: "
            f"useradd --system --no-create-home --shell /usr/sbin/nologin {name})"
        ) from None
    why = switch_refusal(uid, status)
    if why:
        raise TaskUserError(f"cannot run tasks as {shown}: {why}")
    worker_uid = os.getuid() if uid is None else uid
    if entry.pw_uid == worker_uid:
        raise TaskUserError(
            f"task user {shown} is the worker's own user (uid {entry.pw_uid}): "
            "it would separate nothing; name another user, or leave task_user empty"
        )
    groups = tuple(dict.fromkeys(os.getgrouplist(entry.pw_name, entry.pw_gid)))
    return TaskUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, groups=groups)
