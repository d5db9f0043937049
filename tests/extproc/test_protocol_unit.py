"""The rest of Envoy's ext_proc protocol, in-process: what a class may ask for, what a hook may
call when, and the messages the framework sends for it."""

from __future__ import annotations

import asyncio
from types import MappingProxyType
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc import (
    Body,
    BodyMode,
    Headers,
    MutationError,
    ProcessingMode,
    Processor,
    ProcessorDefinitionError,
    ProtocolError,
)
from extproc._stream import run_stream
from extproc.testing import ServerThread, run
from tests.helpers.protocol_procs import (
    GrpcMessages,
    NoImmediate,
    OverrideUnderFullDuplex,
    Replace,
    Reroute,
    Shadow,
    SlowHook,
    StreamMetadata,
    grpc_frame,
)

# -- what a class may ask for ---------------------------------------------------------------


@pytest.mark.parametrize(("attributes", "message"), [
    ({"allow_mode_override": True, "response_body_mode": BodyMode.FULL_DUPLEX_STREAMED},
     "drops every mode_override"),
    ({"request_body_mode": BodyMode.GRPC}, "forwards gRPC messages"),
    ({"status_on_error": 302}, "4xx or 5xx"),
    ({"status_on_error": 418}, "4xx or 5xx"),
    ({"status_on_error": 600}, "4xx or 5xx"),
    ({"max_message_timeout": 0.1}, "shorter than message_timeout"),
    ({"max_message_timeout": -1}, "positive number"),
    ({"deferred_close_timeout": 1.0}, "observability_mode only"),
    ({"route_cache_action": "sometimes"}, "route_cache_action must be one of"),
    ({"allowed_override_modes": (ProcessingMode(),)}, "needs allow_mode_override"),
    ({"allow_mode_override": True, "allowed_override_modes": ("BUFFERED",)},
     "ProcessingMode values"),
    ({"grpc_initial_metadata": (("X-Upper", "v"),)}, "lower-case"),
    ({"grpc_initial_metadata": ((":path", "v"),)}, "lower-case"),
])
def test_class_attributes_envoy_would_not_honour_are_refused(attributes: dict[str, Any],
                                                               message: str) -> None:
    body_hooks = {f"on_{d}_body": _noop_body for d in ("request", "response")
                  if f"{d}_body_mode" in attributes}
    with pytest.raises(ProcessorDefinitionError, match=message):
        type("Bad", (Processor,), {"on_request_headers": _noop_headers, **body_hooks,
                                   **attributes})


async def _noop_headers(self: Processor, headers: Headers) -> None:
    pass


async def _noop_body(self: Processor, body: Body) -> None:
    pass


def test_new_attributes_are_derived_into_the_spec() -> None:
    class Everything(Processor):
        message_timeout = 0.5
        max_message_timeout = 3
        status_on_error = 503
        forwarding_namespaces = ("a",)
        typed_forwarding_namespaces = ("b",)
        grpc_initial_metadata = MappingProxyType({"x-tenant": "blue"})
        route_cache_action = "retain"
        disable_immediate_response = True
        allow_mode_override = True
        allowed_override_modes = (ProcessingMode(response_body=BodyMode.BUFFERED),)
        send_body_without_waiting_for_header_response = True

        async def on_request_headers(self, headers: Headers) -> None:
            pass

    spec = Everything.filter_spec()
    assert (spec.timeout, spec.max_message_timeout, spec.status_on_error) == (0.5, 3.0, 503)
    assert (spec.forwarding_namespaces, spec.typed_forwarding_namespaces) == (("a",), ("b",))
    assert spec.grpc_initial_metadata == (("x-tenant", "blue"),)
    assert spec.route_cache_action == "retain" and spec.disable_immediate_response
    assert spec.send_body_without_waiting_for_header_response
    assert spec.override_allowed(ProcessingMode(request_headers=False,
                                                response_body=BodyMode.BUFFERED))
    assert not spec.override_allowed(ProcessingMode(response_body=BodyMode.STREAMED))
    assert Shadow.filter_spec().observability_mode
    assert Shadow.filter_spec().deferred_close_timeout == 1.0


# -- clear_route_cache ------------------------------------------------------------------------


