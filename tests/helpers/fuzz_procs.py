"""Processors for the differential tests of body shapes: each one's output depends on the bytes
it is given, never on where Envoy cut them into chunks, so Envoy and ``extproc.testing`` must
agree whatever the chunking (which Envoy chooses: it may join or split what was sent).

Headers the processors set start with ``x-p-``; they report what the processor saw (its body
hooks' calls, the framing headers) so that the comparison covers it.
"""

from __future__ import annotations

import extproc
from extproc import BodyMode, ImmediateResponse

MARKER = b"STOP"
PATIENT = 10.0
"""Each class's message_timeout: on a loaded machine a hook may take longer than Envoy's 200 ms
default, and a 504 then would be a difference of timing, not of shape."""


def _framing(headers: extproc.Headers) -> str:
    return f"{headers.get('content-length', '-')}/{headers.get('transfer-encoding', '-')}"


class StreamedUpper(extproc.Processor):
    """STREAMED both ways: upper-cases every body byte; says what framing it saw."""

    message_timeout = PATIENT

    request_body_mode = BodyMode.STREAMED
    response_body_mode = BodyMode.STREAMED

    async def on_request_headers(self, headers: extproc.Headers) -> None:
        headers["x-p-framing"] = _framing(headers)

    async def on_request_body(self, body: extproc.Body) -> None:
        body.data = body.data.upper()

    async def on_response_headers(self, headers: extproc.Headers) -> None:
        headers["x-p-framing"] = _framing(headers)

    async def on_response_body(self, body: extproc.Body) -> None:
        body.data = body.data.upper()


class FullDuplexSwap(extproc.Processor):
    """FULL_DUPLEX_STREAMED both ways: every ``cat`` becomes ``dog``, across chunk boundaries
    (the last two bytes of a chunk are held back until the next one, or the end)."""

    message_timeout = PATIENT

    request_body_mode = BodyMode.FULL_DUPLEX_STREAMED
    response_body_mode = BodyMode.FULL_DUPLEX_STREAMED

    def __init__(self) -> None:
        self.held = {"request": b"", "response": b""}

    def _swap(self, direction: str, body: extproc.Body) -> None:
        data = (self.held[direction] + body.data).replace(b"cat", b"dog")
        keep = 0 if body.end_of_stream else min(2, len(data))
        self.held[direction] = data[len(data) - keep:]
        body.data = data[:len(data) - keep]

    async def on_request_body(self, body: extproc.Body) -> None:
        self._swap("request", body)

    async def on_response_body(self, body: extproc.Body) -> None:
        self._swap("response", body)

    async def on_request_trailers(self, trailers: extproc.Headers) -> None:
        trailers["x-p-swapped"] = "request"

    async def on_response_trailers(self, trailers: extproc.Headers) -> None:
        trailers["x-p-swapped"] = "response"


class BufferedSuffix(extproc.Processor):
    """BUFFERED both ways: appends ``!`` and says the length it got, in a header set from the
    body hook."""

    message_timeout = PATIENT

    request_body_mode = BodyMode.BUFFERED
    response_body_mode = BodyMode.BUFFERED

    async def on_request_headers(self, headers: extproc.Headers) -> None:
        headers["x-p-framing"] = _framing(headers)

    async def on_request_body(self, body: extproc.Body) -> None:
        self.request_headers["x-p-length"] = str(len(body.data))  # type: ignore[index]
        body.data = body.data + b"!"

    async def on_response_headers(self, headers: extproc.Headers) -> None:
        headers["x-p-framing"] = _framing(headers)

    async def on_response_body(self, body: extproc.Body) -> None:
        self.response_headers["x-p-length"] = str(len(body.data))  # type: ignore[index]
        body.data = body.data + b"!"


class PartialLower(extproc.Processor):
    """BUFFERED_PARTIAL both ways: lower-cases what it is sent (bodies here stay below
    Envoy's buffer limit, so that is all of it)."""

    message_timeout = PATIENT

    request_body_mode = BodyMode.BUFFERED_PARTIAL
    response_body_mode = BodyMode.BUFFERED_PARTIAL

    async def on_request_body(self, body: extproc.Body) -> None:
        body.data = body.data.lower()

    async def on_response_body(self, body: extproc.Body) -> None:
        body.data = body.data.lower()


class DenyMarker(extproc.Processor):
    """STREAMED request body: a 451 as soon as ``STOP`` has been seen, split across chunks or
    not; what came before passes."""

    message_timeout = PATIENT

    request_body_mode = BodyMode.STREAMED

    def __init__(self) -> None:
        self.tail = b""

    async def on_request_body(self, body: extproc.Body) -> ImmediateResponse | None:
        seen = self.tail + body.data
        if MARKER in seen:
            return ImmediateResponse(451, body="marker found\n",
                                     headers={"x-p-denied": "1"})
        self.tail = seen[-(len(MARKER) - 1):]
        return None


class TrailerStamp(extproc.Processor):
    """Trailers both ways (and no body phase): stamps a trailer, removes ``x-drop``, and
    counts in a header of the next direction the trailers it saw."""

    message_timeout = PATIENT

    def __init__(self) -> None:
        self.seen = 0

    async def on_request_trailers(self, trailers: extproc.Headers) -> None:
        self.seen += 1
        trailers["x-p-stamp"] = f"request:{len(trailers)}"
        trailers.pop("x-drop", None)

    async def on_response_headers(self, headers: extproc.Headers) -> None:
        headers["x-p-request-trailers"] = str(self.seen)

    async def on_response_trailers(self, trailers: extproc.Headers) -> None:
        trailers["x-p-stamp"] = f"response:{len(trailers)}"
        trailers.pop("x-drop", None)


PROCESSORS = [StreamedUpper, FullDuplexSwap, BufferedSuffix, PartialLower, DenyMarker,
              TrailerStamp]



class LateDeny(extproc.Processor):
    """A 451 on ``STOP`` in the response body (STREAMED): by the time the hook sees it, Envoy
    has sent the response headers on to the client."""

    message_timeout = PATIENT

    response_body_mode = BodyMode.STREAMED

    async def on_response_body(self, body: extproc.Body) -> ImmediateResponse | None:
        if MARKER in body.data:
            return ImmediateResponse(451, body="marker found\n")
        return None
