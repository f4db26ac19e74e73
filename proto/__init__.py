"""The llmo wire protocol: message types, codec, endpoints, client helper."""

from llmo.proto import messages as _messages
from llmo.proto.codec import MAX_MESSAGE_BYTES, Envelope, decode, decode_envelope, encode, to_dict
from llmo.proto.errors import ErrorCode, ProtocolError
from llmo.proto.messages import *  # noqa: F403  (the message classes are the public API)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Envelope",
    "ErrorCode",
    "ProtocolError",
    "decode",
    "decode_envelope",
    "encode",
    "to_dict",
    *(name for name in vars(_messages) if not name.startswith("_") and name[0].isupper()),
]
