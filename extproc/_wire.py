"""Large bodies on the grpcio transport, copied once on the way in and once on the way out.

upb copies a bytes field into the message's arena when it parses, and reading the field makes
a Python bytes copy of that; setting a field copies it into the answer's arena, and
``SerializeToString`` builds the whole message in an encoder buffer before copying that into a
bytes object. For a 30 MiB BUFFERED body that was four copies alive at once (the request's
arena, the answer's, the encoder buffer and the bytes). Here, for bodies of :data:`LARGE`
bytes or more:

- :func:`parse_request` (the grpcio deserializer): a ProcessingRequest whose first field is
  its HttpBody, itself starting with the body (Envoy serialises fields in number order), is
  split: the body is one bytes slice of the input, the rest is parsed by upb without it
  (:class:`BodyRequest`). Anything else is parsed by upb as a whole, as before.
- :func:`splice` (for the message loop's answers): the answer is built as usual, with a one-byte
  placeholder where the body goes, and serialised by upb (a few bytes); the body then replaces
  the placeholder and every enclosing length is rewritten: the bytes upb would have produced
  for the whole message, with the body copied once. :class:`Encoded` carries them to the
  serializer, which hands them to gRPC and lets go.

And what they leave behind: glibc's malloc raises its mmap threshold when a large mapped
block is freed, so later body-sized buffers come from its heaps, which it keeps once they are
free (one to five bodies' worth measured after 30 MiB bodies, bench/EXPERIMENTS.md). Once no
stream with a large body has been in flight for :data:`IDLE` seconds, the free memory goes
back to the system (``malloc_trim``; a few milliseconds for 30 MiB bodies; nothing where the C
library has no such call). Not sooner: memory given back is faulted in again by the next
request, which cost about 10% more CPU per request when every large stream released it.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import Callable
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

#: Bodies from this size on take the paths above. Below it the copies are a small part of a
#: process's memory, and fewer buffers alive made glibc trim and regrow its heap more often:
#: 1 MiB STREAMED chunks took 9% more CPU in wire form (page faults); 64 KiB bodies as much.
LARGE = 4 * 1024 * 1024

#: What the loop sets where a large body goes; non-empty, since a proto3 bytes field without
#: presence (StreamedBodyResponse.body) is not written when empty.
PLACEHOLDER = b"\x00"

#: Seconds without a large-body stream in flight before free memory is given back.
IDLE = 1.0

_parse = pb.ProcessingRequest.FromString
# ProcessingRequest.request_body (4) and .response_body (5), length-delimited.
_BODY_KEYS = {0x22: "request_body", 0x2A: "response_body"}
_BODY_FIELD_KEY = 0x0A  # HttpBody.body (1), length-delimited


class BodyRequest:
    """A ProcessingRequest (``message``, whose HttpBody has no body) and its ``body``.

    The loop takes ``body`` out (and sets it to None): gRPC keeps the deserialised object
    until the next message arrives, which must not keep the body alive.
    """

    __slots__ = ("body", "message")

    def __init__(self, message: Any, body: bytes) -> None:
        self.message = message
        self.body: bytes | None = body


class Encoded:
    """A serialised ProcessingResponse; :meth:`take` hands the bytes over exactly once (gRPC
    holds the yielded object until the next answer, which must not keep the bytes alive)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data: bytes | None = data

    def take(self) -> bytes:
        data = self.data
        if data is None:
            raise RuntimeError("an encoded answer is serialised once")
        self.data = None
        return data


def parse_request(data: bytes) -> Any:
    """A ProcessingRequest from its wire bytes: a :class:`BodyRequest` for a large body in
    Envoy's field order, else the upb message."""
    if len(data) < LARGE or data[0] not in _BODY_KEYS:
        return _parse(data)
    try:
        split = _split(data)
    except (IndexError, ValueError):
        split = None  # malformed: upb says how
    return _parse(data) if split is None else split


