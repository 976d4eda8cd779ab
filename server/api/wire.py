"""Protocol buffers' wire format, for answers cnnserve serializes without building their message.

Building a response message field by field can cost the event loop more than the rest of a call's own work: for
ModelInfer's usual answer it was about 33 µs a call in a live front-end (docs/benchmarks.md, "Less work per
call"). Such an answer is written as bytes instead: parts serialized once by protobuf itself and kept, with the
per-call fields appended. A parser reads a concatenation of serialized messages as their merge, and fields in any
order, so every client reads the message the server would have built; each such answer has a test that parses it
and compares it with that message. Two answers are written so: ModelInfer's usual one
(server/api/inference_tensors.py) and Classify's (server/api/classifier.py).
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor

VARINT = 0
LENGTH_DELIMITED = 2
FIXED32 = 5


def varint(value: int) -> bytes:
    """`value` (>= 0) as a base-128 varint: seven bits a byte, low first, the high bit set on every byte but the
    last."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_ONE_BYTE = [bytes((value,)) for value in range(0x80)]
"""The varints of 0..127, one byte each: the length of most fields an answer writes."""


def key(message: Descriptor, field: str, wire_type: int) -> bytes:
    """The key that starts `field` of `message` on the wire: its number and wire type, as one varint."""
    return varint(message.fields_by_name[field].number << 3 | wire_type)


def length_delimited(field_key: bytes, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes, a message or a packed repeated field) holding `payload`."""
    return field_key + varint(len(payload)) + payload
