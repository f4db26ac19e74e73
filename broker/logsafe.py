"""Broker log lines stay one line each, whatever a peer puts in a name.

Names, identities, message ids and addresses reach the broker's log from the
wire. A newline or a terminal control sequence in one of them must not start a
line that looks like the broker's own (``CurveZMQ key of 'brain' accepted``).
``shown`` escapes one value for a message text; ``EscapeControls`` is a
logging filter on the broker's loggers that escapes every control character
of every record's final text, so a line built without ``shown`` is safe too.
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    return ascii(match.group())[1:-1]  # \n, \x1b, \u2028, ...


def escape_controls(text: str) -> str:
    return _CONTROL.sub(_escape, text)


def shown(value: str | bytes, limit: int = 80) -> str:
    """``value`` quoted and escaped for a log line; bytes that are not text as hex."""
    if isinstance(value, bytes):
        if value[:1] == b"\x00":  # a routing identity the ROUTER made
            return value.hex()
        value = value.decode("utf-8", "replace")
    if len(value) > limit:
        value = value[:limit] + "..."
    return repr(value)


class EscapeControls(logging.Filter):
    """Escape control characters in the record's text (the arguments merged in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if _CONTROL.search(text):
            record.msg = escape_controls(text)
            record.args = None
        return True


def install(*names: str) -> None:
    """Put the filter on each named logger once."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, EscapeControls) for f in logger.filters):
            logger.addFilter(EscapeControls())
