"""Processor class derivation, driven in-process (no Envoy, no sockets): the processing mode
derived from the hooks and body modes, the checks on a class, and its FilterSpec."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2

import extproc
from extproc import (
    Body,
    BodyMode,
    Headers,
    ProcessingMode,
    Processor,
    ProcessorDefinitionError,
)

PM = processing_mode_pb2.ProcessingMode


# -- processing_mode() and class checks -----------------------------------------------------


def test_headers_only_processor_mode() -> None:
    class OnlyRequestHeaders(Processor):
        async def on_request_headers(self, headers: Headers) -> None:
            pass

    mode = OnlyRequestHeaders.processing_mode()
    assert mode == ProcessingMode(request_headers=True, response_headers=False)
    assert mode.phases == ("request_headers",)
    proto = mode.to_proto()
    assert proto.request_header_mode == PM.SEND
    assert proto.response_header_mode == PM.SKIP
    assert proto.request_body_mode == PM.NONE
    assert proto.response_body_mode == PM.NONE
    assert proto.request_trailer_mode == PM.SKIP
    assert proto.response_trailer_mode == PM.SKIP


def test_mode_follows_overridden_hooks_and_body_modes() -> None:
    class Mixed(Processor):
        request_body_mode = BodyMode.BUFFERED
        response_body_mode = BodyMode.STREAMED

        async def on_response_headers(self, headers: Headers) -> None:
            pass

        async def on_request_body(self, body: Body) -> None:
            pass

        async def on_response_body(self, body: Body) -> None:
            pass

        async def on_response_trailers(self, trailers: Headers) -> None:
            pass

    mode = Mixed.processing_mode()
    assert mode.phases == ("request_body", "response_headers", "response_body",
                           "response_trailers")
    proto = mode.to_proto()
    assert proto.request_header_mode == PM.SKIP
    assert proto.response_header_mode == PM.SEND
    assert proto.request_body_mode == PM.BUFFERED
    assert proto.response_body_mode == PM.STREAMED
    assert proto.request_trailer_mode == PM.SKIP
    assert proto.response_trailer_mode == PM.SEND


def test_mode_inherited_by_subclass() -> None:
    class Base(Processor):
        async def on_request_trailers(self, trailers: Headers) -> None:
            pass

    class Child(Base):
        async def on_response_headers(self, headers: Headers) -> None:
            pass

    assert Base.processing_mode().phases == ("request_trailers",)
    assert Child.processing_mode().phases == ("request_trailers", "response_headers")


@pytest.mark.parametrize("direction", ["request", "response"])
def test_full_duplex_forces_trailers_of_that_direction(direction: str) -> None:
    other = "response" if direction == "request" else "request"

    async def hook(self: Processor, body: Body) -> None:
        pass

    namespace = {f"{direction}_body_mode": BodyMode.FULL_DUPLEX_STREAMED,
                 f"on_{direction}_body": hook}
    cls: type[Processor] = type("FD", (Processor,), namespace)
    mode = cls.processing_mode()
    assert getattr(mode, f"{direction}_trailers") is True
    assert getattr(mode, f"{other}_trailers") is False
    proto = mode.to_proto()
    assert getattr(proto, f"{direction}_body_mode") == PM.FULL_DUPLEX_STREAMED
    assert getattr(proto, f"{direction}_trailer_mode") == PM.SEND
    assert getattr(proto, f"{other}_trailer_mode") == PM.SKIP


def test_body_mode_proto_values() -> None:
    assert BodyMode.STREAMED.proto_value == PM.STREAMED
    assert BodyMode.BUFFERED.proto_value == PM.BUFFERED
    assert BodyMode.BUFFERED_PARTIAL.proto_value == PM.BUFFERED_PARTIAL
    assert BodyMode.FULL_DUPLEX_STREAMED.proto_value == PM.FULL_DUPLEX_STREAMED
    assert BodyMode.from_proto(PM.NONE) is None
    assert BodyMode.from_proto(PM.BUFFERED) is BodyMode.BUFFERED
    assert BodyMode.FULL_DUPLEX_STREAMED.gateway_name == "FullDuplexStreamed"


def test_processing_mode_from_proto_keeps_default_fields() -> None:
    base = ProcessingMode(request_headers=True, response_headers=False, response_trailers=True)
    override = PM(response_header_mode=PM.SEND, response_body_mode=PM.BUFFERED)
    mode = ProcessingMode.from_proto(override, base)
    assert mode == ProcessingMode(request_headers=True, response_headers=True,
                                  response_body=BodyMode.BUFFERED, response_trailers=True)


def test_body_mode_without_hook_is_refused() -> None:
    with pytest.raises(ProcessorDefinitionError, match="on_request_body"):
        class NoHook(Processor):
            request_body_mode = BodyMode.STREAMED


def test_body_hook_without_mode_is_refused() -> None:
    with pytest.raises(ProcessorDefinitionError, match="response_body_mode is None"):
        class NoMode(Processor):
            async def on_response_body(self, body: Body) -> None:
                pass


def test_body_hook_without_mode_allowed_with_mode_override() -> None:
    class PerRequest(Processor):
        allow_mode_override = True

        async def on_response_body(self, body: Body) -> None:
            pass

    assert PerRequest.processing_mode().response_body is None
    assert "response_body" not in PerRequest.processing_mode().phases


def test_body_mode_must_be_body_mode() -> None:
    with pytest.raises(ProcessorDefinitionError, match="must be a BodyMode"):
        class StringMode(Processor):
            request_body_mode = "STREAMED"  # type: ignore[assignment]

            async def on_request_body(self, body: Body) -> None:
                pass


def test_error_status_must_be_one_envoy_sends_as_is() -> None:
    with pytest.raises(ProcessorDefinitionError, match="Envoy answers 200 for any status below"):
        class Early(Processor):
            error_status = 103

            async def on_request_headers(self, headers: Headers) -> None:
                pass

    class Teapot(Processor):  # outside Envoy's HttpStatus enum, yet sent as is
        error_status = 418

        async def on_request_headers(self, headers: Headers) -> None:
            pass

    assert Teapot.filter_spec().error_status == 418
    assert issubclass(ProcessorDefinitionError, TypeError)


def test_filter_spec_is_derived_once_and_read_by_every_consumer():
    class Spec(extproc.Processor):
        response_body_mode = extproc.BodyMode.BUFFERED
        request_attributes = ("source.address",)
        dynamic_metadata_namespaces = ("acme",)
        message_timeout = 0.5
        fail_open = True

        async def on_request_headers(self, headers):
            return None

        async def on_response_body(self, body):
            return None

    spec = extproc.FilterSpec.of(Spec)
    assert spec is Spec.filter_spec() is extproc.FilterSpec.of(Spec)
    assert spec == extproc.derive(Spec)  # pure: deriving again gives the same answer
    assert spec.hooks == {"on_request_headers", "on_response_body"}
    assert spec.mode.phases == ("request_headers", "response_body")
    assert spec.mode is Spec.processing_mode()
    assert (spec.request_attributes, spec.dynamic_metadata_namespaces) == (
        ("source.address",), ("acme",))
    assert (spec.message_timeout, spec.fail_open, spec.buffers_bodies, spec.full_duplex) == (
        0.5, True, True, False)
    with pytest.raises(extproc.ProcessorDefinitionError, match="message_timeout"):
        class BadTimeout(extproc.Processor):
            message_timeout = -1

            async def on_request_headers(self, headers):
                return None


def test_filter_spec_travels_as_json():
    import json

    from tests.helpers.procs import FullDuplexRedact, Metadata
    from tests.helpers.protocol_procs import (
        Everything,
        OnlyBufferedOverride,
        Shadow,
        StreamMetadata,
    )

    for cls in (FullDuplexRedact, Metadata, Everything, Shadow, StreamMetadata,
                OnlyBufferedOverride):
        spec = extproc.FilterSpec.of(cls)
        again = extproc.FilterSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec and extproc.FilterSpec.of(again) is again