def _split(data: bytes) -> BodyRequest | None:
    which = _BODY_KEYS[data[0]]
    length, start = _varint(data, 1)
    end = start + length
    if end > len(data) or length == 0 or data[start] != _BODY_FIELD_KEY:
        return None
    size, body_start = _varint(data, start + 1)
    body_end = body_start + size
    if body_end > end or size < LARGE:
        return None
    tail = data[body_end:end]  # end_of_stream and the other HttpBody fields
    message = _parse(b"".join((data[:1], _varint_bytes(len(tail)), tail, data[end:])))
    # A later occurrence of the field merges into the first (protobuf's rule): when it
    # switches the oneof or carries a body of its own, let upb apply the rule.
    if message.WhichOneof("request") != which or getattr(message, which).body:
        return None
    return BodyRequest(message, data[body_start:body_end])


def splice(encoded: bytes, path: tuple[int, ...], value: bytes) -> bytes:
    """``encoded`` with the content of the length-delimited field at ``path`` (field numbers,
    outermost first: sub-messages down to a bytes field) replaced by ``value``, every
    enclosing length rewritten. Raises ValueError when a field of ``path`` is missing."""
    spans: list[tuple[int, int, int]] = []  # per level: (length at, content start, end)
    start, end = 0, len(encoded)
    for number in path:
        wanted = number << 3 | 2
        pos = start
        while True:
            if pos >= end:
                raise ValueError(f"field {number} of {path} is not in the message")
            key, pos = _varint(encoded, pos)
            if key == wanted:
                length, content = _varint(encoded, pos)
                spans.append((pos, content, content + length))
                start, end = content, content + length
                break
            pos = _skip(encoded, pos, key & 7)
    # New lengths from the innermost out: each level grows by the growth of the one inside
    # plus that of its length's varint.
    growth = len(value) - (spans[-1][2] - spans[-1][1])
    lengths: list[bytes] = []
    for length_at, content, content_end in reversed(spans):
        encoded_length = _varint_bytes(content_end - content + growth)
        growth += len(encoded_length) - (content - length_at)
        lengths.append(encoded_length)
    lengths.reverse()
    parts: list[bytes] = []
    previous = 0
    for (length_at, content, _), encoded_length in zip(spans, lengths, strict=True):
        parts += (encoded[previous:length_at], encoded_length)
        previous = content
    parts += (value, encoded[spans[-1][2]:])
    return b"".join(parts)


def field_path(message: Any, *names: str) -> tuple[int, ...]:
    """The field numbers of ``names``, a path of fields from the message class ``message``
    down (the last one a bytes field): what :func:`splice` takes."""
    numbers = []
    descriptor = message.DESCRIPTOR
    for name in names:
        field = descriptor.fields_by_name[name]
        numbers.append(field.number)
        descriptor = field.message_type
    return tuple(numbers)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); IndexError when cut short."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _varint_bytes(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _skip(data: bytes, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return _varint(data, pos)[1]
    if wire_type == 2:
        length, pos = _varint(data, pos)
        return pos + length
    if wire_type == 1:
        return pos + 8
    if wire_type == 5:
        return pos + 4
    raise ValueError(f"wire type {wire_type} in an answer")


# -- giving memory back ------------------------------------------------------------------------

_lock = threading.Lock()  # servers on event loops of other threads share the allocator
_in_flight = 0  # streams with a large body, not finished
_timer: asyncio.TimerHandle | None = None
_trim: Callable[[int], int] | None = None


def large_body_started() -> None:
    """A stream handles a large body (called once per stream)."""
    global _in_flight
    with _lock:
        _in_flight += 1


def large_body_finished() -> None:
    """A stream that handled a large body is over: once none has been in flight for
    :data:`IDLE` seconds, give the free memory back."""
    global _in_flight, _timer
    with _lock:
        _in_flight -= 1
        if _in_flight:
            return
        if _timer is not None:
            _timer.cancel()
        try:
            _timer = asyncio.get_running_loop().call_later(IDLE, _release_if_idle)
        except RuntimeError:  # a stream finalised outside its loop
            _timer = None


def _release_if_idle() -> None:
    global _timer
    with _lock:
        _timer = None
        if _in_flight:
            return  # the next large stream to finish asks again
    release_memory()


def release_memory() -> None:
    """Return the allocator's free memory to the system (glibc's ``malloc_trim(0)``)."""
    global _trim
    if _trim is None:
        # The process's own symbols (libc among them): no library search, which would run
        # ldconfig in a subprocess on the event loop.
        function = getattr(ctypes.CDLL(None), "malloc_trim", None)
        _trim = function if function is not None else (lambda pad: 0)
    _trim(0)
