"""Reading ``/bin/sh`` text as words, for the command policy's early refusals.

Theory of operation
-------------------
``simple_commands(text)`` splits shell text into simple commands, each as
its words and its redirection targets, with quotes and backslashes removed
(``shlex`` in POSIX mode, operators split off by ``punctuation_chars``).
It is a reader, not a shell: it knows separators (``;``, ``&``, ``|``,
newlines, parentheses, backquotes, ``$(``), redirection operators and
quoting, and nothing of expansion. Quoted code stays one word, so a caller
that wants to look inside ``sh -c '...'`` or ``"$(...)"`` reads such a word
again (``CODE_CHARS`` says which words may hold code). An unclosed quote
runs to the end of the text; ``#`` is read as text, never as a comment.

What a program does with its arguments is listed here too: the programs
that write the paths they are given (``WRITE_PROGRAMS``), which of their
arguments they write (``written``), and the interpreters whose inline code
may name any path. These lists cover the obvious cases only: the kernel
rules (``worker.landlock``) are what holds.
"""

from __future__ import annotations

import itertools
import re
import shlex

WRITE_PROGRAMS = frozenset(
    {"rm", "rmdir", "unlink", "mv", "cp", "ln", "link", "install", "tee", "dd", "truncate"}
    | {"shred", "touch", "mkdir", "mkfifo", "mknod", "chmod", "chown", "chgrp", "chattr"}
    | {"setfacl", "rsync", "tar", "unzip", "cpio", "patch", "sponge", "split", "csplit"}
)
IN_PLACE_EDITORS = frozenset({"sed", "perl", "ruby"})
INTERPRETERS = re.compile(r"^(python[0-9.]*|perl|ruby|node|nodejs|php|awk|gawk|mawk|nawk|lua)$")
DESTINATION_ONLY = frozenset({"cp", "install", "rsync"})  # ln: a link into one is a way in
IN_PLACE = re.compile(r"^(-[a-zA-Z]*i|--in-place)")
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
CODE_CHARS = frozenset(" \t\n;&|<>()`$")
GLOB_CHARS = frozenset("*?[")
_OPERATOR = re.compile(r"&&|\|\||;;|\|&|&>>|&>|>>|>\||>&|<>|<<<|<<-|<<|<&|[<>;&|()\n]")


def words(text: str) -> list[str]:
    """The tokens of ``text``: words unquoted, each run of operator characters as is."""
    text = text.replace("`", " ; ").replace("$(", " ; (")
    for close in ("", '"', "'"):  # an unclosed quote runs to the end
        lexer = shlex.shlex(text + close, posix=True, punctuation_chars=";&|()<>\n")
        lexer.whitespace = " \t\r"
        lexer.whitespace_split = True
        lexer.commenters = ""
        try:
            return list(lexer)
        except ValueError:
            continue
    return text.split()


def simple_commands(text: str) -> list[tuple[list[str], list[str]]]:
    """Split shell text into simple commands: (words, redirection targets) for each."""
    out: list[tuple[list[str], list[str]]] = []
    current: list[str] = []
    targets: list[str] = []
    pending = ""  # the redirection operator waiting for its target
    for token in words(text):
        operators = _OPERATOR.findall(token) if token and set(token) <= set(";&|()<>\n") else []
        if not operators:
            if pending:
                op, pending = pending, ""
                if ">" in op and not (op.endswith("&") and (token.isdigit() or token == "-")):
                    targets.append(token)
                    continue
            current.append(token)
            continue
        for op in operators:
            if "<" in op or ">" in op:
                pending = op
                continue
            if current or targets:
                out.append((current, targets))
            current, targets, pending = [], [], ""
    if current or targets:
        out.append((current, targets))
    return out


def written(program: str, args: list[str]) -> list[str]:
    """The arguments of a writing program that it may write: for copies only the
    destination (the last operand, or ``-t DIR``), for ``dd`` its ``of=``, else all."""
    if program == "dd":
        return [a for a in args if a.startswith("of=")]
    if program not in DESTINATION_ONLY:
        return args
    out = [a for a in args if a.startswith("--target-directory=")]
    out += [v for f, v in itertools.pairwise(args) if f in ("-t", "--target-directory")]
    operands = [a for a in args if not a.startswith("-")]
    return out + operands[-1:]


def inline_code(program: str, args: list[str]) -> list[str]:
    """The program text given on the command line: ``python -c CODE``, ``perl -e CODE``,
    an awk program (for awk, every operand: the program and its files)."""
    if "awk" in program:
        return [a for a in args if not a.startswith("-")]
    return [
        value
        for flag, value in itertools.pairwise(args)
        if (flag[:1] == "-" and flag[1:2] != "-" and flag[-1:] in "ceEr") or flag == "--eval"
    ]
