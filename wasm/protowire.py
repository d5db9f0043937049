"""Just enough of protobuf's wire format to read the small messages filters hand the host
(a ``GrpcService``, ``declare_property``'s arguments) without their generated classes."""

from __future__ import annotations

Field = int | bytes
"""A varint's value, or the bytes of a length-delimited or fixed-size field."""


def fields(data: bytes) -> list[tuple[int, Field]] | None:
    """``(number, value)`` of each field in order; None when ``data`` is not a message."""
    found: list[tuple[int, Field]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        if key < 0 or key >> 3 == 0:
            return None
        wire = key & 7
        value: Field
        if wire == 0:
            value, at = _varint(data, at)
            if value < 0:
                return None
        elif wire == 2:
            size, at = _varint(data, at)
            if size < 0 or at + size > len(data):
                return None
            value, at = data[at:at + size], at + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if at + size > len(data):
                return None
            value, at = data[at:at + size], at + size
        else:
            return None
        found.append((key >> 3, value))
    return found


def first(data: bytes, number: int) -> Field | None:
    """Field ``number``'s first value; None when absent or ``data`` is not a message."""
    parsed = fields(data)
    return next((v for n, v in parsed if n == number), None) if parsed is not None else None


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    return -1, at
