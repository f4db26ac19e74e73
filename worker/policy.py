"""The command policy: which shell tasks a worker refuses to start, and their limits.

Theory of operation
-------------------
``check(command, plan_path, batch_path, policy)`` runs before an attempt is
spawned and returns why it is refused, as ``"<rule>: <detail>"``, or
``None``. The rule is the name of the ``[policy]`` key that refused it:

- ``plan_roots``: the plan folder, the batch folder or the log file lies
  outside every allowed plan root (after ``..`` and symbolic links are
  resolved), or the command ``cd``s out of them. No roots: any folder.
- ``refused_patterns``: the command text matches one of the regexes
  (privilege escalation, setuid bits, formatting or overwriting disks).
- ``protected_paths``: the command would write to a protected path (the
  config file, the keys folder, the llmo installation): a redirection
  (``>``, ``>>``, ``&>`` ...) into one, or a writing program (``rm``,
  ``mv``, ``cp``, ``tee``, ``dd``, ``sed -i`` ...) in the same simple command
  as a path inside one, or above one (``rm -rf /etc``). Paths are resolved
  against the batch folder, following ``cd`` and ``$BATCH_PATH`` /
  ``$PLAN_PATH`` / ``$HOME`` / ``~``, ``..`` and symbolic links that exist;
  a glob is compared with each protected path component by component.
  ``sh -c '...'``, ``$(...)`` and other quoted code are read the same way,
  and inline interpreter code (``python -c``, ``perl -e``, ``awk``) that
  names a protected path at all is refused.
- ``command_size``: a command over the kernel's limit for one argument
  (128 KiB) cannot be given to ``/bin/sh``; it is refused up front, as is
  (``unusable_text``) a command or path holding a NUL byte or a lone
  surrogate, which no system call takes.

These checks are a guard rail against mistakes and careless plans, not a
sandbox: a command can build a path at run time (``$(echo L2V0Yw== | base64
-d)``), call a program the list does not know, or run a script file that
does anything its user may do. The containment is the systemd unit's
``ProtectSystem=strict`` with ``ReadWritePaths`` limited to the rig and plan
folders, ``NoNewPrivileges``, and the dedicated user the worker runs as.

``Rlimits`` per task class are applied in the child between fork and exec
(``preexec_fn``; only ``setrlimit`` calls, computed beforehand): CPU time
(SIGXCPU at the limit, SIGKILL ``CPU_GRACE_S`` later), address space and
open files. A limit above the worker's own hard limit is lowered to it.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import os
import re
import resource
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_COMMAND_BYTES = 128 * 1024  # MAX_ARG_STRLEN: execve refuses a longer argument
CPU_GRACE_S = 2  # SIGXCPU at cpu_s, SIGKILL this much CPU time later
MAX_DEPTH = 4  # nested code (sh -c '...', $(...)) read this deep

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

# Programs that write to or remove the paths they are given.
WRITE_PROGRAMS = frozenset(
    {
        "rm",
        "rmdir",
        "unlink",
        "mv",
        "cp",
        "ln",
        "link",
        "install",
        "tee",
        "dd",
        "truncate",
        "shred",
        "touch",
        "mkdir",
        "mkfifo",
        "mknod",
        "chmod",
        "chown",
        "chgrp",
        "chattr",
        "setfacl",
        "rsync",
        "tar",
        "unzip",
        "cpio",
        "patch",
        "sponge",
        "split",
        "csplit",
    }
)
IN_PLACE_EDITORS = frozenset({"sed", "perl", "ruby"})
INTERPRETERS = re.compile(r"^(python[0-9.]*|perl|ruby|node|nodejs|php|awk|gawk|mawk|nawk|lua)$")
RLIMIT_CLASSES = ("script", "llm", "cpu", "brain", "default")

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r]+)
  | (?P<sep>\n|&&|\|\||;;|\|&|[;&|()`])
  | (?P<redir>\d*(?:&>>|&>|>>|>\||>&|<>|>)|\d*<(?:<<|<-|<&|<)?)
  | (?P<word>(?:[^\s;&|()<>`'"\\]|\\.|\\$|'[^']*(?:'|$)|"(?:[^"\\]|\\.)*(?:"|$))+)
    """,
    re.X | re.S,
)
_QUOTED = re.compile(r"""'([^']*)'?|"((?:[^"\\]|\\.)*)"?|\\(.)|\\$""", re.S)
_DQ_ESCAPE = re.compile(r"\\([\\$`\"\n])")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_CODE_CHARS = frozenset(" \t\n;&|<>()`$")
_GLOB_CHARS = frozenset("*?[")
_IN_PLACE = re.compile(r"^(-[a-zA-Z]*i|--in-place)")


