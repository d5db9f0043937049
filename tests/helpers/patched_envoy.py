"""A real Envoy in front of a processor, with the generated config changed by hand where a
test needs what the generator does not write (more routes, a filter before ext_proc, a gRPC
upstream, a body mode no class may ask for)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from envoy.config.route.v3 import route_components_pb2
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

import extproc
from extctl.config import Deployment
from extctl.config.envoy import UPSTREAM_CLUSTER
from extctl.harness.envoy import EnvoyProcess
from extctl.harness.stack import MODULE, in_envoy
from extctl.testing import Stack

Patch = Callable[[Any], None]


@contextlib.contextmanager
def manager(config: Any) -> Iterator[Any]:
    """The HttpConnectionManager of the first listener, packed back after the block."""
    packed = config.static_resources.listeners[0].filter_chains[0].filters[0].typed_config
    hcm = hcm_pb2.HttpConnectionManager()
    packed.Unpack(hcm)
    yield hcm
    packed.Pack(hcm)


@contextlib.contextmanager
def ext_proc(config: Any) -> Iterator[Any]:
    """The ext_proc filter's ExternalProcessor message, packed back after the block."""
    with manager(config) as hcm:
        (found,) = [f for f in hcm.http_filters if f.name.startswith("envoy.filters.http.ext_proc")]
        message = ext_proc_pb2.ExternalProcessor()
        found.typed_config.Unpack(message)
        yield message
        found.typed_config.Pack(message)


def route_on_header(name: str, value: str, body: str) -> Patch:
    """A route before the catch-all: requests with ``name: value`` get ``body`` from Envoy."""

    def patch(config: Any) -> None:
        with manager(config) as hcm:
            routes = hcm.route_config.virtual_hosts[0].routes
            route = route_components_pb2.Route()
            route.match.prefix = "/"
            header = route.match.headers.add()
            header.name = name
            header.string_match.exact = value
            route.direct_response.status = 200
            route.direct_response.body.inline_string = body
            routes.insert(0, route)

    return patch


def filter_first(name: str, message: Any) -> Patch:
    """An HTTP filter before every other one (ext_proc included)."""

    def patch(config: Any) -> None:
        with manager(config) as hcm:
            added = hcm_pb2.HttpFilter(name=name)
            added.typed_config.Pack(message)
            hcm.http_filters.insert(0, added)

    return patch


def tracing(config: Any) -> None:
    """OpenTelemetry tracing of every request (spans are exported nowhere useful: the test
    looks at the trace context Envoy propagates, not at the spans)."""
    otel = opentelemetry_pb2.OpenTelemetryConfig(service_name="extkit-test")
    otel.grpc_service.envoy_grpc.cluster_name = "extproc"  # an HTTP/2 cluster that exists
    with manager(config) as hcm:
        hcm.tracing.provider.name = "envoy.tracers.opentelemetry"
        hcm.tracing.provider.typed_config.Pack(otel)
        hcm.tracing.random_sampling.value = 100


def http2_upstream(config: Any) -> None:
    """Talk HTTP/2 to the upstream cluster (a gRPC server)."""
    (cluster,) = [c for c in config.static_resources.clusters if c.name == UPSTREAM_CLUSTER]
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.SetInParent()
    cluster.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Pack(options)


def envoy_config(processor: type[extproc.Processor], addresses: list[str],
                 upstream: str | None, **options: Any) -> Any:
    """The standalone Envoy bootstrap ``gen envoy`` writes for ``processor``."""
    return Deployment.build(processor, addresses=addresses,
                            upstreams=[upstream] if upstream else [], **options).envoy_bootstrap()


@contextlib.contextmanager
def patched_stack(processor: type[extproc.Processor], sock_dir: Path, upstream: str | None,
                  *patches: Patch, transport: str = "grpcio", **options: Any) -> Iterator[Stack]:
    """:func:`extctl.testing.stack` with ``patches`` applied to the bootstrap; ``options``
    as for ``Deployment.build``. ``transport="module"``: the class inside Envoy (the dynamic
    module), with no server of ours."""
    if transport == MODULE:
        module, env = in_envoy(processor)
        config = Deployment.build(processor, dynamic_module=module,
                                  upstreams=[upstream] if upstream else [],
                                  **options).envoy_bootstrap()
        for patch in patches:
            patch(config)
        with EnvoyProcess(config, sock_dir / "envoy", env=env) as envoy:
            yield Stack(None, envoy)
        return
    socket_path = str(sock_dir / "p.sock")
    with extproc.ServerThread(processor, uds=socket_path, transport=transport) as server:
        config = envoy_config(processor, [socket_path], upstream, **options)
        for patch in patches:
            patch(config)
        with EnvoyProcess(config, sock_dir / "envoy") as envoy:
            yield Stack(server, envoy)
