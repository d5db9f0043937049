"""HTTP/1.1 chunked framing, written one way by every client and server of the harness."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["chunk", "last_chunk"]


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; nothing for empty data (a chunk of size 0 would end the
    body there)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def last_chunk(trailers: Iterable[tuple[str, str]] = ()) -> bytes:
    """The end of a chunked body, with its trailers."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in trailers)
    return b"0\r\n" + lines.encode("latin-1") + b"\r\n"