class PolicyError(ValueError):
    """A ``[policy]`` table with problems; ``problems`` lists each, naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


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


def preexec(settings: tuple[tuple[int, int, int], ...]) -> Callable[[], None] | None:
    """A ``preexec_fn`` that applies ``settings`` in the child, or None when there are none."""
    if not settings:
        return None

    def apply() -> None:
        for res, soft, hard in settings:
            resource.setrlimit(res, (soft, hard))

    return apply


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
                name: {k: getattr(lim, k) for k in ("cpu_s", "address_space_mb", "open_files")}
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
        known = ("plan_roots", "protected_paths", "refused_patterns", "rlimits")
        for key in data:
            if key not in known:
                problems.append(f"[policy] unknown key {key!r} (known: {', '.join(known)})")
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
        rlimits = _rlimits(data.get("rlimits", {}), problems)
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


def _rlimits(table: Any, problems: list[str]) -> dict[str, Rlimits]:
    if not isinstance(table, dict):
        problems.append(f"[policy] rlimits: expected a table of task classes, got {table!r}")
        return {}
    out = {}
    keys = ("cpu_s", "address_space_mb", "open_files")
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
            if key not in keys:
                problems.append(f"{where} unknown key {key!r} (known: {', '.join(keys)})")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{where} {key}: expected a whole number >= 0, got {value!r}")
            else:
                values[key] = value
        out[name] = Rlimits(**values)
    return out


# --- the check ---------------------------------------------------------------------------


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
    for pattern in policy.refused_patterns:
        if _compiled(pattern).search(command):
            return f"refused_patterns: the command matches the refused pattern {pattern!r}"
    if log_path and policy.protected_paths:
        hit = _overlap(_resolved(log_path, batch_path or os.getcwd()), policy.protected_paths)
        if hit:
            return f"protected_paths: the log file {log_path} is in the protected path {hit}"
    if not policy.protected_paths and not policy.plan_roots:
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
    return not _overlap(_resolved(path, os.getcwd()), policy.protected_paths)


def within_roots(path: str, roots: Iterable[str]) -> bool:
    """``path`` is one of ``roots`` or inside one, with ``..`` and symbolic links resolved."""
    real = os.path.realpath(path)
    for root in roots:
        for form in {os.path.normpath(root), _real(root)}:
            if real == form or real.startswith(form.rstrip("/") + "/"):
                return True
    return False


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
    return os.path.realpath(path)


def _resolved(path: str, cwd: str) -> tuple[str, ...]:
    """``path`` from ``cwd``, normalised, and with its existing symbolic links followed."""
    joined = os.path.normpath(os.path.join(cwd, path))
    real = os.path.realpath(joined)
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


def _unquote(word: str) -> str:
    def piece(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return m.group(1)
        if m.group(2) is not None:
            return _DQ_ESCAPE.sub(r"\1", m.group(2))
        return m.group(3) or ""

    return _QUOTED.sub(piece, word)


def _simple_commands(text: str) -> list[tuple[list[str], list[str]]]:
    """Split shell text into simple commands: (words, redirection targets) for each."""
    out: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    targets: list[str] = []
    expect_target = ""
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "space":
            continue
        if kind == "sep":
            if words or targets:
                out.append((words, targets))
            words, targets, expect_target = [], [], ""
        elif kind == "redir":
            expect_target = m.group()
        elif kind == "word":
            word = _unquote(m.group())
            if expect_target:
                op, expect_target = expect_target, ""
                if ">" in op and not (op.endswith("&") and (word.isdigit() or word == "-")):
                    targets.append(word)
                    continue
            words.append(word)
    if words or targets:
        out.append((words, targets))
    return out


class _Reader:
    """Reads one command (and the code nested in it) for writes the policy forbids."""

    def __init__(self, policy: Policy, variables: dict[str, str]) -> None:
        self.policy = policy
        self.variables = variables

    def expand(self, word: str, cwd: str | None) -> str:
        def var(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(2)
            if name == "PWD" and cwd is not None:
                return cwd
            return self.variables.get(name, m.group())

        if "$" in word:
            word = _VARIABLE.sub(var, word)
        if word.startswith("~") and (len(word) == 1 or word[1] == "/"):
            home = self.variables.get("HOME")
            if home:
                word = home + word[1:]
        return word

    def mentions(self, word: str, cwd: str | None) -> str:
        """The protected path ``word`` names (for ``x=y`` words, ``y`` too); "" if none."""
        protected = self.policy.protected_paths
        candidates = [word] if not word.startswith("-") else []
        candidates += word.split("=")[1:]
        for candidate in candidates:
            if not candidate or "$" in candidate or "`" in candidate:
                continue  # built at run time: beyond what a pattern check can know
            if not os.path.isabs(candidate) and cwd is None:
                continue
            path = os.path.normpath(os.path.join(cwd or "/", candidate))
            if _GLOB_CHARS & set(candidate):
                hit = _glob_overlap(path, protected)
            else:
                hit = _overlap(_resolved(path, "/"), protected)
            if hit:
                return hit
        return ""

    def read(self, text: str, cwd: str | None, depth: int) -> str | None:
        policy = self.policy
        for raw_words, raw_targets in _simple_commands(text):
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
                    if _CODE_CHARS & set(word):
                        why = self.read(word, cwd, depth + 1)
                        if why:
                            return why
        return None

    def change_dir(self, args: list[str], cwd: str | None) -> str | None:
        target = next((a for a in args if not a.startswith("-")), "")
        if not target or "$" in target or "`" in target or _GLOB_CHARS & set(target):
            return None  # home, the previous folder, or built at run time: unknown from here
        if not os.path.isabs(target) and cwd is None:
            return None
        return os.path.normpath(os.path.join(cwd or "/", target))

    def writes(self, words: list[str], cwd: str | None) -> str:
        if not self.policy.protected_paths:
            return ""
        programs = [os.path.basename(w) for w in words]
        for i, program in enumerate(programs):
            rest = words[i + 1 :]
            if program in WRITE_PROGRAMS:
                writer = program
            elif program in IN_PLACE_EDITORS and any(_IN_PLACE.match(w) for w in rest):
                writer = f"{program} -i"
            elif program == "find" and "-delete" in rest:
                writer = "find -delete"
            else:
                continue
            for word in _written(program, rest):
                hit = self.mentions(word, cwd)
                if hit:
                    return f"protected_paths: `{writer}` would write to {word}, in {hit}"
        for i, program in enumerate(programs):
            if INTERPRETERS.match(program):
                for code in _inline_code(program, words[i + 1 :]):
                    for path in self.policy.protected_paths:
                        if path in code:
                            return (
                                f"protected_paths: inline {program} code names the "
                                f"protected path {path}"
                            )
        return ""


DESTINATION_ONLY = frozenset({"cp", "install", "rsync"})  # ln: a link into one is a way in


def _written(program: str, args: list[str]) -> list[str]:
    """The arguments of a writing program that it may write: for copies only the
    destination (the last operand, or ``-t DIR``), for ``dd`` its ``of=``, else all."""
    if program == "dd":
        return [a for a in args if a.startswith("of=")]
    if program not in DESTINATION_ONLY:
        return args
    out = [a for a in args if a.startswith("--target-directory=")]
    for flag, value in itertools.pairwise(args):
        if flag in ("-t", "--target-directory"):
            out.append(value)
    operands = [a for a in args if not a.startswith("-")]
    if operands:
        out.append(operands[-1])
    return out


def _inline_code(program: str, args: list[str]) -> list[str]:
    """The program text given on the command line: ``python -c CODE``, ``perl -e CODE``,
    an awk program (for awk, every operand: the program and its files)."""
    if "awk" in program:
        return [a for a in args if not a.startswith("-")]
    code = []
    for flag, value in itertools.pairwise(args):
        short = flag.startswith("-") and not flag.startswith("--")
        if (short and flag[-1:] in ("c", "e", "E", "r")) or flag == "--eval":
            code.append(value)
    return code