async def _answers(cls: type[Processor], *messages: Any) -> list[Any]:
    inbox = list(messages)
    out: list[Any] = []

    async def read() -> Any:
        return inbox.pop(0) if inbox else None

    async def write(answer: Any) -> None:
        out.append(answer)

    await run_stream(cls, read, write, None)
    return out


def _request_headers(**headers: str) -> Any:
    message = pb.ProcessingRequest()
    message.request_headers.end_of_stream = True
    for key, value in {":path": "/", **headers}.items():
        message.request_headers.headers.headers.add(key=key, raw_value=value.encode())
    return message


async def test_clear_route_cache_always_carries_a_header_mutation() -> None:
    (answer,) = await _answers(Reroute, _request_headers(**{"x-clear-only": "1"}))
    common = answer.request_headers.response
    assert common.clear_route_cache
    assert common.HasField("header_mutation")  # empty, but present: Envoy needs it
    assert not common.header_mutation.set_headers
    result = await run(Reroute, headers={"x-clear-only": "1"})
    assert result.route_cache_cleared


@pytest.mark.parametrize("phase", ["on_response_headers", "on_request_trailers"])
async def test_clear_route_cache_refused_where_envoy_ignores_it(phase: str) -> None:
    caught: list[Exception] = []

    async def hook(self: Processor, headers: Headers) -> None:
        try:
            self.clear_route_cache()
        except MutationError as exc:
            caught.append(exc)

    cls = type("Late", (Processor,), {phase: hook})
    await run(cls, trailers={"x-t": "1"})
    assert caught and "request headers or body" in str(caught[0])


async def test_clear_route_cache_refused_once_the_headers_went_on() -> None:
    caught: list[Exception] = []

    class StreamedBody(Processor):
        request_body_mode = BodyMode.STREAMED

        async def on_request_headers(self, headers: Headers) -> None:
            pass

        async def on_request_body(self, body: Body) -> None:
            try:
                self.clear_route_cache()
            except MutationError as exc:
                caught.append(exc)

    await run(StreamedBody, method="POST", body=b"x")
    assert caught and "already chose the route" in str(caught[0])


async def test_clear_route_cache_refused_with_route_cache_action_retain() -> None:
    class Retain(Processor):
        route_cache_action = "retain"

        async def on_request_headers(self, headers: Headers) -> None:
            self.clear_route_cache()

    assert (await run(Retain)).status == 500  # the hook's MutationError fails closed


# -- mode overrides ---------------------------------------------------------------------------


async def test_override_refused_at_call_time_when_envoy_says_full_duplex() -> None:
    mode = ProcessingMode(request_headers=True, response_body=BodyMode.FULL_DUPLEX_STREAMED,
                          response_trailers=True)
    result = await run(OverrideUnderFullDuplex, mode=mode, method="POST", body=b"abc")
    assert result.request is not None
    assert result.request.headers["x-override"] == "refused"
    assert result.sent.count("request_body") == 0


# -- body modes from Envoy ------------------------------------------------------------------


def test_grpc_body_mode_number_is_known_and_others_are_protocol_errors() -> None:
    assert BodyMode.from_proto(5) is BodyMode.GRPC
    with pytest.raises(ProtocolError, match="unknown body send mode 42"):
        BodyMode.from_proto(42)


async def test_grpc_mode_body_reaches_the_hook_framed_and_comes_back_changed() -> None:
    mode = ProcessingMode(request_headers=True, response_headers=False,
                          request_body=BodyMode.GRPC)
    result = await run(GrpcMessages, mode=mode, method="POST", body=grpc_frame(b"ping"),
                       headers={"content-type": "application/grpc"})
    assert result.sent == ["request_headers", "request_body"]
    assert result.request is not None and result.request.body == grpc_frame(b"PONG?")


def test_unknown_body_mode_is_invalid_argument_and_the_server_keeps_serving(sock_dir) -> None:
    unknown = _request_headers()
    unknown.protocol_config.request_body_mode = 42  # type: ignore[assignment]
    with ServerThread(Reroute, uds=str(sock_dir / "u.sock")) as server, \
            grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            list(stub.Process(iter([unknown]), timeout=10))
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown body send mode 42" in failure.value.details()
        assert len(list(stub.Process(iter([_request_headers()]), timeout=10))) == 1


# -- timeouts -----------------------------------------------------------------------------------


