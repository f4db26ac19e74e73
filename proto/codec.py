"""Encoding and defensive decoding of messages.

Theory of operation
-------------------
``encode`` turns a message dataclass into one msgpack map. ``decode`` is the
inverse and the protocol's gate: it caps the size, unpacks, checks the
envelope, looks the type up and validates every declared field against the
annotations in ``proto.messages``. Whatever is wrong, it raises exactly one
exception type, ``ProtocolError``, with a code from ``ErrorCode``; no other
exception escapes it, so a loop that catches ``ProtocolError`` cannot be
killed by bad input.

Validators are compiled once per class at import time from the annotations,
so decoding a heartbeat is a handful of ``isinstance`` checks.
``decode_envelope`` checks only the envelope; the broker uses it to route
bytes without reading (or re-encoding) the body.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack

from llmo.proto.errors import ErrorCode, ProtocolError
from llmo.proto.messages import MESSAGE_CLASSES, PROTOCOL_VERSION, Message, MsgType

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest message ``decode`` accepts; the broker's MAXMSGSIZE is above it so
a slightly oversize message still gets an error reply."""

MAX_NAME_LEN = 128

Check = Callable[[Any], Any]  # value -> normalised value, or raises _Bad


class _Bad(Exception):
    """A value did not match its annotation; ``path`` grows as it unwinds."""

    def __init__(self, expected: str, value: Any) -> None:
        self.expected = expected
        self.value = value
        self.path: list[str] = []

    def error(self, where: str) -> ProtocolError:
        shown = repr(self.value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        place = where + "".join(reversed(self.path))
        return ProtocolError(ErrorCode.BAD_FIELD, f"{place}: expected {self.expected}, got {shown}")


def _check_str(value: Any) -> Any:
    if type(value) is not str:
        raise _Bad("a string", value)
    return value


def _check_int(value: Any) -> Any:
    if type(value) is not int:
        raise _Bad("an integer", value)
    return value


def _check_float(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        return float(value)
    raise _Bad("a number", value)


def _check_bool(value: Any) -> Any:
    if type(value) is not bool:
        raise _Bad("true or false", value)
    return value


def _check_any(value: Any) -> Any:
    return value


_SCALARS: dict[Any, Check] = {
    str: _check_str,
    int: _check_int,
    float: _check_float,
    bool: _check_bool,
    Any: _check_any,
}


def _compile(annotation: Any) -> Check:
    """Build a checker for one annotation of ``proto.messages``."""
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        allowed = frozenset(args)
        shown = "one of " + ", ".join(repr(a) for a in args)

        def check_literal(value: Any) -> Any:
            if type(value) is not str or value not in allowed:
                raise _Bad(shown, value)
            return value

        return check_literal
    if isinstance(annotation, type) and issubclass(annotation, enum.StrEnum):
        members = {member.value: member for member in annotation}
        named = f"one of the {annotation.__name__} values"

        def check_enum(value: Any) -> Any:
            if type(value) is not str or value not in members:
                raise _Bad(named, value)
            return members[value]

        return check_enum
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1 or len(args) != 2:
            raise TypeError(f"unsupported union {annotation!r}")
        check_inner = _compile(inner[0])

        def check_optional(value: Any) -> Any:
            return None if value is None else check_inner(value)

        return check_optional
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"unsupported tuple {annotation!r}")
        check_item = _compile(args[0])

        def check_tuple(value: Any) -> Any:
            if type(value) not in (list, tuple):
                raise _Bad("an array", value)
            out = []
            for i, item in enumerate(value):
                try:
                    out.append(check_item(item))
                except (_Bad, _Missing) as bad:
                    bad.path.append(f"[{i}]")
                    raise
            return tuple(out)

        return check_tuple
    if origin is dict:
        if args[0] is not str:
            raise TypeError(f"unsupported map key in {annotation!r}")
        check_value = _compile(args[1])

        def check_dict(value: Any) -> Any:
            if type(value) is not dict:
                raise _Bad("a map", value)
            for key in value:
                if type(key) is not str:
                    raise _Bad("a map with string keys", key)
            if check_value is _check_any:
                return value
            out = {}
            for key, item in value.items():
                try:
                    out[key] = check_value(item)
                except (_Bad, _Missing) as bad:
                    bad.path.append(f".{key}")
                    raise
            return out

        return check_dict
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        build = _record_builder(annotation)

        def check_record(value: Any) -> Any:
            if type(value) is not dict:
                raise _Bad("a map", value)
            return build(value)

        return check_record
    raise TypeError(f"unsupported annotation {annotation!r}")


def _record_builder(cls: type) -> Callable[[dict[str, Any]], Any]:
    """A function from a wire map to an instance of ``cls``, checking every field.

    Raises ``_Bad`` for an ill-typed field and ``_Missing`` for a missing one.
    """
    hints = typing.get_type_hints(cls)
    specs = [
        (
            f.name,
            _compile(hints[f.name]),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
    ]

    def build(data: dict[str, Any]) -> Any:
        kwargs = {}
        for name, check, required in specs:
            if name in data:
                try:
                    kwargs[name] = check(data[name])
                except (_Bad, _Missing) as bad:
                    bad.path.append(f".{name}")
                    raise
            elif required:
                raise _Missing(name)
        return cls(**kwargs)

    return build


class _Missing(Exception):
    """A required field is absent; ``path`` says in which nested record."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path: list[str] = []

    def error(self, where: str) -> ProtocolError:
        place = where + "".join(reversed(self.path))
        return ProtocolError(ErrorCode.MISSING_FIELD, f"{place}: missing field {self.name!r}")


K = TypeVar("K")
V = TypeVar("V")


class _OnFirstUse(dict[K, V]):
    """``make(key)`` on a key's first lookup, kept: a tool that starts, sends a
    message or two and exits builds the codec's functions for those only (all
    of them cost a short-lived command about 20 ms)."""

    def __init__(self, make: Callable[[K], V]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: K) -> V:
        value = self[key] = self.make(key)
        return value


_BUILDERS: _OnFirstUse[MsgType, Callable[[dict[str, Any]], Message]] = _OnFirstUse(
    lambda msg_type: _record_builder(MESSAGE_CLASSES[msg_type])
)


# --- encode -------------------------------------------------------------------------


_RECORD_FIELDS: dict[type, tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    kind = type(value)
    names = _RECORD_FIELDS.get(kind)
    if names is None and dataclasses.is_dataclass(kind):
        names = _RECORD_FIELDS[kind] = tuple(f.name for f in dataclasses.fields(kind))
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if kind is tuple or kind is list:
        return [_plain(v) for v in value]
    return value


def _needs_plain(annotation: Any) -> bool:
    """True where a field can hold a dataclass, which msgpack cannot pack itself."""
    if dataclasses.is_dataclass(annotation):
        return True
    return any(_needs_plain(arg) for arg in typing.get_args(annotation))


def _encoder_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, _needs_plain(hints[f.name])) for f in dataclasses.fields(cls))


_ENCODER_FIELDS: _OnFirstUse[type, tuple[tuple[str, bool], ...]] = _OnFirstUse(_encoder_fields)


def to_dict(msg: Message) -> dict[str, Any]:
    """The wire map of ``msg`` (envelope and fields), as plain Python values."""
    out: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": msg.TYPE.value}
    for name, nested in _ENCODER_FIELDS[type(msg)]:
        value = getattr(msg, name)
        out[name] = _plain(value) if nested and value is not None else value
    return out


def _record_map(value: Any) -> dict[str, Any]:
    """msgpack's hook for what it cannot pack itself: a nested record, as its map."""
    kind = type(value)
    names = _RECORD_FIELDS.get(kind)
    if names is None:
        if not dataclasses.is_dataclass(kind):
            raise TypeError(f"cannot encode a {kind.__name__}")
        names = _RECORD_FIELDS[kind] = tuple(f.name for f in dataclasses.fields(kind))
    return {name: getattr(value, name) for name in names}


def encode(msg: Message) -> bytes:
    """One msgpack map for one ZeroMQ frame.

    Nested records are left to msgpack, which hands each to ``_record_map``
    as it meets it: a snapshot of 20,000 tasks is packed without a Python
    walk over every field value.
    """
    out: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": msg.TYPE.value}
    for name, _nested in _ENCODER_FIELDS[type(msg)]:
        out[name] = getattr(msg, name)
    data: bytes = msgpack.packb(out, use_bin_type=True, default=_record_map)
    return data


# --- decode ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """The routing part of a message, read without validating the body."""

    type: MsgType
    id: str
    src: str
    dst: str
    ts: float


def _unpack(data: bytes) -> dict[str, Any]:
    if type(data) is not bytes:
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        else:
            raise ProtocolError(ErrorCode.MALFORMED, f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"{len(data)} bytes is over the limit of {MAX_MESSAGE_BYTES}"
        )
    if not data:
        raise ProtocolError(ErrorCode.EMPTY_FRAME, "empty frame")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types, and RecursionError
        raise ProtocolError(ErrorCode.MALFORMED, f"not a msgpack value: {exc}") from None
    if type(obj) is not dict:
        raise ProtocolError(ErrorCode.NOT_A_MAP, f"expected a map, got {type(obj).__name__}")
    return obj


_TYPES = {t.value: t for t in MsgType}


def _envelope(obj: dict[str, Any]) -> Envelope:
    version = obj.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise ProtocolError(
            ErrorCode.BAD_VERSION,
            f"protocol version {version!r}, this peer speaks {PROTOCOL_VERSION}",
        )
    raw_type = obj.get("type")
    if type(raw_type) is not str:
        raise ProtocolError(ErrorCode.MISSING_FIELD, "missing or non-string 'type'")
    try:
        msg_type = MsgType(raw_type)
    except ValueError:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown message type {raw_type[:60]!r}"
        ) from None
    for key in ("id", "src", "dst"):
        value = obj.get(key)
        if value is None:
            raise ProtocolError(ErrorCode.MISSING_FIELD, f"{raw_type}: missing field {key!r}")
        if type(value) is not str or len(value) > MAX_NAME_LEN:
            bad = _Bad(f"a string of at most {MAX_NAME_LEN} characters", value)
            raise bad.error(f"{raw_type}.{key}")
    ts = obj.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        if ts is None:
            raise ProtocolError(ErrorCode.MISSING_FIELD, f"{raw_type}: missing field 'ts'")
        raise _Bad("a number", ts).error(f"{raw_type}.ts")
    return Envelope(type=msg_type, id=obj["id"], src=obj["src"], dst=obj["dst"], ts=float(ts))


def decode_envelope(data: bytes) -> Envelope:
    """Read and check only the envelope. Raises ``ProtocolError`` only."""
    return _envelope(_unpack(data))


def decode(data: bytes) -> Message:
    """Bytes from the wire to a message. Raises ``ProtocolError`` and nothing else."""
    obj = _unpack(data)
    envelope = _envelope(obj)
    where = envelope.type.value
    try:
        return _BUILDERS[envelope.type](obj)
    except _Bad as bad:
        raise bad.error(where) from None
    except _Missing as missing:
        raise missing.error(where) from None
    except Exception as exc:  # a bug in a checker must not kill a loop either
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{envelope.type.value}: {exc}") from None
