"""Reading field values: code spans, lists, whole numbers, enums, durations.

Each reader takes the text of one field as written and returns the value or
raises ``ValueError`` with a sentence that says what was expected; the
validator turns that sentence into a located ``Problem``.
"""

from __future__ import annotations

import re
from difflib import get_close_matches
from typing import TypeVar

from llmo.plans.markdown import RawField

Word = TypeVar("Word", bound=str)  # one of a field's allowed words (often a Literal)

_WHOLE = re.compile(r"\+?\d+")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)[ \t]*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)?")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
_BACKTICKS = re.compile(r"`+")


def plain(value: str) -> str:
    """A scalar value with surrounding backticks or quotes removed."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "`\"'":
        value = value[1:-1].strip()
    return value


def values_of(raw: RawField) -> list[str]:
    """A list field: comma-separated values, plus indented sub-bullets."""
    out: list[str] = []
    for text in (raw.value, *raw.extra):
        for part in text.split(","):
            part = plain(part)
            if part:
                out.append(part)
    return out


def code_span(value: str) -> tuple[str, str, bool]:
    """``(code, trailing text, was_in_backticks)`` for a command field.

    As in CommonMark, a run of N backticks opens the span and the next run of
    exactly N closes it, so a command that holds a backtick can be written
    between double backticks. Text that does not start with a backtick is
    taken as written.
    """
    value = value.strip()
    if not value.startswith("`"):
        return value, "", False
    if not value.strip("`"):
        return "", "", True
    opening = len(value) - len(value.lstrip("`"))
    for run in _BACKTICKS.finditer(value, opening):
        if len(run.group()) == opening:
            code = value[opening : run.start()]
            if code.startswith(" ") and code.endswith(" ") and code.strip():
                code = code[1:-1]
            return code, value[run.end() :].strip(), True
    raise ValueError("the command's opening backtick is never closed")


def whole_number(value: str, name: str, minimum: int) -> int:
    text = plain(value)
    if not _WHOLE.fullmatch(text) or int(text) < minimum:
        raise ValueError(f"{name} must be a whole number of at least {minimum}, not '{text}'")
    return int(text)


def duration_seconds(value: str, name: str) -> float:
    text = plain(value).lower()
    match = _DURATION.fullmatch(text)
    seconds = 0.0
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s")[0]]
    if seconds <= 0:
        raise ValueError(
            f"{name} must be a positive number of seconds (e.g. 600, 90s, 10m), not '{text}'"
        )
    return seconds


def choice(value: str, name: str, allowed: tuple[Word, ...]) -> Word:
    """The one of ``allowed`` that ``value`` names (any case); ValueError if none."""
    text = plain(value)
    for option in allowed:
        if option == text.lower():
            return option
    options = " or ".join(", ".join(allowed).rsplit(", ", 1))
    hint = suggest(text.lower(), allowed)
    shown = f"'{text}'" if text else "empty"
    raise ValueError(f"{name} must be {options}, not {shown}{hint}")


def suggest(word: str, known: tuple[str, ...] | list[str]) -> str:
    """`` (did you mean 'x'?)`` when a known word is close, else ``""``."""
    close = get_close_matches(word, list(known), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""
