"""Processors for the ext_proc protocol tests: each drives one part of Envoy's protocol, and
each is run both through a real Envoy and in-process by the differential tests."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import extproc
from extproc import Body, BodyMode, Headers, ImmediateResponse, MutationError, ProcessingMode
from tests.helpers.procs import until_exists


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return struct.pack(">?I", False, len(message)) + message


class Reroute(extproc.Processor):
    """``x-go-b`` sets ``x-route: b`` (another route matches it); ``x-clear`` asks Envoy to
    pick the route again; ``x-clear-only`` asks without changing a header."""

    async def on_request_headers(self, headers: Headers) -> None:
        if "x-go-b" in headers:
            headers["x-route"] = "b"
        if "x-clear" in headers or "x-clear-only" in headers:
            self.clear_route_cache()


class RerouteOnAnyChange(Reroute):
    route_cache_action = "clear"


class Status(extproc.Processor):
    """Answers ``x-status`` at once, whatever it is (418, 451, 999 ...)."""

    async def on_request_headers(self, headers: Headers) -> ImmediateResponse | None:
        if "x-status" in headers:
            return ImmediateResponse(int(headers["x-status"]), body=b"status\n")
        return None


def passthrough(mode: BodyMode, with_headers: bool) -> type[extproc.Processor]:
    """Body hooks that change nothing, in ``mode``, with or without a headers hook (classes
    of this module, importable by name: the dynamic module imports them in Envoy)."""
    return _PASSTHROUGH[mode, with_headers]


async def _pass_body(self: extproc.Processor, body: Body) -> None:
    pass


async def _saw_length(self: extproc.Processor, headers: Headers) -> None:
    headers["x-saw-length"] = headers.get("content-length") or "-"


def _passthrough_class(mode: BodyMode, with_headers: bool) -> type[extproc.Processor]:
    name = f"Passthrough{mode.name.title().replace('_', '')}{'Headers' if with_headers else ''}"
    namespace: dict[str, Any] = {"__qualname__": name, "__module__": __name__,
                                 "request_body_mode": mode, "on_request_body": _pass_body}
    if with_headers:
        namespace["on_request_headers"] = _saw_length
    cls = type(name, (extproc.Processor,), namespace)
    globals()[name] = cls
    return cls


_PASSTHROUGH = {(mode, hooked): _passthrough_class(mode, hooked)
                for mode in (BodyMode.STREAMED, BodyMode.BUFFERED, BodyMode.BUFFERED_PARTIAL,
                             BodyMode.FULL_DUPLEX_STREAMED)
                for hooked in (True, False)}


class OverrideUnderFullDuplex(extproc.Processor):
    """Asks for the request body per request; served where the response body is
    FULL_DUPLEX_STREAMED. ``x-force`` sends the override behind the framework's back."""

    allow_mode_override = True

    async def on_request_headers(self, headers: Headers) -> None:
        if "x-force" in headers:
            # What a framework without the check would send: Envoy must drop it.
            self._mode_override = ProcessingMode(request_body=BodyMode.STREAMED,
                                                 response_body=BodyMode.FULL_DUPLEX_STREAMED,
                                                 response_trailers=True)
            return
        try:
            self.override_mode(request_body=BodyMode.STREAMED)
        except MutationError:
            headers["x-override"] = "refused"

    async def on_request_body(self, body: Body) -> None:
        body.data = body.data.upper()


class OnlyBufferedOverride(extproc.Processor):
    """May switch the response body to BUFFERED only; ``x-force`` sends a STREAMED override
    behind the framework's back."""

    allow_mode_override = True
    allowed_override_modes = (ProcessingMode(response_body=BodyMode.BUFFERED),)

    async def on_request_headers(self, headers: Headers) -> None:
        if "x-force" in headers:
            self._mode_override = ProcessingMode(response_body=BodyMode.STREAMED)
            return
        self.override_mode(response_body=BodyMode.BUFFERED)

    async def on_response_headers(self, headers: Headers) -> None:
        pass

    async def on_response_body(self, body: Body) -> None:
        body.data = body.data.upper()


class SlowHook(extproc.Processor):
    """Takes 500 ms with a 200 ms message_timeout; ``x-extend`` asks Envoy for 1.5 s first."""

    message_timeout = 0.2
    max_message_timeout = 2.0

    async def on_request_headers(self, headers: Headers) -> None:
        if "x-extend" in headers:
            await self.extend_timeout(1.5)
        await asyncio.sleep(0.5)
        headers["x-waited"] = "yes"


class SlowWithStatus(SlowHook):
    status_on_error = 503


class NoImmediate(extproc.Processor):
    """Envoy refuses its immediate responses: a denial becomes Envoy's status_on_error."""

    disable_immediate_response = True
    status_on_error = 502

    async def on_request_headers(self, headers: Headers) -> ImmediateResponse | None:
        if "x-deny" in headers:
            return ImmediateResponse(403, body=b"denied\n")
        headers["x-seen"] = "1"
        return None


