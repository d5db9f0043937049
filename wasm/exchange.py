"""One HTTP exchange through an emulated filter, in Envoy's order: request headers, body
chunks, trailers, the upstream's answer, the response phases; local replies and stops handled
as Envoy handles them.

Body framing, both directions. ``"http1"`` (the default) is what Envoy's HTTP/1.1 codec
delivers: each chunk as a data frame without end of stream, then an empty frame that ends the
stream (so ``body=b"abc"`` runs the body callback twice: ``(3, false)`` then ``(3 or 0,
true)``, the size being what the buffer then holds); with trailers, the trailers end the
stream instead. ``"http2"``: the last chunk carries the end of stream (one call for
``body=b"abc"``). No body: the headers end the stream, no body callback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from extproc.exchange import (
    HeaderView,
    Message,
    Upstream,
    answer_of,
    bodiless,
    call_upstream,
    chunked,
    chunks_of,
)

from .abi import MapType
from .calls import Call, GrpcStream
from .context import Action, HttpContext, Pairs, pairs_of
from .state import LocalResponse, LogLine

__all__ = ["FRAMINGS", "HttpResult", "LocalResponse", "Pairs", "Request", "Upstream",
           "chunks_of", "pairs_of", "run"]

FRAMINGS = ("http1", "http2")


@dataclass
class HttpResult:
    """One request through the filter, as the upstream and the client saw it: the flat
    fields, and the shape every test double shares (``request``, ``response``,
    ``upstream_reached``, ``local_reply``, ``reset``; :mod:`extproc.exchange`)."""

    request_headers: list[tuple[str, str]]
    """What the upstream received (empty when the filter answered first)."""
    request_body: bytes
    response_headers: list[tuple[str, str]]
    """What the client received (a local reply's, after the filter's response callbacks)."""
    response_body: bytes
    request_trailers: list[tuple[str, str]] | None = None
    response_trailers: list[tuple[str, str]] | None = None
    local_response: LocalResponse | None = None
    upstream_reached: bool = False
    actions: list[tuple[str, Action]] = field(default_factory=list)
    """Each callback and what it answered, in order."""
    paused: str | None = None
    """The phase where the filter stopped without continuing (Envoy would wait there)."""
    reset: bool = False
    """The filter closed the stream (``proxy_close_stream``): Envoy resets it."""
    route_cache_cleared: int = 0
    """Times the filter asked Envoy to pick the route again (``clear_route_cache``)."""
    logs: list[LogLine] = field(default_factory=list)
    """Log lines of this request's context."""
    calls: list[Call] = field(default_factory=list)
    """Callouts the filter made during this request (from any context), with their replies."""
    grpc_streams: list[GrpcStream] = field(default_factory=list)
    """gRPC streams the filter opened during this request (from any context)."""

    @property
    def status(self) -> int:
        return int(self.response_header(":status") or 0)

    @property
    def request(self) -> Message | None:
        """What the upstream received; None when it was not reached."""
        if not self.upstream_reached:
            return None
        return _message(self.request_headers, self.request_body, self.request_trailers)

    @property
    def response(self) -> Message:
        """What the client received."""
        return _message(self.response_headers, self.response_body, self.response_trailers)

    @property
    def local_reply(self) -> LocalResponse | None:
        """The filter's local reply (``proxy_send_local_response``), as it gave it."""
        return self.local_response

    def request_header(self, name: str) -> str | None:
        return _first(self.request_headers, name)

    def response_header(self, name: str) -> str | None:
        return _first(self.response_headers, name)


def _message(headers: list[tuple[str, str]], body: bytes,
             trailers: list[tuple[str, str]] | None) -> Message:
    return Message(HeaderView(headers), body, [body] if body else [],
                   HeaderView(trailers) if trailers is not None else None)


def _first(pairs: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in pairs if k == name.lower()), None)


@dataclass
class Request:
    method: str
    path: str
    authority: str
    headers: Pairs | None
    chunks: list[bytes]
    trailers: Pairs | None
    upstream: Upstream | None
    status: int
    response_headers: Pairs | None
    response_chunks: list[bytes]
    response_trailers: Pairs | None
    framing: str = "http1"


