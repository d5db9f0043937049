"""Standalone Envoy bootstrap for a Processor, built from typed xds-protos messages.

A wrong field fails here, at generation, rather than in Envoy. The ext_proc filter's
processing mode, attributes, mutation rules and metadata namespaces come from the class.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, grpc_service_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as wasm_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import any_pb2, duration_pb2, json_format, wrappers_pb2

from extproc import BodyMode, ProcessingMode, Processor, ServeError
from extproc._config import split_address

from . import filter_order
from .errors import ConfigError
from .ext_proc_options import apply_spec
from .filter_order import FilterPosition
from .session_persistence import SessionPersistence

EXT_PROC_CLUSTER = "extproc"
UPSTREAM_CLUSTER = "upstream"


@dataclass(frozen=True)
class WasmFilter:
    """A proxy-wasm filter: a local module, or one Envoy fetches over HTTP and checks."""

    name: str
    path: str | None = None
    """A local .wasm file."""
    url: str | None = None
    """http(s) URL Envoy downloads the module from; ``sha256`` is then required."""
    sha256: str | None = None
    root_id: str = ""
    configuration: str = ""
    """Plugin configuration handed to ``proxy_on_configure`` (JSON text, usually)."""
    fail_open: bool = False

    def __post_init__(self) -> None:
        if (self.path is None) == (self.url is None):
            raise ConfigError(f"wasm filter {self.name}: give exactly one of path or url")
        if self.url is not None and not self.sha256:
            raise ConfigError(f"wasm filter {self.name}: a remote module needs its sha256")


@dataclass(frozen=True)
class ProcessorTls:
    """TLS from Envoy to a processor served on TCP (``extctl serve --tls-cert ...``)."""

    ca_file: str
    """PEM CA bundle that signed the processor's certificate."""
    cert_file: str | None = None
    """Envoy's client certificate, for a processor that verifies clients (--tls-client-ca)."""
    key_file: str | None = None
    sni: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("a client certificate needs its key, and a key its certificate")


@dataclass(frozen=True)
class EnvoyConfig:
    """What the generated Envoy listens on and talks to."""

    processor: type[Processor] | None
    """The class whose processing mode, attributes and rules configure the filter
    (None: no ext_proc filter at all, Envoy alone)."""
    processor_addresses: Sequence[str]
    """Every worker's Unix socket path or host:port (``ServerConfig.addresses()``)."""
    processor_tls: ProcessorTls | None = None
    """TLS to the processor (TCP addresses only)."""
    processing_mode: ProcessingMode | None = None
    """Send these phases instead of the class's own (None: the class's derived mode)."""
    upstream: str | Sequence[str] | None = None
    """host:port of the upstream, or several (balanced round-robin, or by ``session``);
    None answers every request with ``direct_response``."""
    session: SessionPersistence | None = None
    """Consistent hashing to the upstreams: a ring-hash/maglev cluster and a route hash policy."""
    listen: str = "127.0.0.1:0"
    """Listener host:port (port 0: Envoy picks one; the runner reads it back)."""
    admin: str = "127.0.0.1:0"
    """Admin host:port, loopback only."""
    failure_mode_allow: bool = False
    """Envoy continues without the processor when it is unreachable or errors."""
    message_timeout: float | None = None
    """Seconds Envoy waits per answer; default: the class's ``message_timeout`` or 200 ms."""
    route_headers: Sequence[tuple[str, str]] = field(default_factory=tuple)
    """Headers the route adds upstream (values may use Envoy's %...% formatters)."""
    max_grpc_message_bytes: int = 32 * 1024 * 1024
    """Largest ext_proc answer Envoy accepts (a BUFFERED body comes back in one message)."""
    buffer_limit_bytes: int | None = None
    """Listener/cluster buffer limit, which is also the largest BUFFERED body; default: 32 MiB
    when the processor buffers bodies, else Envoy's own 1 MiB (a large limit per connection is
    memory a client can make Envoy hold)."""
    access_log: bool = False
    """Log each request to Envoy's stdout."""
    allow_cidrs: Sequence[str] = ()
    """Only clients in these CIDRs get through (RBAC); empty: no allow list."""
    deny_cidrs: Sequence[str] = ()
    """Clients in these CIDRs are refused with 403 (checked before ``allow_cidrs``)."""
    xff_num_trusted_hops: int = 0
    """Take the client address this many hops back in X-Forwarded-For (for RBAC and logs)."""
    wasm: Sequence[WasmFilter] = ()
    """proxy-wasm filters, in this order among themselves."""
    filter_order: Sequence[FilterPosition] = ()
    """Moves applied to Envoy Gateway's default order (ext_proc, wasm, rbac, router)."""
    http1_trailers: bool = False
    """Accept and forward HTTP/1.1 chunked trailers (Envoy drops them by default)."""
    preserve_external_request_id: bool = False
    """Keep a client's x-request-id (an edge Envoy replaces it by default)."""


