"""Hypothesis strategies for every message type, derived from its annotations."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

from hypothesis import strategies as st

from llmo.proto.messages import MESSAGE_CLASSES, Message

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=20)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def for_annotation(annotation: Any) -> st.SearchStrategy[Any]:
    if annotation is str:
        return st.text(max_size=40)
    if annotation is int:
        return st.integers(-(2**63), 2**63 - 1)
    if annotation is float:
        return st.floats(allow_nan=False)
    if annotation is bool:
        return st.booleans()
    if annotation is Any:
        return json_values
    if isinstance(annotation, type) and issubclass(annotation, enum.StrEnum):
        return st.sampled_from(list(annotation))
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        return st.none() | for_annotation(inner)
    if origin is tuple:
        return st.lists(for_annotation(args[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=10), for_annotation(args[1]), max_size=3)
    if dataclasses.is_dataclass(annotation):
        return record(annotation)
    raise TypeError(annotation)


def record(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: for_annotation(hints[f.name]) for f in dataclasses.fields(cls)}
    if issubclass(cls, Message):
        fields.update(src=names, dst=names, id=names, ts=st.floats(0, 2e9))
    return st.builds(cls, **fields)


messages: st.SearchStrategy[Message] = st.one_of(*(record(c) for c in MESSAGE_CLASSES.values()))
