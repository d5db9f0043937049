"""Differential: the same processor and request through a real Envoy and through
``extproc.testing``, compared on what the client and the upstream saw.

Each case is one ext_proc protocol rule (route cache, statuses, content-length, mode overrides,
timeouts, replaced bodies, forwarded metadata ...): the in-process driver must do what Envoy does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from envoy.extensions.filters.http.set_metadata.v3 import set_metadata_pb2
from google.protobuf import wrappers_pb2

import extproc
from extctl.config.dynamic_module import check_runnable
from extctl.config.errors import ConfigError
from extctl.testing import Reply
from extproc import BodyMode, ProcessingMode
from extproc.testing import Result, run
from tests.helpers.patched_envoy import Patch, filter_first, patched_stack, route_on_header
from tests.helpers.protocol_procs import (
    EarlyBody,
    ForwardedMetadata,
    NoImmediate,
    OnlyBufferedOverride,
    OverrideUnderFullDuplex,
    Replace,
    Reroute,
    RerouteOnAnyChange,
    Shadow,
    SlowHook,
    SlowWithStatus,
    Status,
    StreamMetadata,
    passthrough,
)

pytestmark = pytest.mark.envoy

ROUTE_B = b"route b\n"
FULL_DUPLEX_RESPONSE = ProcessingMode(request_headers=True,
                                      response_body=BodyMode.FULL_DUPLEX_STREAMED,
                                      response_trailers=True)


def _metadata_filter() -> Any:
    config = set_metadata_pb2.Config()
    untyped = config.metadata.add(metadata_namespace="extkit.test")
    untyped.value.update({"tenant": "blue"})
    typed = config.metadata.add(metadata_namespace="extkit.typed")
    typed.typed_value.Pack(wrappers_pb2.StringValue(value="typed-blue"))
    return config


@dataclass
class Case:
    id: str
    processor: type[extproc.Processor]
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "GET"
    body: bytes | None = None
    patches: tuple[Patch, ...] = ()
    mode: ProcessingMode | None = None
    """Envoy's processing mode when not the class's own (a hand-written config)."""
    upstream_headers: tuple[str, ...] = ()
    """Headers compared as the upstream received them."""
    client_headers: tuple[str, ...] = ()
    upstream_chunks: list[str] | None = None
    """The upstream's answer (``x-echo-chunks``); its body is then compared too."""
    route: Callable[[Result], bytes | None] | None = None
    """The in-process model of extra routes: a direct response body, or None for upstream."""
    inproc: dict[str, Any] = field(default_factory=dict)


def _rerouted(result: Result) -> bytes | None:
    assert result.request is not None
    if result.route_cache_cleared and result.request.headers.get("x-route") == "b":
        return ROUTE_B
    return None


REROUTE = (route_on_header("x-route", "b", ROUTE_B.decode()),)
CASES = [
    Case("clear-route-cache-reroutes", Reroute, {"x-go-b": "1", "x-clear": "1"},
         patches=REROUTE, route=_rerouted),
    Case("header-change-alone-keeps-route", Reroute, {"x-go-b": "1"}, patches=REROUTE,
         route=_rerouted, upstream_headers=("x-route",)),
    Case("clear-without-change-keeps-route", Reroute, {"x-clear-only": "1"},
         patches=REROUTE, route=_rerouted, upstream_headers=("x-route",)),
    Case("route-cache-action-clear", RerouteOnAnyChange, {"x-go-b": "1"}, patches=REROUTE,
         route=_rerouted),
    Case("status-418", Status, {"x-status": "418"}),
    Case("status-451", Status, {"x-status": "451"}),
    Case("status-999", Status, {"x-status": "999"}),
    Case("status-100-fails-closed", Status, {"x-status": "100"}),
    *[Case(f"content-length-{mode.name.lower()}{'-headers' if hooked else ''}",
           passthrough(mode, hooked), method="POST", body=b"hello",
           upstream_headers=("content-length", "x-saw-length"))
      for mode in (BodyMode.STREAMED, BodyMode.BUFFERED, BodyMode.BUFFERED_PARTIAL,
                   BodyMode.FULL_DUPLEX_STREAMED)
      for hooked in (True, False)],
    Case("mode-override-refused-under-full-duplex", OverrideUnderFullDuplex, method="POST",
         body=b"abc", mode=FULL_DUPLEX_RESPONSE, upstream_headers=("x-override",)),
    Case("mode-override-dropped-under-full-duplex", OverrideUnderFullDuplex, {"x-force": "1"},
         method="POST", body=b"abc", mode=FULL_DUPLEX_RESPONSE),
    Case("allowed-override-applied", OnlyBufferedOverride, upstream_chunks=["ab", "c"]),
    Case("override-outside-allowed-dropped", OnlyBufferedOverride, {"x-force": "1"},
         upstream_chunks=["ab", "c"]),
    Case("slow-hook-times-out", SlowHook),
    Case("slow-hook-with-extension", SlowHook, {"x-extend": "1"},
         upstream_headers=("x-waited",)),
    Case("timeout-with-status-on-error", SlowWithStatus),
    Case("immediate-response-disabled", NoImmediate, {"x-deny": "1"}),
    Case("immediate-response-disabled-pass", NoImmediate, upstream_headers=("x-seen",)),
    Case("replace-request-body", Replace, {"x-rewrite-body": "1"}, method="POST",
         body=b"original", upstream_headers=("content-length", "x-rewritten")),
    Case("replace-response-body", Replace, {"x-cached": "1"}, upstream_chunks=["upstream"],
         client_headers=("x-cache", "content-length")),
    Case("forwarded-metadata", ForwardedMetadata, patches=(
        filter_first("envoy.filters.http.set_metadata", _metadata_filter()),),
        upstream_headers=("x-metadata",),
        inproc={"metadata_context": {"extkit.test": {"tenant": "blue"}},
                "typed_metadata_context": {
                    "extkit.typed": wrappers_pb2.StringValue(value="typed-blue")}}),
    Case("grpc-initial-metadata", StreamMetadata,
         upstream_headers=("x-tenant-seen", "x-read-only")),
    Case("observability-mode-changes-nothing", Shadow, upstream_headers=("x-shadow",)),
    Case("body-without-waiting-for-headers", EarlyBody, method="POST", body=b"early body",
         upstream_headers=("x-early",)),
]


