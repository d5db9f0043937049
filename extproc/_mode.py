"""Body modes and the processing mode Envoy is asked to use, derived from a Processor class."""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Any

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2

_PM = processing_mode_pb2.ProcessingMode


class BodyMode(enum.Enum):
    """How Envoy sends a body (the ext_proc ``BodySendMode``)."""

    STREAMED = "STREAMED"
    """Each chunk as it arrives; the hook sees one chunk at a time."""
    BUFFERED = "BUFFERED"
    """The whole body once; a body over Envoy's buffer limit fails the request."""
    BUFFERED_PARTIAL = "BUFFERED_PARTIAL"
    """The body up to Envoy's buffer limit, once."""
    FULL_DUPLEX_STREAMED = "FULL_DUPLEX_STREAMED"
    """Chunks both ways, decoupled: emit more or less than received, flush at end of stream."""

    @property
    def proto_value(self) -> int:
        return int(_PM.BodySendMode.Value(self.value))

    @property
    def gateway_name(self) -> str:
        """The Envoy Gateway spelling (``processingMode.*.body``)."""
        return "".join(part.capitalize() for part in self.value.split("_"))

    @classmethod
    def from_proto(cls, value: int) -> BodyMode | None:
        name = _PM.BodySendMode.Name(value)
        return None if name == "NONE" else cls(name)


@dataclass(frozen=True)
class ProcessingMode:
    """Which phases Envoy sends to the processor, and how bodies travel."""

    request_headers: bool = True
    response_headers: bool = True
    request_body: BodyMode | None = None
    response_body: BodyMode | None = None
    request_trailers: bool = False
    response_trailers: bool = False

    def to_proto(self) -> Any:
        """The ``envoy.extensions.filters.http.ext_proc.v3.ProcessingMode`` message."""
        send, skip = _PM.SEND, _PM.SKIP
        return _PM(
            request_header_mode=send if self.request_headers else skip,
            response_header_mode=send if self.response_headers else skip,
            request_body_mode=self.request_body.proto_value if self.request_body else _PM.NONE,
            response_body_mode=self.response_body.proto_value if self.response_body else _PM.NONE,
            request_trailer_mode=send if self.request_trailers else skip,
            response_trailer_mode=send if self.response_trailers else skip,
        )

    @classmethod
    def from_proto(cls, mode: Any, base: ProcessingMode | None = None) -> ProcessingMode:
        """Apply a ProcessingMode message (DEFAULT fields keep ``base``'s value)."""
        base = base or cls()

        def header(value: int, current: bool) -> bool:
            return current if value == _PM.DEFAULT else value == _PM.SEND

        return cls(
            request_headers=header(mode.request_header_mode, base.request_headers),
            response_headers=header(mode.response_header_mode, base.response_headers),
            request_body=BodyMode.from_proto(mode.request_body_mode),
            response_body=BodyMode.from_proto(mode.response_body_mode),
            request_trailers=header(mode.request_trailer_mode, base.request_trailers),
            response_trailers=header(mode.response_trailer_mode, base.response_trailers),
        )

    @functools.cached_property
    def body_proto_values(self) -> tuple[int, int]:
        """(request, response) BodySendMode numbers, as ``protocol_config`` carries them."""
        return (self.request_body.proto_value if self.request_body else 0,
                self.response_body.proto_value if self.response_body else 0)

    @property
    def phases(self) -> tuple[str, ...]:
        """Names of the phases Envoy sends, e.g. ``("request_headers", "response_body")``."""
        names = []
        for field in ("request_headers", "request_body", "request_trailers",
                      "response_headers", "response_body", "response_trailers"):
            if getattr(self, field):
                names.append(field)
        return tuple(names)
