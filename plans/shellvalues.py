"""Commands with their values as data: placeholders become quoted variable expansions.

Theory of operation
-------------------
A value from a manifest item, the submission's configuration or a goal can
hold anything (manifests are often written by a model or a scraper), so it is
never pasted into the shell text of a command. ``ShellCommand`` turns each
such placeholder into an expansion of an environment variable and returns the
values separately, for the task's environment (``TaskAssign.env``):

    python3 x.py {ITEM.id} --out out_{ITEM.id}.json --who "{WHO}"
    python3 x.py "${LLMO_ITEM_ID}" --out out_"${LLMO_ITEM_ID}".json --who "${LLMO_VAR_WHO}"
    LLMO_ITEM_ID=<the item's id>  LLMO_VAR_WHO=<the configured value>

The shell expands a variable once and never reads its value as code, so
``$(...)``, backticks, quotes and newlines in a value are inert, and a quoted
expansion stays one word. The form of the expansion depends on where the
placeholder stands, which a small reader of the command's quoting finds:

- bare (also inside ``$(...)``, backticks and ``${...}``): ``"${NAME}"``;
- inside double quotes: ``${NAME}``;
- inside single quotes: the quote is closed, the quoted expansion inserted
  and the quote reopened, ``'...'"${NAME}"'...'``: the program receives the
  same argument text as if the value had been pasted in, but the shell does
  not run it. (A program that is handed that text as code, ``sh -c '...'``
  or ``python -c '...'``, receives the value as code: such a command should
  pass the value as an argument instead, ``sh -c 'echo "$1"' sh {ITEM.id}``.)
- inside ``$(( ))`` arithmetic: ``${NAME}``, and the value must be an integer
  (bash evaluates ``a[$(cmd)]`` in arithmetic), else ``PlanError``.

The built-ins ``{PLAN_PATH}``, ``{BATCH_PATH}`` and ``{BATCH_ID}`` are the
run's own paths (also in the task's environment as ``$PLAN_PATH``, ...) and
stay written out, so commands remain readable. A value meant as several
arguments can be split on purpose by writing the variable unquoted:
``$LLMO_VAR_EXTRA_ARGS``.

Names: ``{ITEM}`` is ``LLMO_ITEM``; ``{ITEM.<path>}`` is ``LLMO_ITEM_<PATH>``;
a configuration key is ``LLMO_VAR_<KEY>``; letters are uppercased and other
characters become ``_``. Two placeholders of one command that give the same
name are told apart by ``_2``, ``_3``, ... in the order they first appear.
Values are formatted as in ``plans.variables.format_value`` (strings as they
are, others as compact JSON); a value holding a NUL character cannot be put
in an environment and is refused with ``PlanError``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from llmo.plans.model import BUILTIN_VARIABLES, PlanError
from llmo.plans.variables import (
    _MISSING,
    _item_value,
    _missing_message,
    format_value,
    is_item_name,
    split_template,
)

BARE, DOUBLE, SINGLE, ARITH = "bare", "double", "single", "arith"
_NOT_NAME = re.compile(r"[^A-Z0-9_]")
_INTEGER = re.compile(r"\s*[-+]?[0-9]+\s*")
# Characters after which a ``#`` starts a comment (a word start).
_WORD_BREAK = frozenset(" \t\n;&|()<>")


def env_name(placeholder: str) -> str:
    """The environment variable a placeholder's value travels in (before collisions)."""
    if is_item_name(placeholder):
        rest = placeholder[len("ITEM") :].replace(".", "_")
        return "LLMO_ITEM" + _NOT_NAME.sub("_", rest.upper())
    return "LLMO_VAR_" + _NOT_NAME.sub("_", placeholder.upper())


def quoting(literals: Sequence[str]) -> list[str]:
    """The quoting at each gap between ``literals`` (where the placeholders stand).

    One of ``BARE``, ``DOUBLE``, ``SINGLE``, ``ARITH``; a gap right after an
    escaping backslash is reported as ``"escaped-"`` plus the quoting.
    """
    stack = ["top"]  # top, paren, cmd ($(...)), arith, param (${...}), bq, dq, sq, comment
    contexts: list[str] = []
    prev = " "
    for n, text in enumerate(literals):
        i = 0
        escaped = False
        while i < len(text):
            c = text[i]
            top = stack[-1]
            if top == "sq":
                if c == "'":
                    stack.pop()
            elif top == "comment":
                if c == "\n":
                    stack.pop()
            elif c == "\\":
                if i + 1 == len(text):
                    escaped = True
                i += 1
            elif top == "dq":
                if c == '"':
                    stack.pop()
                elif c == "`":
                    stack.append("bq")
                elif c == "$":
                    i += _open_expansion(text, i, stack)
            else:
                if c == "'":
                    stack.append("sq")
                elif c == '"':
                    stack.append("dq")
                elif c == "`":
                    if top == "bq":
                        stack.pop()
                    else:
                        stack.append("bq")
                elif c == "$":
                    i += _open_expansion(text, i, stack)
                elif c == "(":
                    stack.append("paren")
                elif c == ")":
                    if top == "arith" and text.startswith("))", i):
                        stack.pop()
                        i += 1
                    elif top in ("paren", "cmd"):
                        stack.pop()
                elif c == "}" and top == "param":
                    stack.pop()
                elif c == "#" and top != "param" and (prev in _WORD_BREAK):
                    stack.append("comment")
            prev = text[i] if i < len(text) else c
            i += 1
        if n == len(literals) - 1:
            break
        prev = "x"  # a placeholder is a word character
        context = _context(stack)
        contexts.append(f"escaped-{context}" if escaped else context)
    return contexts


