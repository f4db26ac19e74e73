"""Searching a task's log on the log screen: which lines hold a term, and their highlight.

A search is case-blind plain text (no patterns: an operator types what the
log says). ``SearchLog`` is Textual's ``Log`` with the term highlighted in
every line it draws; the log screen keeps the matching line numbers and
scrolls from one to the next.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rich.highlighter import Highlighter
from rich.text import Text
from textual.widgets import Log

MATCH_STYLE = "black on yellow"


def matching_lines(lines: Sequence[str], term: str) -> list[int]:
    """The indexes of the lines that hold ``term``, any case; none for an empty term."""
    term = term.lower()
    if not term:
        return []
    return [i for i, line in enumerate(lines) if term in line.lower()]


class TermHighlighter(Highlighter):
    def __init__(self) -> None:
        self.pattern: re.Pattern[str] | None = None

    def highlight(self, text: Text) -> None:
        if self.pattern is not None:
            text.highlight_regex(self.pattern, MATCH_STYLE)


class SearchLog(Log):
    """A ``Log`` that highlights a search term."""

    def __init__(self, *, max_lines: int | None = None, id: str | None = None) -> None:
        super().__init__(highlight=True, max_lines=max_lines, id=id)
        self.term_highlighter = TermHighlighter()
        self.highlighter = self.term_highlighter

    def set_term(self, term: str) -> None:
        pattern = re.compile(re.escape(term), re.IGNORECASE) if term else None
        self.term_highlighter.pattern = pattern
        self._render_line_cache.clear()
        self.refresh()
