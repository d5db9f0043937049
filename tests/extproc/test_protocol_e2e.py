"""Envoy 1.40's ext_proc protocol, shown through a real Envoy where the differential tests
cannot show it: stats, timing, a gRPC upstream, an unreachable processor."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extctl.harness.envoy import EnvoyProcess
from extctl.testing import http
from extproc import SERVICE_NAME, BodyMode, ProcessingMode
from extproc.testing import run
from tests.helpers.patched_envoy import (
    envoy_config,
    http2_upstream,
    patched_stack,
    route_on_header,
    tracing,
)
from tests.helpers.protocol_procs import (
    EarlyBody,
    GrpcMessages,
    HeldShadow,
    Reroute,
    Shadow,
    SlowWithStatus,
    StreamMetadata,
    grpc_frame,
)

pytestmark = pytest.mark.envoy

IGNORED = "http.ingress.ext_proc.clear_route_cache_ignored"


def _raw_processor(target: str, answer: Any) -> grpc.Server:
    """An ext_proc server answering request headers with ``answer`` (any other message
    unchanged): to show what Envoy does with answers the framework never sends."""

    def process(requests: Iterator[Any], context: Any) -> Iterator[Any]:
        for message in requests:
            which = message.WhichOneof("request")
            if which == "request_headers":
                yield answer
            else:
                reply = pb.ProcessingResponse()
                getattr(reply, which).SetInParent()
                yield reply

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.stream_stream_rpc_method_handler(
        process, request_deserializer=pb.ProcessingRequest.FromString,
        response_serializer=pb.ProcessingResponse.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Process": handler}),))
    server.add_insecure_port(target)
    server.start()
    return server


def test_envoy_ignores_clear_route_cache_without_header_mutation(sock_dir, echo):
    bare = pb.ProcessingResponse()
    bare.request_headers.response.clear_route_cache = True  # no header_mutation
    socket_path = sock_dir / "raw.sock"
    server = _raw_processor(f"unix:{socket_path}", bare)
    try:
        config = envoy_config(Reroute, [str(socket_path)], echo.address)
        with EnvoyProcess(config, sock_dir / "envoy-raw") as envoy:
            assert http(envoy.port, "/").status == 200
            assert envoy.stats(IGNORED) == {IGNORED: 1}
    finally:
        server.stop(0)
    # The framework sends an (empty) header_mutation with it: nothing is ignored.
    with patched_stack(Reroute, sock_dir, echo.address,
                       route_on_header("x-route", "b", "route b\n")) as s:
        assert s.get("/", headers={"x-clear-only": "1"}).status == 200
        assert s.get("/", headers={"x-go-b": "1", "x-clear": "1"}).body == b"route b\n"
        assert s.envoy.stats(IGNORED) == {IGNORED: 0}


def test_status_on_error_when_the_processor_is_unreachable(sock_dir, echo):
    config = envoy_config(SlowWithStatus, [str(sock_dir / "nobody.sock")], echo.address)
    with EnvoyProcess(config, sock_dir / "envoy") as envoy:
        assert http(envoy.port, "/").status == 503


def test_observability_mode_does_not_delay_the_request(sock_dir, echo):
    inside, release = sock_dir / "inside", sock_dir / "release"
    replies: list[Any] = []
    with patched_stack(HeldShadow, sock_dir, echo.address) as s:
        client = threading.Thread(target=lambda: replies.append(s.get("/watched", headers={
            "x-mark": str(inside), "x-release": str(release)})), daemon=True)
        client.start()
        client.join(10)  # the hook holds until released: a reply now did not wait for it
        answered_while_held = bool(replies) and not release.exists()
        deadline = time.monotonic() + 10
        while not inside.exists():  # yet the processor saw the request
            assert time.monotonic() < deadline, "the hook never ran"
            time.sleep(0.01)
        release.touch()
        client.join(10)
        counts = dict(s.counts)
    assert answered_while_held, "the request waited for the hook"
    (reply,) = replies
    assert reply.status == 200  # the hook's 403 is not applied
    assert "x-shadow" not in reply.upstream_headers()
    assert counts["request_headers"] == 1


TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


async def test_trace_context_reaches_hooks_as_grpc_metadata(sock_dir, echo):
    """With tracing on, Envoy sends the request's trace context (a child span of the client's)
    as gRPC metadata of the Process stream, beside grpc_initial_metadata."""
    parent = f"00-{TRACE_ID}-b7ad6b7169203331-01"
    with patched_stack(StreamMetadata, sock_dir, echo.address, tracing) as s:
        seen = s.get("/", headers={"traceparent": parent}).upstream_headers()
    (traceparent,) = seen["x-traceparent-seen"]
    assert traceparent.split("-")[1] == TRACE_ID and traceparent != parent
    assert seen["x-tenant-seen"] == ["blue"]
    result = await run(StreamMetadata, grpc_metadata={"traceparent": traceparent})
    assert result.request is not None
    assert result.request.headers["x-traceparent-seen"] == traceparent
    assert result.request.headers["x-tenant-seen"] == "blue"


# -- GRPC body mode -----------------------------------------------------------------------------


class _GrpcEcho:
    """A gRPC upstream on loopback: unary ``t.Echo/Say`` and streaming ``t.Echo/Chat``
    answer ``echo:`` + each message (raw bytes, no protobuf)."""

    def __enter__(self) -> _GrpcEcho:
        def say(request: bytes, context: Any) -> bytes:
            return b"echo:" + request

        def chat(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
            for request in requests:
                yield b"echo:" + request

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Echo", {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Chat": grpc.stream_stream_rpc_method_handler(chat)}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.stop(0)


GRPC_MODE = ProcessingMode(request_headers=True, response_headers=False,
                           request_body=BodyMode.GRPC)


async def test_grpc_body_mode_through_envoy_and_in_process_agree(sock_dir):
    with _GrpcEcho() as upstream, patched_stack(
            GrpcMessages, sock_dir, f"127.0.0.1:{upstream.port}", http2_upstream,
            processing_mode=GRPC_MODE) as s, \
            grpc.insecure_channel(f"127.0.0.1:{s.envoy.port}") as channel:
        say = channel.unary_unary("/t.Echo/Say")
        # Unary: the whole message is held when the headers are answered, so Envoy sends it
        # (gRPC framing included) and applies the rewritten one.
        assert say(b"ping", timeout=10) == b"echo:PONG?"
        unary_counts = dict(s.counts)

        # Streaming: Envoy 1.40 forwards messages that arrive later without sending them.
        answers = "http.ingress.ext_proc.stream_msgs_received"
        answered = s.envoy.stats(answers)[answers]
        echoed = threading.Event()

        def later() -> Iterator[bytes]:
            # The first message once Envoy has the headers' answer, the second once the
            # first has come back.
            deadline = time.monotonic() + 10
            while s.envoy.stats(answers)[answers] == answered:
                assert time.monotonic() < deadline, "Envoy never had the headers' answer"
                time.sleep(0.01)
            yield b"ping"
            echoed.wait(10)
            yield b"two"

        chat = channel.stream_stream("/t.Echo/Chat")
        replies = chat(later(), timeout=10)
        first = next(replies)
        echoed.set()
        assert [first, *replies] == [b"echo:ping", b"echo:two"]
        counts = dict(s.counts)
    assert unary_counts == {"request_headers": 1, "request_body": 1}
    assert counts == {"request_headers": 2, "request_body": 1}
    result = await run(GrpcMessages, mode=GRPC_MODE, method="POST", body=grpc_frame(b"ping"))
    assert result.request is not None and result.request.body == grpc_frame(b"PONG?")


def test_processor_error_in_grpc_mode_is_answered_not_fatal(sock_dir):
    """A body the hook cannot handle fails closed: the gRPC client gets an error status, the
    server keeps serving."""
    with _GrpcEcho() as upstream, patched_stack(
            GrpcMessages, sock_dir, f"127.0.0.1:{upstream.port}", http2_upstream,
            processing_mode=GRPC_MODE) as s, \
            grpc.insecure_channel(f"127.0.0.1:{s.envoy.port}") as channel:
        say = channel.unary_unary("/t.Echo/Say")
        errors: list[Any] = []

        def call() -> None:
            try:
                say(b"explode", timeout=10)
            except grpc.RpcError as exc:
                errors.append(exc)

        worker = threading.Thread(target=call)
        worker.start()
        worker.join(15)
        assert errors and errors[0].code() != grpc.StatusCode.OK
        assert say(b"ping", timeout=10) == b"echo:PONG?"


class _Recorder:
    """A raw ext_proc server that answers nothing it need not (observability mode) and
    records each stream's first message, and ``("closed", name)`` in ``events`` when a stream
    ends."""

    def __init__(self, target: str, events: list[tuple[str, str]] | None = None,
                 name: str = "") -> None:
        self.first: list[Any] = []
        events = [] if events is None else events

        def process(requests: Iterator[Any], context: Any) -> Iterator[Any]:
            # Whether Envoy half-closes or cancels the stream, this runs when it ends.
            context.add_callback(lambda: events.append(("closed", name)))
            for message in requests:
                if not self.first:
                    self.first.append(message)
            return iter(())

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.stream_stream_rpc_method_handler(
            process, request_deserializer=pb.ProcessingRequest.FromString,
            response_serializer=pb.ProcessingResponse.SerializeToString)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Process": handler}),))
        self.server.add_insecure_port(target)
        self.server.start()


def test_deferred_close_timeout_keeps_the_observability_stream_open(sock_dir, echo):
    """Two Envoys, their streams kept open 3 s and 0.5 s after the request: the longer one,
    although its request ended first, outlives the other's request and deferral."""
    events: list[tuple[str, str]] = []
    recorders, envoys = {}, {}
    with contextlib.ExitStack() as stack:
        for name, deferred in (("long", 3.0), ("short", 0.5)):
            class Watch(Shadow):
                deferred_close_timeout = deferred

            socket_path = sock_dir / f"{name}.sock"
            recorders[name] = recorder = _Recorder(f"unix:{socket_path}", events, name)
            stack.callback(recorder.server.stop, 0)
            config = envoy_config(Watch, [str(socket_path)], echo.address)
            envoys[name] = stack.enter_context(EnvoyProcess(config, sock_dir / f"envoy-{name}"))
        for name in ("long", "short"):
            assert http(envoys[name].port, "/").status == 200
            events.append(("reply", name))
        deadline = time.monotonic() + 20
        while len(events) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert all(r.first[0].observability_mode for r in recorders.values())
    assert events == [("reply", "long"), ("reply", "short"), ("closed", "short"),
                      ("closed", "long")]


def test_body_sent_without_waiting_is_announced_in_the_protocol_config(sock_dir, echo):
    socket_path = sock_dir / "rec.sock"
    recorder = _Recorder(f"unix:{socket_path}")
    try:
        config = envoy_config(EarlyBody, [str(socket_path)], echo.address, fail_open=True,
                              message_timeout=0.2)
        with EnvoyProcess(config, sock_dir / "envoy-rec") as envoy:
            http(envoy.port, "/", method="POST", body=b"x")
    finally:
        recorder.server.stop(0)
    config_sent = recorder.first[0].protocol_config
    assert config_sent.send_body_without_waiting_for_header_response
    assert config_sent.request_body_mode == BodyMode.STREAMED.proto_value