def _open_expansion(text: str, i: int, stack: list[str]) -> int:
    """At the ``$`` of ``text[i]``: push the expansion it opens, if any; the
    characters beyond the ``$`` that the opening takes."""
    if text.startswith("$((", i):
        stack.append("arith")
        return 2
    if text.startswith("$(", i):
        stack.append("cmd")
        return 1
    if text.startswith("${", i):
        stack.append("param")
        return 1
    return 0


def _context(stack: list[str]) -> str:
    top = stack[-1]
    if top == "sq":
        return SINGLE
    if top == "dq":
        return DOUBLE
    if top == "arith":
        return ARITH
    if top == "param" and len(stack) > 1 and stack[-2] == "dq":
        return DOUBLE
    if top == "bq" and len(stack) > 1 and stack[-2] == "dq":
        return DOUBLE  # double quotes inside backquotes inside double quotes are not portable
    return BARE


def expansion(name: str, context: str) -> str:
    """The shell text that expands variable ``name`` as one word in ``context``."""
    prefix = ""
    if context.startswith("escaped-"):
        prefix = "\n"  # the backslash before the placeholder becomes a line continuation
        context = context[len("escaped-") :]
    if context in (DOUBLE, ARITH):
        return prefix + "${" + name + "}"
    if context == SINGLE:
        return prefix + "'\"${" + name + "}\"'"
    return prefix + '"${' + name + '}"'


class ShellCommand:
    """A command template whose values go to the environment, not into the text.

    ``command`` is the text to run (built-ins written out, every other
    placeholder an expansion); ``names`` maps each such placeholder to its
    variable; ``env(item)`` gives the values for one item (``PlanError`` for an
    undefined placeholder, a NUL character, or a non-integer in arithmetic).
    The work that does not depend on the item is done once, so a template
    expanded over 100,000 items is read once.
    """

    __slots__ = ("_arith", "_fixed", "_item", "_missing", "command", "names")

    def __init__(self, text: str, variables: Mapping[str, object]) -> None:
        literals, placeholders = split_template(text) if "{" in text else ((text,), ())
        contexts = quoting(literals) if placeholders else []
        self.names: dict[str, str] = {}
        taken: set[str] = set()
        parts = [literals[0]]
        self._fixed: dict[str, str] = {}
        self._item: list[tuple[str, tuple[str, ...]]] = []
        self._missing: list[str] = []
        self._arith: set[str] = set()
        for name, context, literal in zip(placeholders, contexts, literals[1:], strict=True):
            if name in BUILTIN_VARIABLES and name in variables:
                parts.append(format_value(variables[name]))
                parts.append(literal)
                continue
            var = self.names.get(name)
            if var is None:
                var = base = env_name(name)
                count = 1
                while var in taken:
                    count += 1
                    var = f"{base}_{count}"
                taken.add(var)
                self.names[name] = var
                if is_item_name(name):
                    self._item.append((name, tuple(name.split(".")[1:])))
                elif name in variables:
                    self._fixed[var] = format_value(variables[name])
                else:
                    self._missing.append(name)
            if context.endswith(ARITH):
                self._arith.add(name)
            parts.append(expansion(var, context))
            parts.append(literal)
        self.command = "".join(parts)
        for name, var in self.names.items():
            if var in self._fixed:
                self._check(name, self._fixed[var])

    @property
    def item_vars(self) -> tuple[str, ...]:
        """The variables that hold the item's values (they differ between items)."""
        return tuple(self.names[name] for name, _ in self._item)

    def env(self, item: object | None = None) -> dict[str, str]:
        """The variables the command needs, for ``item`` (``None`` outside a foreach)."""
        if self._missing:
            raise PlanError(_missing_message(self.missing(item), item))
        if not self._item:
            return dict(self._fixed)
        env = dict(self._fixed)
        names = self.names
        for name, path in self._item:
            if item is None:
                value: object = _MISSING
            elif len(path) == 1 and type(item) is dict:
                value = item.get(path[0], _MISSING)
            else:
                value = _item_value(path, item)
            if value is _MISSING:
                raise PlanError(_missing_message(self.missing(item), item))
            text = value if isinstance(value, str) else format_value(value)
            if "\x00" in text or name in self._arith:
                self._check(name, text)
            env[names[name]] = text
        return env

    def missing(self, item: object | None) -> list[str]:
        """The placeholders left undefined for ``item``, in order."""
        return self._missing + [
            name for name, path in self._item if item is None or _item_value(path, item) is _MISSING
        ]

    def _check(self, name: str, text: str) -> None:
        if "\x00" in text:
            raise PlanError(
                f"the value of {{{name}}} contains a NUL character, which no process can "
                "receive in its environment"
            )
        if name in self._arith and not _INTEGER.fullmatch(text):
            raise PlanError(
                f"{{{name}}} is used in shell arithmetic $(( )), so its value must be an "
                f"integer, not {text[:80]!r}"
            )


def batch_env_name(index: int, name: str) -> str:
    """The variable of item ``index`` (1-based) of a batch: ``LLMO_B2_ITEM_ID``."""
    return f"LLMO_B{index}_{name[len('LLMO_') :]}"


def batch_item(index: int, command: str, item_vars: Sequence[str]) -> str:
    """Item ``index``'s command in a batch: its values exported under the usual names first."""
    exports = "".join(f'export {var}="${{{batch_env_name(index, var)}}}"; ' for var in item_vars)
    return exports + command