def _through_envoy(case: Case, sock_dir: Any, echo: Any,
                   transport: str = "grpcio") -> dict[str, Any]:
    options: dict[str, Any] = {"processing_mode": case.mode} if case.mode else {}
    headers = dict(case.headers)
    if case.upstream_chunks is not None:
        headers["x-echo-chunks"] = json.dumps(case.upstream_chunks)
    with patched_stack(case.processor, sock_dir, echo.address, *case.patches,
                       transport=transport, **options) as s:
        reply = s.get("/p", method=case.method, headers=headers, body=case.body)
    return _envoy_view(case, reply)


def _envoy_view(case: Case, reply: Reply) -> dict[str, Any]:
    reached = "x-echo-server" in reply.headers
    view: dict[str, Any] = {"status": reply.status, "reached": reached}
    if reached and case.upstream_chunks is None:
        echoed = reply.json()
        seen = reply.upstream_headers()
        view["upstream_body"] = echoed["body"].encode("latin-1")
        view["upstream_headers"] = {name: seen.get(name) for name in case.upstream_headers}
    else:
        view["client_body"] = reply.body
    view["client_headers"] = {name: reply.headers.get(name) for name in case.client_headers}
    return view


async def _in_process(case: Case) -> dict[str, Any]:
    chunks = [c.encode() for c in case.upstream_chunks or []]
    result = await run(case.processor, method=case.method, path="/p", headers=case.headers,
                       body=case.body or b"", response_body=chunks, mode=case.mode,
                       **case.inproc)
    direct = case.route(result) if case.route is not None and result.request else None
    reached = result.request is not None and direct is None and not result.immediate
    view: dict[str, Any] = {"status": 200 if direct else result.status, "reached": reached}
    if reached and case.upstream_chunks is None:
        assert result.request is not None
        upstream = result.request
        view["upstream_body"] = upstream.body
        view["upstream_headers"] = {
            name: upstream.headers.get_all(name) or None for name in case.upstream_headers}
    else:
        view["client_body"] = direct if direct is not None else result.response.body
    response = result.response.headers
    view["client_headers"] = {name: _joined(response, name) for name in case.client_headers}
    return view


def _joined(headers: Mapping[str, str], name: str) -> str | None:
    return headers.get(name)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_envoy_and_in_process_driver_agree(case: Case, sock_dir: Any, echo: Any) -> None:
    expected = _through_envoy(case, sock_dir, echo)
    assert await _in_process(case) == expected


# What a hook sends while it runs (a timeout extension) and what it reads of the stream
# (its gRPC metadata) go through the transport's own code: both on pyvoy too.
ON_PYVOY = [c for c in CASES if c.id in ("slow-hook-times-out", "slow-hook-with-extension",
                                         "grpc-initial-metadata")]


@pytest.mark.parametrize("case", ON_PYVOY, ids=[c.id for c in ON_PYVOY])
async def test_the_pyvoy_transport_agrees_too(case: Case, sock_dir: Any, echo: Any) -> None:
    assert _through_envoy(case, sock_dir, echo, "pyvoy") == await _in_process(case)


def _runs_in_the_module(case: Case) -> bool:
    try:
        check_runnable(case.processor.filter_spec())
    except ConfigError:
        return False
    return case.mode is None


# Every case whose class the dynamic module runs (refusing the others before any Envoy sees
# them: test_dynamic_module.py), with the class inside Envoy: its bodies, content-length,
# statuses, timeouts and route cache as Envoy's ext_proc filter has them.
IN_THE_MODULE = [c for c in CASES if _runs_in_the_module(c)]


@pytest.mark.parametrize("case", IN_THE_MODULE, ids=[c.id for c in IN_THE_MODULE])
async def test_the_dynamic_module_agrees_too(case: Case, sock_dir: Any, echo: Any) -> None:
    assert _through_envoy(case, sock_dir, echo, "module") == await _in_process(case)