def run(context: HttpContext, request: Request, result: HttpResult) -> HttpResult:
    """``request`` through the filter, filling ``result`` as it goes (what it holds when a
    callback traps is how far the request got)."""
    headers = [(":authority", request.authority), (":path", request.path),
               (":method", request.method), (":scheme", "http"), *pairs_of(request.headers)]
    action = context.on_request_headers(headers, not request.chunks and request.trailers is None)
    if (stop := _stopped(context, result, action, "request_headers")) is not None:
        return stop
    sent, paused = _body(context, "request", request.chunks, request.trailers is None,
                         request.framing)
    if context.local_response is not None or context.reset:
        return _ended(context, result)
    if paused:
        result.paused = "request_body"
        return result
    if request.trailers is not None:
        action = context.on_request_trailers(request.trailers)
        result.request_trailers = context.headers(MapType.REQUEST_TRAILERS)
        if (stop := _stopped(context, result, action, "request_trailers")) is not None:
            return stop
    result.request_headers = context.headers(MapType.REQUEST_HEADERS)
    result.request_body = sent
    result.upstream_reached = context.stream.upstream_reached = True
    status, response_headers = request.status, request.response_headers
    response_chunks, response_trailers = request.response_chunks, request.response_trailers
    if request.upstream is not None:
        upstream_request = result.request
        assert upstream_request is not None
        status, response_headers, answer, response_trailers = answer_of(
            call_upstream(request.upstream, upstream_request))
        response_chunks = chunks_of(answer)
        # framed as a server frames it: chunks (or trailers) chunked, bytes by length
        response_headers = [*response_headers, (
            ("transfer-encoding", "chunked") if chunked(answer, response_trailers)
            else ("content-length", str(len(answer))))]
    if bodiless(request.method, status):
        response_chunks, response_trailers = [], None  # no body, whatever the headers say
    response = [(":status", str(status)), *pairs_of(response_headers)]
    context.stream.upstream_ended = not response_chunks and response_trailers is None
    action = context.on_response_headers(response,
                                         not response_chunks and response_trailers is None)
    if (stop := _stopped(context, result, action, "response_headers")) is not None:
        return stop
    received, paused = _body(context, "response", response_chunks, response_trailers is None,
                             request.framing)
    context.stream.upstream_ended = True
    if context.local_response is not None or context.reset:
        return _ended(context, result)
    if paused:
        result.paused = "response_body"
        return result
    if response_trailers is not None:
        action = context.on_response_trailers(response_trailers)
        result.response_trailers = context.headers(MapType.RESPONSE_TRAILERS)
        if (stop := _stopped(context, result, action, "response_trailers")) is not None:
            return stop
    result.response_headers = context.headers(MapType.RESPONSE_HEADERS)
    result.response_body = received
    return result


def _stopped(context: HttpContext, result: HttpResult, action: Action,
             phase: str) -> HttpResult | None:
    if context.local_response is not None or context.reset:
        return _ended(context, result)
    direction = phase.split("_")[0]
    if not action.continues and direction not in context.continued:
        result.paused = phase
        return result
    return None


def _body(context: HttpContext, direction: str, chunks: list[bytes], ends: bool,
          framing: str) -> tuple[bytes, bool]:
    """Send body chunks in the framing's frames. StopIterationAndBuffer keeps them for the
    next call, which sees the whole buffer; the other stops hold them back unseen, as Envoy
    does."""
    on_body = context.on_request_body if direction == "request" else context.on_response_body
    if chunks and ends and framing == "http1":
        chunks = [*chunks, b""]  # the codec's empty end-of-stream frame
    passed = b""
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1 and ends
        action = on_body(chunk, last)
        if context.local_response is not None or context.reset:
            return passed, False
        if action.continues or direction in context.continued:
            passed += context.take_body(direction)
        elif action.value != 1:
            context.hold(direction)
        if last and not (action.continues or direction in context.continued):
            return passed, True
    return passed + context.take_body(direction), False


def _ended(context: HttpContext, result: HttpResult) -> HttpResult:
    if context.reset:
        result.reset = True
        return result
    local = context.local_response
    assert local is not None
    result.local_response = local
    headers = [(":status", str(local.status)), *local.headers]
    names = {name for name, _ in local.headers}
    if local.body:  # Envoy's prepareLocalReply
        headers.append(("content-length", str(len(local.body))))
        if "content-type" not in names:
            headers.append(("content-type", "text/plain"))
    else:
        headers = [(n, v) for n, v in headers if n not in ("content-length", "content-type")]
    if context.response_started:  # a reply sent while responding skips the filter
        result.response_headers, result.response_body = headers, local.body
        return result
    # Envoy sends a local reply from the request path back through the filter's own
    # response callbacks, starting from the first encoder filter.
    context.local_response = None
    context.on_response_headers(headers, not local.body)
    if local.body:
        context.on_response_body(local.body, True)
    context.local_response = local
    result.response_headers = context.headers(MapType.RESPONSE_HEADERS)
    result.response_body = context.take_body("response") if local.body else b""
    return result