def _any(message: Any) -> Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _socket_address(address: str) -> Any:
    host, port = split_address(address)
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(
        address=host, port_value=port))


def _is_socket_path(address: str) -> bool:
    """A Unix socket path rather than host:port."""
    return ":" not in address or address.startswith(("/", "."))


def _endpoint_address(address: str) -> Any:
    if not _is_socket_path(address):
        return _socket_address(address)
    return address_pb2.Address(pipe=address_pb2.Pipe(path=address))


def _seconds(value: float) -> Any:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def ext_proc_filter(config: EnvoyConfig) -> Any:
    """The ``envoy.filters.http.ext_proc`` filter configured from the Processor class."""
    cls = config.processor
    assert cls is not None
    timeout = config.message_timeout or cls.message_timeout
    mode = config.processing_mode or cls.processing_mode()
    grpc = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
            cluster_name=EXT_PROC_CLUSTER,
            max_receive_message_length={"value": config.max_grpc_message_bytes}),
    )
    filter_config = ext_proc_pb2.ExternalProcessor(
        grpc_service=grpc,
        failure_mode_allow=config.failure_mode_allow,
        processing_mode=mode.to_proto(),
        request_attributes=list(cls.request_attributes),
        response_attributes=list(cls.response_attributes),
        allow_mode_override=cls.allow_mode_override,
    )
    if timeout is not None:
        filter_config.message_timeout.CopyFrom(_seconds(timeout))
    if cls.allow_routing_mutations or cls.allow_envoy_mutations:
        filter_config.mutation_rules.allow_all_routing.value = cls.allow_routing_mutations
        filter_config.mutation_rules.allow_envoy.value = cls.allow_envoy_mutations
    if cls.dynamic_metadata_namespaces:
        filter_config.metadata_options.receiving_namespaces.untyped.extend(
            cls.dynamic_metadata_namespaces)
    apply_spec(filter_config, cls.filter_spec())
    return hcm_pb2.HttpFilter(name=f"envoy.filters.http.ext_proc/{cls.__name__.lower()}",
                              typed_config=_any(filter_config))


def _loopback(address: str) -> None:
    host, _ = split_address(address)
    if not _is_ip(host):
        raise ConfigError(f"admin address {address}: give an IP address (127.0.0.1:PORT); "
                          "Envoy does not resolve names for its own addresses")
    if not ipaddress.ip_address(host).is_loopback:
        raise ConfigError(f"admin address {address}: the admin interface can stop Envoy and "
                          "read its secrets; keep it on loopback (127.0.0.1:PORT)")


def _buffer_limit(config: EnvoyConfig) -> int:
    if config.buffer_limit_bytes is not None:
        return config.buffer_limit_bytes
    mode = (config.processing_mode or config.processor.processing_mode()
            if config.processor is not None else None)
    buffered = mode is not None and any(
        body in (BodyMode.BUFFERED, BodyMode.BUFFERED_PARTIAL)
        for body in (mode.request_body, mode.response_body))
    return 32 * 1024 * 1024 if buffered else 1024 * 1024