async def test_extension_is_sent_before_the_answer() -> None:
    answers = await _answers(SlowHook, _request_headers(**{"x-extend": "1"}))
    assert [a.WhichOneof("response") for a in answers] == [None, "request_headers"]
    assert answers[0].override_message_timeout.ToMilliseconds() == 1500
    result = await run(SlowHook, headers={"x-extend": "1"})
    assert result.status == 200 and result.timeout_extensions == [1.5]
    assert (await run(SlowHook)).status == 504  # Envoy's answer after message_timeout


@pytest.mark.parametrize(("attributes", "calls", "message"), [
    ({}, [1.0], "max_message_timeout is None"),
    ({"max_message_timeout": 1.0}, [2.0], "up to max_message_timeout|not 2.0s"),
    ({"max_message_timeout": 1.0}, [0.5, 0.5], "one extension per message"),
])
async def test_extensions_envoy_ignores_are_refused(attributes: dict[str, Any],
                                                    calls: list[float], message: str) -> None:
    caught: list[Exception] = []

    async def hook(self: Processor, headers: Headers) -> None:
        try:
            for seconds in calls:
                await self.extend_timeout(seconds)
        except MutationError as exc:
            caught.append(exc)

    await run(type("Extends", (Processor,), {"on_request_headers": hook, **attributes}))
    assert caught and caught[0].args[0]
    assert any(part in str(caught[0]) for part in message.split("|"))


# -- CONTINUE_AND_REPLACE ---------------------------------------------------------------------


async def test_replace_body_answers_continue_and_replace_and_ends_the_direction() -> None:
    headers = _request_headers(**{"x-rewrite-body": "1"})
    headers.request_headers.end_of_stream = False
    (answer,) = await _answers(Replace, headers)
    common = answer.request_headers.response
    assert common.status == pb.CommonResponse.CONTINUE_AND_REPLACE
    assert common.body_mutation.body == b"rewritten from headers"
    body = pb.ProcessingRequest()
    body.request_body.body = b"never sent by Envoy"
    with pytest.raises(ProtocolError, match="request_body after the end of the request"):
        await _answers(Replace, headers, body)


async def test_replace_body_only_from_headers_hooks() -> None:
    caught: list[Exception] = []

    class Late(Processor):
        request_body_mode = BodyMode.BUFFERED

        async def on_request_body(self, body: Body) -> None:
            try:
                self.replace_body(b"x")
            except MutationError as exc:
                caught.append(exc)

    await run(Late, method="POST", body=b"abc")
    assert caught and "only in answer to headers" in str(caught[0])


# -- gRPC stream metadata, immediate responses, observability ---------------------------------


async def test_grpc_metadata_is_read_only_and_carries_initial_and_trace_metadata() -> None:
    seen: dict[str, str] = {}

    class Trace(StreamMetadata):
        async def on_request_headers(self, headers: Headers) -> None:
            seen.update(self.grpc_metadata)
            await super().on_request_headers(headers)

    result = await run(Trace, grpc_metadata={"traceparent": "00-abc-def-01"})
    assert seen == {"x-tenant": "blue", "traceparent": "00-abc-def-01"}
    assert result.request is not None and result.request.headers["x-read-only"] == "yes"


async def test_disabled_immediate_response_ends_the_stream_with_an_error() -> None:
    result = await run(NoImmediate, headers={"x-deny": "1"})
    assert (result.status, result.response.body) == (502, b"")


async def test_observability_mode_applies_no_answer() -> None:
    result = await run(Shadow)
    assert result.status == 200 and result.request is not None
    assert "x-shadow" not in result.request.headers
    assert result.sent == ["request_headers"]


async def test_observability_server_sends_no_answer_and_no_extension() -> None:
    class Watch(Shadow):
        max_message_timeout = 1.0

        async def on_request_headers(self, headers: Headers) -> Any:
            await self.extend_timeout(0.5)
            await asyncio.sleep(0)

    message = _request_headers()
    message.observability_mode = True
    assert await _answers(Watch, message) == []


async def test_each_body_chunk_may_get_its_own_extension() -> None:
    class SlowChunks(Processor):
        request_body_mode = BodyMode.STREAMED
        max_message_timeout = 1.0

        async def on_request_body(self, body: Body) -> None:
            await self.extend_timeout(0.5)

    result = await run(SlowChunks, method="POST", body=[b"a", b"b"])
    assert result.status == 200 and result.timeout_extensions == [0.5, 0.5]
