"""Kernel confinement of shell tasks: a Landlock ruleset and ``no_new_privs``.

Theory of operation
-------------------
Every shell attempt runs under a Landlock ruleset (Linux 5.13+), applied in
the child between fork and exec. The ruleset is built in the worker before
the fork (``Confinement.ruleset``: one ``landlock_create_ruleset``, then one
``landlock_add_rule`` per allowed folder, each opened ``O_PATH``), so the
child makes only two system calls: ``prctl(PR_SET_NO_NEW_PRIVS)``, which
Landlock requires and which stops setuid and setgid bits (and file
capabilities) from raising the privileges of anything the task runs, and
``landlock_restrict_self``. The restriction is inherited by everything the
task starts and cannot be lifted.

Landlock only allows: every access right the ruleset handles is denied
unless a rule grants it on a folder (for the whole tree beneath it) or a
file. The rules (``plan_rules``):

- **Writes** (every write-type right the kernel's ABI knows: write a file,
  remove a file or folder, make a file, folder, link, socket, fifo, char or
  block device, rename across folders (``refer``), truncate, device ioctls)
  beneath the writable roots only: the policy's plan roots (or, without
  plan roots, the task's plan and batch folders), ``[policy]
  writable_paths``, and the attempt's private temporary folder
  (``TMPDIR``). Secret and protected paths beneath a writable root are cut
  out of it (the same way as reads below).
- **Reads** (read a file, execute) everywhere except the secret paths: the
  keys folder, the rig folder, ``~/.ssh`` and ``[policy] secret_paths``.
  Landlock cannot deny inside an allowed tree, so the rules allow the
  complement of the secret trees: walking from ``/`` down to each secret
  folder, every sibling along the way gets a read rule, and the folders on
  the way themselves get none. The complement is computed when the
  ruleset is built (per attempt); an entry created later directly in a
  folder on such a way (say a new file in ``/tmp`` when the keys are in
  ``/tmp/rig/keys``) is not readable by the task. Symbolic links are not
  followed (their targets are reached by their own paths). Listing folders
  (``read_dir``) is allowed everywhere, so ``ls ~`` works: a task may see
  the names in a secret folder, never the contents.
- **Devices**: read, write and ioctl on the character devices a task needs
  (``/dev/null``, ``/dev/zero``, ``/dev/full``, ``/dev/random``,
  ``/dev/urandom``, ``/dev/tty``, ``/dev/ptmx``, ``/dev/pts``), the GPUs'
  (``/dev/nvidia*``, ``/dev/dri``, ``/dev/kfd``) and ``/dev/shm``; never
  a block device.
- From ABI 6, signals to processes outside the task's own domain are
  refused (``LANDLOCK_SCOPE_SIGNAL``): a task cannot kill the worker.

Where Landlock is absent (a kernel before 5.13, ``lsm=`` without it, or a
seccomp filter refusing the calls) ``probe`` reports ABI 0 and why; the
worker logs one warning at start, tasks still run with ``no_new_privs``,
and only the pattern policy (``worker.policy``) stands between a task and
the files its user may write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import secrets
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from llmo.worker.rules import Policy

T = TypeVar("T")

# System call numbers: the generic table, the same on x86_64 and aarch64.
SYS_CREATE_RULESET = 444
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
SCOPE_SIGNAL = 1 << 1  # ABI 6

READ = EXECUTE | READ_FILE | READ_DIR
WRITE = (
    WRITE_FILE
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_CHAR
    | MAKE_DIR
    | MAKE_REG
    | MAKE_SOCK
    | MAKE_FIFO
    | MAKE_BLOCK
    | MAKE_SYM
    | REFER
    | TRUNCATE
    | IOCTL_DEV
)
DEVICE = READ_FILE | WRITE_FILE | IOCTL_DEV
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # what a file rule may hold

DEVICES = (
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
    "/dev/shm",
    "/dev/dri",
    "/dev/kfd",
    "/dev/nvidia-caps",
)
GPU_DEVICE_PREFIX = "/dev/nvidia"


def handled(abi: int) -> int:
    """The filesystem access rights the kernel's Landlock ABI knows."""
    rights = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def probe(forced: int | None = None) -> tuple[int, str]:
    """The kernel's Landlock ABI version and, when it is 0, why there is none.

    ``forced`` stands in for the kernel's answer (a worker configured to
    confine less than its kernel could, or a test of the degraded path).
    """
    if forced is not None and forced < 1:
        return 0, "Landlock is turned off in this worker's configuration"
    version = _syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), CREATE_RULESET_VERSION)
    if version >= 1:
        return (int(version) if forced is None else min(forced, int(version))), ""
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        return 0, "this kernel has no Landlock system calls (Linux 5.13 or later has them)"
    if err == errno.EOPNOTSUPP:
        return 0, "Landlock is built in but not enabled (add landlock to the lsm= boot parameter)"
    return 0, f"the Landlock version query failed: {os.strerror(err)} (a seccomp filter?)"