def bootstrap(config: EnvoyConfig) -> Any:
    """A complete Bootstrap: listener -> HCM -> filters (rbac, wasm, ext_proc in Envoy Gateway's
    order, ``filter_order`` applied) -> router -> upstream cluster."""
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"))
    upstreams = _upstreams(config)
    if not upstreams:
        if config.session is not None:
            raise ConfigError("session persistence needs upstreams to choose between")
        route.direct_response.status = 200
        route.direct_response.body.inline_string = "ok\n"
    else:
        route.route.cluster = UPSTREAM_CLUSTER
        route.route.timeout.CopyFrom(_seconds(60))
        if config.session is not None:
            route.route.hash_policy.append(hash_policy(config.session))
    for name, value in config.route_headers:
        route.request_headers_to_add.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name, value=value),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="ingress",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=route_pb2.RouteConfiguration(
            name="local",
            virtual_hosts=[route_components_pb2.VirtualHost(
                name="any", domains=["*"], routes=[route])]),
        http_filters=[
            *http_filters(config),
            hcm_pb2.HttpFilter(name="envoy.filters.http.router",
                               typed_config=_any(router_pb2.Router())),
        ],
    )
    if config.http1_trailers:
        manager.http_protocol_options.enable_trailers = True
    if config.preserve_external_request_id:
        manager.preserve_external_request_id = True
    # The client address is the peer's, or the one ``xff_num_trusted_hops`` back in
    # X-Forwarded-For; never a header a client may write (RBAC would trust it otherwise).
    manager.use_remote_address.value = True
    if config.xff_num_trusted_hops:
        manager.xff_num_trusted_hops = config.xff_num_trusted_hops
    if config.access_log:
        manager.access_log.append(accesslog_pb2.AccessLog(
            name="envoy.access_loggers.stdout", typed_config=_any(stream_pb2.StdoutAccessLog())))
    listener = listener_pb2.Listener(
        name="http",
        address=_socket_address(config.listen),
        per_connection_buffer_limit_bytes={"value": _buffer_limit(config)},
        filter_chains=[listener_components_pb2.FilterChain(filters=[
            listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager",
                                           typed_config=_any(manager))])],
    )
    http2 = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options={}))
    clusters = [] if config.processor is None else [cluster_pb2.Cluster(
        name=EXT_PROC_CLUSTER,
        type=_discovery(config.processor_addresses),
        connect_timeout=_seconds(1),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        per_connection_buffer_limit_bytes={"value": _buffer_limit(config)},
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(http2)},
        load_assignment=_load_assignment(EXT_PROC_CLUSTER, config.processor_addresses),
    )]
    if config.processor_tls is not None and clusters:
        if any(_is_socket_path(a) for a in config.processor_addresses):
            raise ConfigError("TLS to the processor applies to TCP addresses, not Unix sockets")
        clusters[0].transport_socket.CopyFrom(_processor_tls(config.processor_tls))
    for index, wasm in enumerate(config.wasm):
        if wasm.url is not None:
            clusters.append(_url_cluster(f"wasm_source_{index}", wasm.url))
    if upstreams:
        upstream = cluster_pb2.Cluster(
            name=UPSTREAM_CLUSTER,
            type=_discovery(upstreams),
            connect_timeout=_seconds(1),
            per_connection_buffer_limit_bytes={"value": _buffer_limit(config)},
            load_assignment=_load_assignment(UPSTREAM_CLUSTER, upstreams),
        )
        if config.session is not None:
            upstream.lb_policy = (cluster_pb2.Cluster.MAGLEV if config.session.algorithm
                                  == "maglev" else cluster_pb2.Cluster.RING_HASH)
        if config.http1_trailers:
            http1 = http_protocol_options_pb2.HttpProtocolOptions()
            http1.explicit_http_config.http_protocol_options.enable_trailers = True
            upstream.typed_extension_protocol_options[
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(_any(http1))
        clusters.append(upstream)
    _loopback(config.admin)
    if not _is_ip(split_address(config.listen)[0]):
        raise ConfigError(f"listen address {config.listen}: give an IP address "
                          "(0.0.0.0:PORT for every interface)")
    return bootstrap_pb2.Bootstrap(
        admin=bootstrap_pb2.Admin(address=_socket_address(config.admin)),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(
            listeners=[listener], clusters=clusters),
    )


def _upstreams(config: EnvoyConfig) -> list[str]:
    if config.upstream is None:
        return []
    upstreams = [config.upstream] if isinstance(config.upstream, str) else list(config.upstream)
    for address in upstreams:
        try:
            split_address(address)
        except ServeError as exc:
            raise ConfigError(f"upstream {exc}") from None
    return upstreams


def hash_policy(session: SessionPersistence) -> Any:
    """The route hash policy: what makes two requests go to the same upstream."""
    policy = route_components_pb2.RouteAction.HashPolicy(terminal=True)
    if session.by == "SourceIP":
        policy.connection_properties.source_ip = True
    elif session.by == "Header":
        policy.header.header_name = session.name or ""
    else:
        policy.cookie.name = session.name or ""
        if session.ttl_seconds is not None:
            # With a TTL, Envoy sets the cookie when the request lacks it.
            policy.cookie.ttl.CopyFrom(_seconds(session.ttl_seconds))
            policy.cookie.path = "/"
    return policy


def http_filters(config: EnvoyConfig) -> list[Any]:
    """The HTTP filters before the router: Envoy Gateway's default order, then the moves."""
    filters = [
        *rbac_filters(config),
        *(wasm_filter(w, i) for i, w in enumerate(config.wasm)),
        *([ext_proc_filter(config)] if config.processor is not None else []),
    ]
    by_name = {f.name: f for f in filters}
    if len(by_name) != len(filters):
        raise ConfigError("two filters share a name: give each Wasm module its own name")
    return [by_name[n] for n in filter_order.order(list(by_name), config.filter_order)]


def _cidr_principals(cidrs: Sequence[str]) -> list[Any]:
    principals = []
    for cidr in cidrs:
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError:
            raise ConfigError(f"{cidr!r} is not a CIDR such as 10.0.0.0/8") from None
        principal = rbac_config_pb2.Principal()
        # remote_ip: the client address after X-Forwarded-For trusted hops are applied.
        principal.remote_ip.address_prefix = str(network.network_address)
        principal.remote_ip.prefix_len.value = network.prefixlen
        principals.append(principal)
    return principals


def rbac_filters(config: EnvoyConfig) -> list[Any]:
    """A DENY filter for ``deny_cidrs``, then an ALLOW filter for ``allow_cidrs``."""
    filters = []
    for action, cidrs in (("DENY", config.deny_cidrs), ("ALLOW", config.allow_cidrs)):
        if not cidrs:
            continue
        rules = rbac_config_pb2.RBAC(action=rbac_config_pb2.RBAC.Action.Value(action))
        policy = rules.policies[f"{action.lower()}-cidrs"]
        policy.permissions.add().any = True
        policy.principals.extend(_cidr_principals(cidrs))
        filters.append(hcm_pb2.HttpFilter(
            name=f"envoy.filters.http.rbac/{action.lower()}-cidrs",
            typed_config=_any(rbac_filter_pb2.RBAC(rules=rules))))
    return filters


def wasm_filter(wasm: WasmFilter, index: int) -> Any:
    """The ``envoy.filters.http.wasm`` filter for one module (v8 runtime)."""
    plugin = wasm_pb2.PluginConfig(name=wasm.name, root_id=wasm.root_id, fail_open=wasm.fail_open)
    vm = plugin.vm_config
    vm.vm_id = wasm.name
    vm.runtime = "envoy.wasm.runtime.v8"
    if wasm.path is not None:
        vm.code.local.filename = wasm.path
    else:
        remote = vm.code.remote
        remote.http_uri.uri = wasm.url or ""
        remote.http_uri.cluster = f"wasm_source_{index}"
        remote.http_uri.timeout.CopyFrom(_seconds(10))
        remote.sha256 = (wasm.sha256 or "").removeprefix("sha256:")
    if wasm.configuration:
        plugin.configuration.Pack(wrappers_pb2.StringValue(value=wasm.configuration))
    return hcm_pb2.HttpFilter(name=f"envoy.filters.http.wasm/{wasm.name}",
                              typed_config=_any(wasm_filter_pb2.Wasm(config=plugin)))


def _processor_tls(tls: ProcessorTls) -> Any:
    context = tls_pb2.UpstreamTlsContext(sni=tls.sni or "")
    common = context.common_tls_context
    common.alpn_protocols.append("h2")  # gRPC
    common.validation_context.trusted_ca.filename = tls.ca_file
    if tls.cert_file and tls.key_file:
        certificate = common.tls_certificates.add()
        certificate.certificate_chain.filename = tls.cert_file
        certificate.private_key.filename = tls.key_file
    socket = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    socket.typed_config.Pack(context)
    return socket


def _url_cluster(name: str, url: str) -> Any:
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    cluster = cluster_pb2.Cluster(
        name=name, type=cluster_pb2.Cluster.STRICT_DNS, connect_timeout=_seconds(2),
        load_assignment=_load_assignment(name, [f"{parsed.hostname}:{port}"]))
    if parsed.scheme == "https":
        tls = tls_pb2.UpstreamTlsContext(sni=parsed.hostname or "")
        # The sha256 protects the module; the system CAs check who serves it too.
        tls.common_tls_context.validation_context.system_root_certs.SetInParent()
        cluster.transport_socket.name = "envoy.transport_sockets.tls"
        cluster.transport_socket.typed_config.Pack(tls)
    return cluster


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _discovery(addresses: Sequence[str]) -> Any:
    """STATIC for IPs and Unix sockets; STRICT_DNS when a name must be resolved."""
    named = any(not _is_socket_path(a) and not _is_ip(split_address(a)[0])
                for a in addresses)
    return cluster_pb2.Cluster.STRICT_DNS if named else cluster_pb2.Cluster.STATIC


def _load_assignment(name: str, addresses: Sequence[str]) -> Any:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
            endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
                address=_endpoint_address(a))) for a in addresses])],
    )


def to_yaml(message: Any) -> str:
    """Serialise a config message as YAML (the form people read and commit)."""
    import yaml

    data = json.loads(to_json(message))  # plain dicts (Any fields come back as OrderedDict)
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def to_json(message: Any) -> str:
    """Serialise a config message the way Envoy reads it (JSON is valid YAML)."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2)
