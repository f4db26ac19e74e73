"""The command policy: the shell tasks a worker refuses before they start, and why.

Theory of operation
-------------------
``check(command, plan_path, batch_path, policy)`` runs before an attempt is
spawned and returns why it is refused, as ``"<rule>: <detail>"``, or
``None``. It is an early, explained refusal of the obvious cases; what
holds whatever a command does is the kernel: every task runs under a
Landlock ruleset and ``no_new_privs`` (``worker.landlock``), which allows
writes only beneath the plan roots, the batch folder and a private
temporary folder, and no reads of the secret paths. The rule is the name
of the ``[policy]`` key that refused it:

- ``plan_roots``: the plan folder, the batch folder or the log file lies
  outside every allowed plan root (after ``..`` and symbolic links are
  resolved), or the command ``cd``s out of them by a literal path.
- ``refused_patterns``: the command text, or the same text with its quotes
  and backslashes removed (so ``s\\udo`` and ``"sudo"`` are ``sudo``),
  matches one of the regexes (privilege escalation, setuid bits, disks by
  their device paths, formatting, cron and system configuration).
- ``protected_paths``: the command writes, by a literal path, to a
  protected or secret path (the config file, the keys and rig folders,
  ``~/.ssh``, the llmo installation): a redirection into one, or a writing
  program (``rm``, ``mv``, ``cp``, ``tee``, ``dd``, ``sed -i`` ...) in the
  same simple command as a path inside one, or above one (``rm -rf /``);
  inline interpreter code (``python -c``, ``awk``) that names one; or a
  plan or batch folder inside one. Paths are resolved against the batch
  folder, following ``cd`` and ``$BATCH_PATH`` / ``$PLAN_PATH`` / ``$HOME``
  / ``~``, ``..`` and symbolic links that exist. ``sh -c '...'``,
  ``$(...)`` and other quoted code are read the same way. A path built at
  run time (``D=...; echo > $D/x``, base64, a script file) is not seen here:
  that is the kernel's to stop.
- ``command_size``: a command over the kernel's limit for one argument
  (128 KiB) cannot be given to ``/bin/sh``; it is refused up front, as is
  (``unusable_text``) a command or path holding a NUL byte or a lone
  surrogate, which no system call takes.

The rules themselves (``Policy``, read from ``[policy]``) are in
``worker.rules``; the per-class resource limits in ``worker.rlimits``; the
shell reading (``shlex``) in ``worker.shellwords``.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from collections.abc import Iterable, Mapping

from llmo.worker.rules import Policy
from llmo.worker.shellwords import (
    CODE_CHARS,
    GLOB_CHARS,
    IN_PLACE,
    IN_PLACE_EDITORS,
    INTERPRETERS,
    VARIABLE,
    WRITE_PROGRAMS,
    inline_code,
    simple_commands,
    words,
    written,
)

MAX_COMMAND_BYTES = 128 * 1024  # MAX_ARG_STRLEN: execve refuses a longer argument
MAX_DEPTH = 4  # nested code (sh -c '...', $(...)) read this deep


def check(
    command: str,
    plan_path: str,
    batch_path: str,
    policy: Policy,
    *,
    log_path: str = "",
    env: Mapping[str, str] | None = None,
) -> str | None:
    """Why the policy refuses this shell task (``"<rule>: <detail>"``), or None.

    ``env`` is the task's environment, for the variables a command may use
    in its paths. Relative paths are resolved against ``batch_path`` (the
    task's working folder).
    """
    for what, text in (
        ("command", command),
        ("plan folder", plan_path),
        ("batch folder", batch_path),
        ("log file", log_path),
    ):
        if not _usable(text):
            return (
                f"unusable_text: the {what} holds a NUL byte or text that is not "
                "valid Unicode, which cannot be given to /bin/sh or the file system"
            )
    size = len(command.encode("utf-8", "surrogateescape"))
    if size >= MAX_COMMAND_BYTES:
        return (
            f"command_size: the command is {size} bytes; /bin/sh takes at most "
            f"{MAX_COMMAND_BYTES - 1} (put a long script in a file and run that)"
        )
    if policy.plan_roots:
        for what, path in (("plan folder", plan_path), ("batch folder", batch_path)):
            if not path:
                return f"plan_roots: the task has no {what}, and the policy allows only plan roots"
        for what, path in (
            ("plan folder", plan_path),
            ("batch folder", batch_path),
            ("log file", log_path),
        ):
            if path and not within_roots(path, policy.plan_roots):
                return (
                    f"plan_roots: the {what} {path} is outside the plan roots "
                    f"({', '.join(policy.plan_roots)})"
                )
    unquoted = " ".join(words(command))
    for pattern in policy.refused_patterns:
        if _compiled(pattern).search(command) or _compiled(pattern).search(unquoted):
            return f"refused_patterns: the command matches the refused pattern {pattern!r}"
    guarded = _guarded(policy)
    for what, path in (
        ("log file", log_path),
        ("plan folder", plan_path),
        ("batch folder", batch_path),
    ):
        hit = path and guarded and _inside(_resolved(path, batch_path or os.getcwd()), guarded)
        if hit and not (what != "log file" and within_roots(path, policy.plan_roots)):
            return f"protected_paths: the {what} {path} is in the protected path {hit}"
    if not guarded and not policy.plan_roots:
        return None
    variables = dict(env or {})
    variables.setdefault("BATCH_PATH", batch_path)
    variables.setdefault("PLAN_PATH", plan_path)
    cwd = os.path.normpath(batch_path) if os.path.isabs(batch_path) else None
    return _Reader(policy, variables).read(command, cwd, 0)


def writable(path: str, policy: Policy) -> bool:
    """Whether the worker may write a task's log at ``path`` under this policy."""
    if not _usable(path):
        return False
    if policy.plan_roots and not within_roots(path, policy.plan_roots):
        return False
    return not _overlap(_resolved(path, os.getcwd()), _guarded(policy))


def within_roots(path: str, roots: Iterable[str]) -> bool:
    """``path`` is one of ``roots`` or inside one, with ``..`` and symbolic links resolved."""
    real = resolve(path)
    for root in roots:
        for form in {os.path.normpath(root), _real(root)}:
            if real == form or real.startswith(form.rstrip("/") + "/"):
                return True
    return False


def _guarded(policy: Policy) -> tuple[str, ...]:
    """The paths a command may not write: the protected and the secret ones."""
    return tuple(dict.fromkeys((*policy.protected_paths, *policy.secret_paths)))


def _inside(forms: Iterable[str], guarded: Iterable[str]) -> str:
    """The guarded path one of ``forms`` is or lies in; "" if none."""
    for form in forms:
        for path in guarded:
            for target in {path, _real(path)}:
                if form == target or form.startswith(target.rstrip("/") + "/"):
                    return path
    return ""


def _usable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        os.fsencode(text)
    except UnicodeError:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@functools.lru_cache(maxsize=256)
def _real(path: str) -> str:
    return resolve(path)


def resolve(path: str) -> str:
    """``os.path.realpath(path)``, asked of the kernel when the path exists: one
    ``open(O_PATH)`` and one ``readlink`` of its ``/proc/self/fd`` entry instead of
    an ``lstat`` per component. A path that does not open (missing, a dangling or
    looping link, a file taken as a folder, not searchable) or whose name the
    kernel cannot give as an absolute path goes to ``os.path.realpath``."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (OSError, ValueError):
        return os.path.realpath(path)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)
    finally:
        os.close(fd)
    if not real.startswith("/") or real.endswith(" (deleted)"):
        return os.path.realpath(path)
    return real


def _resolved(path: str, cwd: str) -> tuple[str, ...]:
    """``path`` from ``cwd``, normalised, and with its existing symbolic links followed."""
    joined = os.path.normpath(os.path.join(cwd, path))
    real = resolve(joined)
    return (joined,) if real == joined else (joined, real)


def _overlap(forms: Iterable[str], protected: Iterable[str]) -> str:
    """The protected path that one of ``forms`` is, lies in, or lies above; "" if none."""
    for form in forms:
        for path in protected:
            for target in {path, _real(path)}:
                if form == target or form.startswith(target.rstrip("/") + "/"):
                    return path
                if target.startswith(form.rstrip("/") + "/"):
                    return path
    return ""


def _glob_overlap(pattern: str, protected: Iterable[str]) -> str:
    """The protected path a glob could name, inside or above; compared part by part."""
    parts = [p for p in pattern.split("/") if p]
    for path in protected:
        theirs = [p for p in path.split("/") if p]
        n = min(len(parts), len(theirs))
        if all(fnmatch.fnmatchcase(theirs[i], parts[i]) for i in range(n)):
            return path
    return ""


class _Reader:
    """Reads one command (and the code nested in it) for writes the policy forbids."""

    def __init__(self, policy: Policy, variables: dict[str, str]) -> None:
        self.policy = policy
        self.variables = variables
        self.guarded = _guarded(policy)

    def expand(self, word: str, cwd: str | None) -> str:
        def var(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(2)
            if name == "PWD" and cwd is not None:
                return cwd
            return self.variables.get(name, m.group())

        if "$" in word:
            word = VARIABLE.sub(var, word)
        if word.startswith("~") and (len(word) == 1 or word[1] == "/"):
            home = self.variables.get("HOME")
            if home:
                word = home + word[1:]
        return word

    def mentions(self, word: str, cwd: str | None) -> str:
        """The protected path ``word`` names (for ``x=y`` words, ``y`` too); "" if none."""
        protected = self.guarded
        candidates = [word] if not word.startswith("-") else []
        candidates += word.split("=")[1:]
        for candidate in candidates:
            if not candidate or "$" in candidate or "`" in candidate:
                continue  # built at run time: beyond what a pattern check can know
            if not os.path.isabs(candidate) and cwd is None:
                continue
            path = os.path.normpath(os.path.join(cwd or "/", candidate))
            if GLOB_CHARS & set(candidate):
                hit = _glob_overlap(path, protected)
            else:
                hit = _overlap(_resolved(path, "/"), protected)
            if hit:
                return hit
        return ""

    def read(self, text: str, cwd: str | None, depth: int) -> str | None:
        policy = self.policy
        for raw_words, raw_targets in simple_commands(text):
            words = [self.expand(w, cwd) for w in raw_words]
            targets = [self.expand(t, cwd) for t in raw_targets]
            for target in targets:
                hit = self.mentions(target, cwd)
                if hit:
                    return f"protected_paths: a redirection writes to {target}, in {hit}"
            if words and words[0] in ("cd", "pushd"):
                cwd = self.change_dir(words[1:], cwd)
                if (
                    cwd is not None
                    and policy.plan_roots
                    and not within_roots(cwd, policy.plan_roots)
                ):
                    return (
                        f"plan_roots: `{words[0]} {cwd}` leaves the plan roots "
                        f"({', '.join(policy.plan_roots)})"
                    )
                continue
            why = self.writes(words, cwd)
            if why:
                return why
            if depth < MAX_DEPTH:
                for word in raw_words:
                    if CODE_CHARS & set(word):
                        inner = self.read(word, cwd, depth + 1)
                        if inner:
                            return inner
        return None

    def change_dir(self, args: list[str], cwd: str | None) -> str | None:
        target = next((a for a in args if not a.startswith("-")), "")
        if not target or "$" in target or "`" in target or GLOB_CHARS & set(target):
            return None  # home, the previous folder, or built at run time: unknown from here
        if not os.path.isabs(target) and cwd is None:
            return None
        return os.path.normpath(os.path.join(cwd or "/", target))

    def writes(self, words: list[str], cwd: str | None) -> str:
        if not self.guarded:
            return ""
        programs = [os.path.basename(w) for w in words]
        for i, program in enumerate(programs):
            rest = words[i + 1 :]
            if program in WRITE_PROGRAMS:
                writer = program
            elif program in IN_PLACE_EDITORS and any(IN_PLACE.match(w) for w in rest):
                writer = f"{program} -i"
            elif program == "find" and "-delete" in rest:
                writer = "find -delete"
            else:
                continue
            for word in written(program, rest):
                hit = self.mentions(word, cwd)
                if hit:
                    return f"protected_paths: `{writer}` would write to {word}, in {hit}"
        for i, program in enumerate(programs):
            if INTERPRETERS.match(program):
                for code in inline_code(program, words[i + 1 :]):
                    for path in self.guarded:
                        if path in code:
                            return (
                                f"protected_paths: inline {program} code names the "
                                f"protected path {path}"
                            )
        return ""