class Replace(extproc.Processor):
    """Replaces bodies from the headers alone (CONTINUE_AND_REPLACE)."""

    async def on_request_headers(self, headers: Headers) -> None:
        if "x-rewrite-body" in headers:
            headers["x-rewritten"] = "1"
            self.replace_body(b"rewritten from headers")

    async def on_response_headers(self, headers: Headers) -> None:
        assert self.request_headers is not None
        if "x-cached" in self.request_headers:
            headers["x-cache"] = "hit"
            self.replace_body(b"from the cache\n")


class ForwardedMetadata(extproc.Processor):
    """Reports the metadata Envoy forwards as the header ``x-metadata`` (JSON)."""

    forwarding_namespaces = ("extkit.test",)
    typed_forwarding_namespaces = ("extkit.typed",)

    async def on_request_headers(self, headers: Headers) -> None:
        headers["x-metadata"] = json.dumps(self.metadata_context, sort_keys=True)


class StreamMetadata(extproc.Processor):
    """Reports the gRPC metadata of its ``Process`` stream."""

    grpc_initial_metadata = (("x-tenant", "blue"),)

    async def on_request_headers(self, headers: Headers) -> None:
        headers["x-tenant-seen"] = self.grpc_metadata.get("x-tenant", "-")
        headers["x-traceparent-seen"] = self.grpc_metadata.get("traceparent", "-")
        try:
            self.grpc_metadata["x-tenant"] = "red"  # type: ignore[index]
        except TypeError:
            headers["x-read-only"] = "yes"


class Shadow(extproc.Processor):
    """Watches only: slow hooks whose changes Envoy ignores."""

    observability_mode = True
    deferred_close_timeout = 1.0

    async def on_request_headers(self, headers: Headers) -> ImmediateResponse:
        await asyncio.sleep(0.5)
        headers["x-shadow"] = "changed"
        return ImmediateResponse(403)


class HeldShadow(Shadow):
    """Shadow whose hook creates the file ``x-mark`` names once inside, then holds until the
    file ``x-release`` names exists: a test knows the hook is still at work."""

    async def on_request_headers(self, headers: Headers) -> ImmediateResponse:
        with open(headers["x-mark"], "w"):  # noqa: ASYNC230 - a tiny local file, on purpose
            pass
        await until_exists(headers["x-release"])
        headers["x-shadow"] = "changed"
        return ImmediateResponse(403)


class EarlyBody(extproc.Processor):
    """STREAMED request body sent before the headers are answered."""

    request_body_mode = BodyMode.STREAMED
    send_body_without_waiting_for_header_response = True

    async def on_request_headers(self, headers: Headers) -> None:
        await asyncio.sleep(0.05)
        headers["x-early"] = "1"

    async def on_request_body(self, body: Body) -> None:
        body.data = body.data.upper()


class GrpcMessages(extproc.Processor):
    """For Envoy's GRPC body mode (configured by hand): renames the gRPC request message."""

    async def on_request_headers(self, headers: Headers) -> None:
        await asyncio.sleep(0.05)  # the whole unary request is held by the time we answer

    async def on_request_body(self, body: Body) -> None:
        if b"explode" in body.data:
            raise ValueError("a message this processor cannot handle")
        if body.data.startswith(grpc_frame(b"ping")):
            body.data = grpc_frame(b"PONG?")

    allow_mode_override = True  # on_request_body without a class body mode


class FullDuplexFailing(extproc.Processor):
    """Ends its stream with an error (no immediate response) at the headers (``x-boom-headers``)
    or at the first body chunk (``x-boom-body``)."""

    request_body_mode = BodyMode.FULL_DUPLEX_STREAMED
    disable_immediate_response = True

    async def on_request_headers(self, headers: Headers) -> None:
        if "x-boom-headers" in headers:
            raise RuntimeError("failing before any body byte")

    async def on_request_body(self, body: Body) -> None:
        assert self.request_headers is not None
        if "x-boom-body" in self.request_headers:
            raise RuntimeError("failing after the first body byte")


class Everything(extproc.Processor):
    """Every filter field a class decides, set."""

    message_timeout = 0.5
    max_message_timeout = 3.0
    status_on_error = 503
    forwarding_namespaces = ("extkit.test",)
    typed_forwarding_namespaces = ("extkit.typed",)
    grpc_initial_metadata = (("x-tenant", "blue"),)
    route_cache_action = "clear"
    disable_immediate_response = True
    allow_mode_override = True
    allowed_override_modes = (ProcessingMode(response_body=BodyMode.BUFFERED),)
    send_body_without_waiting_for_header_response = True
    response_body_mode = BodyMode.STREAMED

    async def on_request_headers(self, headers: Headers) -> None:
        pass

    async def on_response_body(self, body: extproc.Body) -> None:
        pass

