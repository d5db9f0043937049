"""``Body``: one body chunk (streamed modes) or the whole body (buffered modes)."""

from __future__ import annotations


class Body:
    """A request or response body as Envoy sent it.

    ``data`` is the chunk (STREAMED, FULL_DUPLEX_STREAMED) or the whole body (BUFFERED,
    BUFFERED_PARTIAL); assigning it replaces what Envoy forwards. In FULL_DUPLEX_STREAMED
    mode what is assigned is what is emitted now: emit less to hold bytes back for the
    next chunk, more to flush held bytes; at ``end_of_stream`` everything must be out.
    """

    __slots__ = ("_changed", "_data", "end_of_stream")

    def __init__(self, data: bytes = b"", end_of_stream: bool = False) -> None:
        self._data = data
        self.end_of_stream = end_of_stream
        self._changed = False

    @property
    def data(self) -> bytes:
        return self._data

    @data.setter
    def data(self, value: bytes | bytearray | memoryview) -> None:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"Body.data must be bytes, got {type(value).__name__}; "
                            "encode text first (e.g. text.encode())")
        self._data = bytes(value)
        self._changed = True

    @property
    def changed(self) -> bool:
        """True once ``data`` was assigned."""
        return self._changed

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Body({self._data[:64]!r}{'...' if len(self._data) > 64 else ''}, " \
               f"end_of_stream={self.end_of_stream})"
