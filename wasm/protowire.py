"""Just enough of protobuf's wire format to read ``declare_property``'s arguments, a message
Envoy defines outside its API (so no generated class exists for it), as protobuf reads it:
the last value of a field wins, a field with another wire type than the schema's is kept
aside as unknown, and bytes that are not a message are refused."""

from __future__ import annotations

from collections.abc import Mapping

VARINT, LENGTH_DELIMITED = 0, 2
Field = int | bytes
"""A varint's value, or the bytes of a length-delimited or fixed-size field."""


def message(data: bytes, schema: Mapping[int, int]) -> dict[int, Field] | None:
    """Field number -> value for the fields of ``schema`` (number -> wire type) found in
    ``data``; None when ``data`` is not a message."""
    found: dict[int, Field] = {}
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        if key < 0 or key >> 3 == 0:
            return None
        wire = key & 7
        value: Field
        if wire == VARINT:
            value, at = _varint(data, at)
            if value < 0:
                return None
        elif wire == LENGTH_DELIMITED:
            size, at = _varint(data, at)
            if size < 0 or at + size > len(data):
                return None
            value, at = data[at:at + size], at + size
        elif wire in (1, 5):  # fixed64, fixed32
            size = 8 if wire == 1 else 4
            if at + size > len(data):
                return None
            value, at = data[at:at + size], at + size
        else:
            return None
        if schema.get(key >> 3) == wire:
            found[key >> 3] = value
    return found


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at ``at`` and where it ends; -1 when it runs off the end or past 64 bits
    (ten bytes)."""
    value = 0
    for index in range(10):
        if at + index >= len(data):
            return -1, at
        byte = data[at + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return (value, at + index + 1) if value < 1 << 64 else (-1, at)
    return -1, at
