"""Reading ``/bin/sh`` text as words, for the command policy.

Theory of operation
-------------------
``simple_commands(text)`` splits shell text into simple commands, each as
its words and its redirection targets, with quotes removed. It is a reader,
not a shell: it knows separators (``;``, ``&&``, ``||``, ``|``, newlines,
parentheses, backquotes), redirection operators and quoting (``'...'``,
``"..."``, backslashes), and nothing of expansion. Quoted code stays one
word, so a caller that wants to look inside ``sh -c '...'`` or ``$(...)``
reads such a word again (``CODE_CHARS`` says which words may hold code).
An unclosed quote runs to the end of the text.

What a program does with its arguments is listed here too: the programs
that write the paths they are given (``WRITE_PROGRAMS``), which of their
arguments they write (``written``), in-place editors, and the interpreters
whose inline code (``inline_code``) may name any path.
"""

from __future__ import annotations

import itertools
import re

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
DESTINATION_ONLY = frozenset({"cp", "install", "rsync"})  # ln: a link into one is a way in
IN_PLACE = re.compile(r"^(-[a-zA-Z]*i|--in-place)")
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
CODE_CHARS = frozenset(" \t\n;&|<>()`$")
GLOB_CHARS = frozenset("*?[")

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


def unquote(word: str) -> str:
    """A word with its quotes and backslashes removed, as the shell would pass it."""

    def piece(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return m.group(1)
        if m.group(2) is not None:
            return _DQ_ESCAPE.sub(r"\1", m.group(2))
        return m.group(3) or ""

    return _QUOTED.sub(piece, word)


def simple_commands(text: str) -> list[tuple[list[str], list[str]]]:
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
            word = unquote(m.group())
            if expect_target:
                op, expect_target = expect_target, ""
                if ">" in op and not (op.endswith("&") and (word.isdigit() or word == "-")):
                    targets.append(word)
                    continue
            words.append(word)
    if words or targets:
        out.append((words, targets))
    return out


def written(program: str, args: list[str]) -> list[str]:
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


def inline_code(program: str, args: list[str]) -> list[str]:
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
