"""Protocol errors: one exception type, one enum of named codes.

Every problem found while reading bytes off the wire becomes a
``ProtocolError`` whose ``code`` names the kind of problem. The codes are
also what an ``Error`` message carries back to the sender, so the mapping
from problem to code lives here and nowhere else.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Named error codes, carried by ``ProtocolError`` and by ``Error`` messages."""

    # Problems with the bytes themselves (raised by ``decode``).
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"  # not msgpack, or trailing garbage
    NOT_A_MAP = "not_a_map"
    BAD_VERSION = "bad_version"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    # Problems with framing or routing (found by the broker).
    EMPTY_FRAME = "empty_frame"
    BAD_FRAMES = "bad_frames"
    SPOOFED_SOURCE = "spoofed_source"
    UNKNOWN_DESTINATION = "unknown_destination"
    DESTINATION_BUSY = "destination_busy"
    NAME_IN_USE = "name_in_use"  # another live connection holds the name
    FORBIDDEN = "forbidden"  # the sender's role may not send this type (or to that actor)
    # Problems an actor reports about a well-formed message it cannot act on.
    UNEXPECTED = "unexpected"
    REFUSED = "refused"
    DISK_FULL = "disk_full"  # the brain cannot write its journal: nothing was changed
    INTERNAL = "internal"  # the receiver failed on a well-formed request (a bug)


class ProtocolError(Exception):
    """A message could not be read or routed. ``code`` says why, ``detail`` says where."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail
