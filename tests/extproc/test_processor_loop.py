"""The message loop directly (``extproc._stream.run_stream``), no Envoy, no sockets: protocol
errors, one answer per message, what ends a stream."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

import extproc
from extproc import (
    Body,
    BodyMode,
    Headers,
    ImmediateResponse,
    Processor,
    ProtocolError,
)
from extproc._stream import _Exchange, run_stream

# -- the message loop directly --------------------------------------------------------------


def _header_map(pairs: list[tuple[str, str]]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode())
                                       for k, v in pairs])


def request_headers(eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_headers=pb.HttpHeaders(
        headers=_header_map([(":method", "POST"), (":path", "/")]), end_of_stream=eos))


def request_body(data: bytes, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=eos))


def response_headers(eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_headers=pb.HttpHeaders(
        headers=_header_map([(":status", "200")]), end_of_stream=eos))


def response_body(data: bytes, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=eos))


class StreamedBoth(Processor):
    request_body_mode = BodyMode.STREAMED
    response_body_mode = BodyMode.STREAMED

    async def on_request_headers(self, headers: Headers) -> None:
        headers["x-seen"] = "1"

    async def on_request_body(self, body: Body) -> None:
        body.data = body.data[::-1]

    async def on_response_headers(self, headers: Headers) -> None:
        pass

    async def on_response_body(self, body: Body) -> None:
        pass


async def test_request_headers_twice_is_protocol_error() -> None:
    exchange = _Exchange(StreamedBoth)
    await exchange.handle(request_headers())
    with pytest.raises(ProtocolError, match="twice"):
        await exchange.handle(request_headers())


async def test_request_body_after_end_of_stream_headers() -> None:
    exchange = _Exchange(StreamedBoth)
    await exchange.handle(request_headers(eos=True))
    with pytest.raises(ProtocolError, match="after the end"):
        await exchange.handle(request_body(b"late"))


async def test_request_body_after_end_of_stream_body() -> None:
    exchange = _Exchange(StreamedBoth)
    await exchange.handle(request_headers())
    await exchange.handle(request_body(b"last", eos=True))
    with pytest.raises(ProtocolError):
        await exchange.handle(request_body(b"more"))
    with pytest.raises(ProtocolError):
        await exchange.handle(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))


async def test_empty_processing_request_is_protocol_error() -> None:
    exchange = _Exchange(StreamedBoth)
    with pytest.raises(ProtocolError):
        await exchange.handle(pb.ProcessingRequest())
    assert issubclass(ProtocolError, extproc.ExtprocError)


async def test_run_stream_answers_each_message_once_in_streamed_mode() -> None:
    messages = [
        request_headers(),
        request_body(b"abc"),
        request_body(b"def"),
        request_body(b"", eos=True),
        response_headers(),
        response_body(b"x"),
        response_body(b"y", eos=True),
    ]
    eof = object()
    inbox: list[Any] = [*messages, eof]
    written: list[Any] = []

    async def read() -> Any:
        return inbox.pop(0)

    async def write(message: Any) -> None:
        written.append(message)

    counts: dict[str, int] = {}
    await run_stream(StreamedBoth, read, write, eof, counts)
    assert inbox == []
    assert [w.WhichOneof("response") for w in written] == [
        m.WhichOneof("request") for m in messages]
    assert counts == {"request_headers": 1, "request_body": 3, "response_headers": 1,
                      "response_body": 2}
    header_mutation = written[0].request_headers.response.header_mutation
    assert [o.header.key for o in header_mutation.set_headers] == ["x-seen"]
    assert written[1].request_body.response.body_mutation.body == b"cba"
    assert written[2].request_body.response.body_mutation.body == b"fed"
    # An untouched chunk is passed on without a mutation.
    assert not written[5].response_body.response.HasField("body_mutation")


async def test_run_stream_stops_after_immediate_response() -> None:
    eof = object()
    inbox: list[Any] = [request_headers(), request_body(b"never read", eos=True), eof]
    written: list[Any] = []

    async def read() -> Any:
        return inbox.pop(0)

    async def write(message: Any) -> None:
        written.append(message)

    class Reject(Processor):
        async def on_request_headers(self, headers: Headers) -> ImmediateResponse:
            return ImmediateResponse(401, body=b"no")

    await run_stream(Reject, read, write, eof)
    assert len(written) == 1
    assert written[0].immediate_response.status.code == 401
    assert written[0].immediate_response.body == b"no"
    assert len(inbox) == 2  # the stream ended at the answer


# Regression (fixed in 7df7427): clear_route_cache() from a body hook was never put in the
# body answer (Envoy honours it there, with a header mutation) but sent with response_headers.
async def test_clear_route_cache_from_buffered_request_body() -> None:
    class RouteOnBody(Processor):
        request_body_mode = BodyMode.BUFFERED

        async def on_request_headers(self, headers: Headers) -> None:
            pass

        async def on_request_body(self, body: Body) -> None:
            assert self.request_headers is not None
            self.request_headers["x-route"] = body.data.decode()
            self.clear_route_cache()

    exchange = _Exchange(RouteOnBody)
    await exchange.handle(request_headers())
    (answer,) = await exchange.handle(request_body(b"blue", eos=True))
    common = answer.request_body.response
    assert [o.header.key for o in common.header_mutation.set_headers] == ["x-route"]
    assert common.clear_route_cache