def set_no_new_privs() -> None:
    """``prctl(PR_SET_NO_NEW_PRIVS, 1)``: exec can no longer raise privileges."""
    if _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")


def restrict_self(ruleset_fd: int) -> None:
    """In the child: ``no_new_privs``, then the ruleset (if any) for good."""
    set_no_new_privs()
    if ruleset_fd >= 0 and _syscall(SYS_RESTRICT_SELF, ruleset_fd, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def allow_except(root: str, denied: Iterable[str]) -> Iterator[str]:
    """``root`` less the trees of ``denied`` beneath it, as the fewest whole trees:
    ``root`` itself when nothing denied lies in it, else each of its entries
    the same way (entries that are symbolic links are left out). A denied
    path that is ``root`` itself or above it denies nothing here: a root given
    explicitly (a plan root inside the rig folder) is granted."""
    inside = [d for d in denied if d != root and _within(d, root)]
    if not inside:
        yield root
        return
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return
    for name in names:
        child = os.path.join(root, name)
        if child in inside or os.path.islink(child):
            continue
        yield from allow_except(child, inside)


def plan_rules(
    *,
    writable: Iterable[str],
    secret: Iterable[str],
    protected: Iterable[str] = (),
    devices: Iterable[str] = (),
) -> list[tuple[str, int]]:
    """The (path, access) rules of a task's ruleset; see the module's docstring."""
    secret = sorted({os.path.realpath(p) for p in secret if p})
    guarded = sorted({*secret, *(os.path.realpath(p) for p in protected if p)})
    rules: list[tuple[str, int]] = [("/", READ_DIR)]
    rules += [(path, READ) for path in allow_except("/", secret)]
    for root in dict.fromkeys(os.path.realpath(p) for p in writable if p):
        rules += [(path, READ | WRITE) for path in allow_except(root, guarded)]
    rules += [(path, DEVICE | WRITE) for path in devices]
    return rules


def task_devices() -> list[str]:
    """The device files and folders of ``DEVICES`` and the NVIDIA GPUs that exist here."""
    found = [d for d in DEVICES if os.path.exists(d)]
    try:
        found += sorted(
            os.path.join("/dev", n) for n in os.listdir("/dev") if n.startswith("nvidia")
        )
    except OSError:
        pass
    return list(dict.fromkeys(found))


def for_task(policy: Policy, plan_path: str, batch_path: str, abi: int) -> Confinement:
    """The confinement of one task under ``policy``: its writable roots are the
    plan roots (else its own plan and batch folders) and ``writable_paths``."""
    roots = policy.plan_roots or tuple(p for p in (plan_path, batch_path) if p)
    return Confinement(
        abi=abi,
        writable=(*roots, *policy.writable_paths),
        secret=policy.secret_paths,
        protected=policy.protected_paths,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Confinement:
    """What one attempt may touch, and the kernel ABI to enforce it with (0: none)."""

    abi: int
    writable: tuple[str, ...] = ()
    secret: tuple[str, ...] = ()
    protected: tuple[str, ...] = ()

    def rules(self, tmp: str = "") -> list[tuple[str, int]]:
        return plan_rules(
            writable=(*self.writable, tmp),
            secret=self.secret,
            protected=self.protected,
            devices=task_devices(),
        )

    def ruleset(self, tmp: str = "") -> int:
        """A Landlock ruleset fd (close-on-exec) holding ``rules``; -1 without Landlock."""
        if self.abi < 1:
            return -1
        rights = handled(self.abi)
        attr = _RulesetAttr(rights, 0, SCOPE_SIGNAL if self.abi >= 6 else 0)
        size = ctypes.sizeof(attr) if self.abi >= 6 else 8
        fd = _syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
        try:
            for path, access in self.rules(tmp):
                _add_rule(int(fd), path, access & rights)
        except BaseException:
            os.close(fd)
            raise
        return int(fd)


RULESET_TTL_S = 10.0  # a kept ruleset is planned again after this long
SPARE_TMP_MAX = 16  # emptied temporary folders kept per ruleset for the next attempts


class Spawner:
    """A thread that confines itself once (``restrict_self``) and then runs the
    calls handed to it, one at a time, while the caller waits: the shells it
    starts with ``vfork`` begin confined. One per kept ruleset (``Rulesets.call``),
    so a fan-out's attempts do not each start and confine a thread."""

    def __init__(self, ruleset_fd: int) -> None:
        self.calls: queue.SimpleQueue[tuple[Callable[[], Any], dict[str, Any], Any] | None]
        self.calls = queue.SimpleQueue()
        confined = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(ruleset_fd, confined), name="llmo-spawn", daemon=True
        )
        self.thread.start()
        confined.wait()  # the fd is used before the caller may close it

    def _run(self, ruleset_fd: int, confined: threading.Event) -> None:
        try:
            restrict_self(ruleset_fd)
        except BaseException as exc:  # each call gets it: nothing runs unconfined
            self.error = exc
        confined.set()
        while (item := self.calls.get()) is not None:
            call, box, done = item
            try:
                if self.error is not None:
                    raise self.error
                box["value"] = call()
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc
            done.release()

    def call(self, call: Callable[[], T]) -> T:
        done = threading.Lock()
        done.acquire()
        box: dict[str, Any] = {}
        self.calls.put((call, box, done))
        done.acquire()
        if "error" in box:
            raise box["error"]
        return cast(T, box["value"])

    def stop(self) -> None:
        self.calls.put(None)


@dataclass(slots=True)
class Kept:
    at: float  # when it was planned
    fd: int
    root: str
    spawner: Spawner | None = None  # made at the first call

    def release(self) -> None:
        """End its thread and close its ruleset."""
        if self.spawner is not None:
            self.spawner.stop()
        if self.fd >= 0:
            os.close(self.fd)


@dataclass(slots=True)
class Rulesets:
    """Rulesets by confinement, each with the folder its attempts' temporary
    folders go in, kept ``RULESET_TTL_S`` so that a fan-out's attempts share one.

    Planning a ruleset reads the folders around the secret paths and opens
    every path it allows: done per attempt, it cost more than starting the
    shell. A kept ruleset grants write access beneath one folder made for it
    (0700, in the system's temporary folder), and each attempt gets its own
    private folder inside. Attempts under the same confinement may write the
    same plan and batch folders anyway, so that folder gives them nothing new
    of each other. After ``RULESET_TTL_S`` it is planned again, so a folder
    that appears later is seen; a folder no attempt used for that long is
    removed once it is empty, and all of them when the worker stops.

    An attempt's temporary folder (``tmp_in``) is new, or one an earlier
    attempt left empty (``recycle``: still a 0700 folder of the worker's, with
    nothing in it) renamed to a fresh random name: a rename costs a tenth of
    making and removing a folder. The path the earlier attempt knew then leads
    nowhere, so a process of it that outlived it cannot drop a file into the
    next one's ``TMPDIR`` by name.

    Each kept ruleset has its ``Spawner``: ``call`` runs a shell's start on
    that thread, confined once for all the ruleset's attempts; it ends when
    the ruleset is dropped."""

    clock: Callable[[], float]
    kept: dict[Confinement, Kept] = field(default_factory=dict)
    lingering: list[str] = field(default_factory=list)  # dropped folders, not yet empty
    spare: dict[str, list[str]] = field(default_factory=dict)  # root -> emptied folders

    def get(self, confine: Confinement) -> tuple[int, str]:
        """The ruleset fd (the caller must not close it) and the folder for the
        attempts' temporary folders under ``confine``; raises ``OSError``."""
        now = self.clock()
        kept = self.kept.get(confine)
        if kept is not None and now - kept.at < RULESET_TTL_S and os.path.isdir(kept.root):
            return kept.fd, kept.root
        self._drop_stale(now)
        root = tempfile.mkdtemp(prefix="llmo-tasks-")
        try:
            fd = confine.ruleset(root)
        except BaseException:
            os.rmdir(root)
            raise
        old = self.kept.pop(confine, None)
        if old is not None:
            self._discard(old)
        self.kept[confine] = Kept(now, fd, root)
        return fd, root

    def tmp_in(self, root: str) -> str:
        """A private temporary folder under a kept ``root``; raises ``OSError``."""
        spares = self.spare.get(root)
        while spares:
            old = spares.pop()
            new = os.path.join(root, f"llmo-task-{secrets.token_hex(8)}")
            try:
                os.rename(old, new)
            except OSError:
                continue
            return new
        return tempfile.mkdtemp(prefix="llmo-task-", dir=root)

    def recycle(self, tmp: str) -> bool:
        """Keep an attempt's temporary folder for a later attempt, when it is as it was
        made and empty; False: the caller removes it."""
        root = os.path.dirname(tmp)
        spares = self.spare.get(root)
        if spares is None:
            if not any(k.root == root for k in self.kept.values()):
                return False
            spares = self.spare[root] = []
        if len(spares) >= SPARE_TMP_MAX:
            return False
        try:
            st = os.lstat(tmp)
            if (
                not stat.S_ISDIR(st.st_mode)
                or stat.S_IMODE(st.st_mode) != 0o700
                or st.st_uid != os.geteuid()
                or os.listdir(tmp)
            ):
                return False
        except OSError:
            return False
        spares.append(tmp)
        return True

    def call(self, ruleset_fd: int, call: Callable[[], T]) -> T:
        """``call()`` confined by ``ruleset_fd``: on its kept ruleset's ``Spawner``, or
        on a thread of its own (``confined_call``) for a ruleset not kept here."""
        kept = next((k for k in self.kept.values() if k.fd == ruleset_fd), None)
        if kept is None or ruleset_fd < 0:
            return confined_call(ruleset_fd, call)
        if kept.spawner is None:
            kept.spawner = Spawner(ruleset_fd)
        return kept.spawner.call(call)

    def _drop_stale(self, now: float) -> None:
        for confine, kept in list(self.kept.items()):
            if now - kept.at >= RULESET_TTL_S:
                del self.kept[confine]
                self._discard(kept)
        for root in list(self.lingering):
            with contextlib.suppress(OSError):
                os.rmdir(root)
            if not os.path.isdir(root):
                self.lingering.remove(root)

    def _discard(self, kept: Kept) -> None:
        """Close a ruleset and end its thread; its folder goes when empty (an attempt
        may still use it)."""
        kept.release()
        for spare in self.spare.pop(kept.root, ()):
            with contextlib.suppress(OSError):
                os.rmdir(spare)
        try:
            os.rmdir(kept.root)
        except FileNotFoundError:
            pass
        except OSError:
            self.lingering.append(kept.root)

    def close(self) -> None:
        """On the worker's exit, once its attempts are reaped."""
        for kept in self.kept.values():
            kept.release()
            self.lingering.append(kept.root)
        self.kept.clear()
        self.spare.clear()
        for root in self.lingering:
            shutil.rmtree(root, ignore_errors=True)
        self.lingering.clear()


def _add_rule(ruleset_fd: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # gone since the rules were planned: nothing to allow
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISBLK(mode):
            return
        if not stat.S_ISDIR(mode):
            access &= FILE_RIGHTS
        if not access:
            return
        attr = _PathBeneath(access, fd)
        if _syscall(SYS_ADD_RULE, ruleset_fd, RULE_PATH_BENEATH, ctypes.byref(attr), 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_add_rule {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def confined_call(ruleset_fd: int, call: Callable[[], T]) -> T:
    """``call()`` on a new thread that first confines itself (``restrict_self``).

    ``no_new_privs`` and a Landlock domain belong to the thread that sets them
    and pass to the processes it starts, so a shell started here with
    ``vfork`` (no ``preexec_fn``) begins confined, while the worker's own
    threads keep their freedom. The thread (a ``Spawner`` for one call) ends
    with the call."""
    spawner = Spawner(ruleset_fd)
    try:
        return spawner.call(call)
    finally:
        spawner.stop()


def preexec(ruleset_fd: int, then: Callable[[], None] | None = None) -> Callable[[], None]:
    """A ``preexec_fn``: ``then`` (the resource limits), then ``restrict_self``."""

    def apply() -> None:
        if then is not None:
            then()
        restrict_self(ruleset_fd)

    return apply
