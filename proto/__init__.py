"""The llmo wire protocol: message types, codec, endpoints, client helper."""

from proto import messages as _messages
from proto.codec import MAX_MESSAGE_BYTES, Envelope, decode, decode_envelope, encode, to_dict
from proto.errors import ErrorCode, ProtocolError
from proto.messages import *  # noqa: F403  (the message classes are the public API)

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
