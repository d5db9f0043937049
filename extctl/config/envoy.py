"""The standalone Envoy bootstrap of a :class:`Deployment`, built from typed xds-protos messages.

A wrong field fails here, at generation, rather than in Envoy. The ext_proc filter's
processing mode, attributes, mutation rules and metadata namespaces come from the class's
:class:`extproc.FilterSpec`.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from collections.abc import Sequence
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    grpc_service_pb2,
    health_check_pb2,
    substitution_format_string_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.dynamic_modules.v3 import dynamic_modules_pb2
from envoy.extensions.filters.http.dynamic_modules.v3 import (
    dynamic_modules_pb2 as dynamic_modules_filter_pb2,
)
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.set_metadata.v3 import set_metadata_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as wasm_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import any_pb2, duration_pb2, json_format, struct_pb2, wrappers_pb2

from wasm.configured import Configured

from .dynamic_module import FILTER_NAME
from .errors import ConfigError
from .ext_proc import apply_spec
from .filter_order import order
from .health_check import PROCESSOR, SERVICE
from .model import DeploymentData as Deployment
from .model import ProcessorTls
from .net import host_port, is_ip, is_socket_path
from .session import SessionPersistence
from .wasm import WasmModule

EXT_PROC_CLUSTER = "extproc"
UPSTREAM_CLUSTER = "upstream"
#: The keys of a JSON access log line (``EnvoyOptions.access_log_file``) and what Envoy puts
#: there: numbers for status and duration (ms), the request's path before any rewrite.
ACCESS_LOG_FIELDS = {
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "status": "%RESPONSE_CODE%",
    "duration_ms": "%DURATION%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
}


def _any(message: Any) -> Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _socket_address(address: str) -> Any:
    host, port = host_port(address, "address")
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(
        address=host, port_value=port))


def _endpoint_address(address: str) -> Any:
    if not is_socket_path(address):
        return _socket_address(address)
    return address_pb2.Address(pipe=address_pb2.Pipe(path=address))


def _seconds(value: float) -> Any:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def dynamic_module_filter(deployment: Deployment) -> Any:
    """The ``dynamic_modules`` filter running the processor's class in this Envoy (the extkit
    module, found as ``lib<name>.so`` in ``ENVOY_DYNAMIC_MODULES_SEARCH_PATH``; kept loaded:
    an embedded interpreter cannot be unloaded)."""
    module, spec = deployment.dynamic_module, deployment.spec
    assert module is not None and spec is not None
    config = dynamic_modules_filter_pb2.DynamicModuleFilter(
        dynamic_module_config=dynamic_modules_pb2.DynamicModuleConfig(
            name=module.module_name, do_not_close=True),
        filter_name=FILTER_NAME,
        filter_config=_any(wrappers_pb2.StringValue(value=json.dumps(
            deployment.module_config(), separators=(",", ":")))))
    return hcm_pb2.HttpFilter(name=f"envoy.filters.http.dynamic_modules/{spec.name.lower()}",
                              typed_config=_any(config))


def ext_proc_filter(deployment: Deployment) -> Any:
    """The ``envoy.filters.http.ext_proc`` filter configured from the class's FilterSpec."""
    spec = deployment.spec
    assert spec is not None
    policy = deployment.policy
    timeout = policy.message_timeout or spec.message_timeout
    grpc = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
            cluster_name=EXT_PROC_CLUSTER,
            max_receive_message_length={"value": deployment.envoy.max_grpc_message_bytes}),
    )
    filter_config = ext_proc_pb2.ExternalProcessor(
        grpc_service=grpc,
        failure_mode_allow=policy.fail_open,
        processing_mode=spec.mode.to_proto(),
        request_attributes=list(spec.request_attributes),
        response_attributes=list(spec.response_attributes),
        allow_mode_override=spec.allow_mode_override,
    )
    if timeout is not None:
        filter_config.message_timeout.CopyFrom(_seconds(timeout))
    if spec.allow_routing_mutations or spec.allow_envoy_mutations:
        filter_config.mutation_rules.allow_all_routing.value = spec.allow_routing_mutations
        filter_config.mutation_rules.allow_envoy.value = spec.allow_envoy_mutations
    if spec.dynamic_metadata_namespaces:
        filter_config.metadata_options.receiving_namespaces.untyped.extend(
            spec.dynamic_metadata_namespaces)
    apply_spec(filter_config, spec)
    if deployment.envoy.request_id_to_processor:
        filter_config.grpc_service.initial_metadata.add(key="x-request-id",
                                                        value="%REQ(x-request-id)%")
    return hcm_pb2.HttpFilter(name=f"envoy.filters.http.ext_proc/{spec.name.lower()}",
                              typed_config=_any(filter_config))


def processor_health_check() -> Any:
    """The ext_proc cluster's active check: ``grpc.health.v1`` for the ext_proc service on
    every worker (SERVING, or NOT_SERVING while it drains), timed by :data:`PROCESSOR`."""
    timings = PROCESSOR
    return health_check_pb2.HealthCheck(
        timeout=_seconds(timings.timeout),
        interval=_seconds(timings.interval),
        no_traffic_interval=_seconds(timings.no_traffic_interval),
        unhealthy_threshold={"value": timings.unhealthy_threshold},
        healthy_threshold={"value": timings.healthy_threshold},
        grpc_health_check=health_check_pb2.HealthCheck.GrpcHealthCheck(service_name=SERVICE),
    )


def _loopback(address: str) -> None:
    host, _ = host_port(address, "admin address")
    if not is_ip(host):
        raise ConfigError(f"admin address {address}: give an IP address (127.0.0.1:PORT); "
                          "Envoy does not resolve names for its own addresses")
    if not ipaddress.ip_address(host).is_loopback:
        raise ConfigError(f"admin address {address}: the admin interface can stop Envoy and "
                          "read its secrets; keep it on loopback (127.0.0.1:PORT)")


def _buffer_limit(deployment: Deployment) -> int:
    if deployment.envoy.buffer_limit_bytes is not None:
        return deployment.envoy.buffer_limit_bytes
    spec = deployment.spec
    return 32 * 1024 * 1024 if spec is not None and spec.buffers_bodies else 1024 * 1024


def bootstrap(deployment: Deployment) -> Any:
    """A complete Bootstrap: listener -> HCM -> filters (rbac, wasm, ext_proc in Envoy Gateway's
    order, the policy's ``filter_order`` applied) -> router -> upstream cluster."""
    options, policy = deployment.envoy, deployment.policy
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"))
    upstreams = _upstreams(deployment)
    configured = options.configured
    if not upstreams and "xds.cluster_metadata" in configured.metadata:
        raise ConfigError("xds.cluster_metadata is the upstream cluster's: give upstreams "
                          "(without, the route answers itself and has no cluster)")
    if not upstreams:
        if policy.session is not None:
            raise ConfigError("session persistence needs upstreams to choose between")
        route.direct_response.status = 200
        route.direct_response.body.inline_string = "ok\n"
    else:
        route.route.cluster = UPSTREAM_CLUSTER
        route.route.timeout.CopyFrom(_seconds(60))
        if policy.session is not None:
            route.route.hash_policy.append(hash_policy(policy.session))
    route.name = configured.route_name
    _metadata(route, configured, "xds.route_metadata")
    for name, value in options.route_headers:
        route.request_headers_to_add.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name, value=value),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="ingress",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=route_pb2.RouteConfiguration(
            name="local",
            virtual_hosts=[_metadata(route_components_pb2.VirtualHost(
                name="any", domains=["*"], routes=[route]), configured,
                "xds.virtual_host_metadata")]),
        http_filters=[
            *_dynamic_metadata(configured),
            *http_filters(deployment),
            hcm_pb2.HttpFilter(name="envoy.filters.http.router",
                               typed_config=_any(router_pb2.Router())),
        ],
    )
    if deployment.http1_trailers:
        manager.http_protocol_options.enable_trailers = True
    if options.preserve_external_request_id:
        manager.preserve_external_request_id = True
    # The client address is the peer's, or the one ``xff_num_trusted_hops`` back in
    # X-Forwarded-For; never a header a client may write (RBAC would trust it otherwise).
    manager.use_remote_address.value = True
    if policy.xff_trusted_hops:
        manager.xff_num_trusted_hops = policy.xff_trusted_hops
    if options.access_log:
        manager.access_log.append(accesslog_pb2.AccessLog(
            name="envoy.access_loggers.stdout", typed_config=_any(stream_pb2.StdoutAccessLog())))
    if options.access_log_file:
        fields = struct_pb2.Struct()
        fields.update(ACCESS_LOG_FIELDS)
        manager.access_log.append(accesslog_pb2.AccessLog(
            name="envoy.access_loggers.file", typed_config=_any(file_pb2.FileAccessLog(
                path=options.access_log_file,
                log_format=substitution_format_string_pb2.SubstitutionFormatString(
                    json_format=fields)))))
    listener = _metadata(listener_pb2.Listener(
        name="http",
        address=_socket_address(options.listen),
        per_connection_buffer_limit_bytes={"value": _buffer_limit(deployment)},
        filter_chains=[listener_components_pb2.FilterChain(filters=[
            listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager",
                                           typed_config=_any(manager))])],
    ), configured, "xds.listener_metadata")
    http2 = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options={}))
    clusters = [] if deployment.processor is None or deployment.dynamic_module else [
        cluster_pb2.Cluster(
        name=EXT_PROC_CLUSTER,
        type=_discovery(deployment.addresses),
        connect_timeout=_seconds(1),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        per_connection_buffer_limit_bytes={"value": _buffer_limit(deployment)},
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(http2)},
        load_assignment=_load_assignment(EXT_PROC_CLUSTER, deployment.addresses),
        health_checks=[processor_health_check()],
    )]
    if options.processor_tls is not None:
        if not clusters:
            raise ConfigError("TLS to the processor needs a processor")
        if any(is_socket_path(a) for a in deployment.addresses):
            raise ConfigError("TLS to the processor applies to TCP addresses, not Unix sockets")
        clusters[0].transport_socket.CopyFrom(_processor_tls(options.processor_tls))
    for index, wasm in enumerate(deployment.wasm):
        if wasm.file is None and wasm.url is not None:
            clusters.append(_url_cluster(f"wasm_source_{index}", wasm.url))
    for callout in options.clusters:
        cluster = cluster_pb2.Cluster(
            name=callout.name, type=_discovery([callout.address]), connect_timeout=_seconds(1),
            load_assignment=_load_assignment(callout.name, [callout.address]))
        if callout.http2:
            cluster.typed_extension_protocol_options[
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(_any(http2))
        clusters.append(cluster)
    if upstreams:
        upstream = cluster_pb2.Cluster(
            name=UPSTREAM_CLUSTER,
            type=_discovery(upstreams),
            connect_timeout=_seconds(1),
            per_connection_buffer_limit_bytes={"value": _buffer_limit(deployment)},
            load_assignment=_load_assignment(UPSTREAM_CLUSTER, upstreams),
        )
        _metadata(upstream, configured, "xds.cluster_metadata")
        if policy.session is not None:
            upstream.lb_policy = (cluster_pb2.Cluster.MAGLEV if policy.session.algorithm
                                  == "maglev" else cluster_pb2.Cluster.RING_HASH)
        if deployment.http1_trailers:
            http1 = http_protocol_options_pb2.HttpProtocolOptions()
            http1.explicit_http_config.http_protocol_options.enable_trailers = True
            upstream.typed_extension_protocol_options[
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(_any(http1))
        clusters.append(upstream)
    _loopback(options.admin)
    if not is_ip(host_port(options.listen, "listen address")[0]):
        raise ConfigError(f"listen address {options.listen}: give an IP address "
                          "(0.0.0.0:PORT for every interface)")
    config = bootstrap_pb2.Bootstrap(
        admin=bootstrap_pb2.Admin(address=_socket_address(options.admin)),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(
            listeners=[listener], clusters=clusters),
    )
    if configured.node_id or configured.node_cluster or configured.node_metadata:
        config.node.id, config.node.cluster = configured.node_id, configured.node_cluster
        config.node.metadata.update(configured.node_metadata)
    return config


def _metadata(holder: Any, configured: Configured, name: str) -> Any:
    """``holder`` (a route, virtual host, cluster or listener) with the
    filter metadata ``configured`` gives the attribute ``name``."""
    for namespace, fields in configured.metadata.get(name, {}).items():
        holder.metadata.filter_metadata[namespace].update(fields)
    return holder


def _dynamic_metadata(configured: Configured) -> list[Any]:
    """A ``set_metadata`` filter giving each request the dynamic metadata ``configured``
    has (none when it has none)."""
    namespaces = configured.metadata.get("metadata")
    if not namespaces:
        return []
    config = set_metadata_pb2.Config()
    for namespace, fields in namespaces.items():
        entry = config.metadata.add(metadata_namespace=namespace)
        entry.value.update(fields)
    return [hcm_pb2.HttpFilter(name="envoy.filters.http.set_metadata",
                               typed_config=_any(config))]


def _upstreams(deployment: Deployment) -> list[str]:
    for address in deployment.upstreams:
        host_port(address, "upstream")
    return list(deployment.upstreams)


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


def http_filters(deployment: Deployment) -> list[Any]:
    """The HTTP filters before the router: Envoy Gateway's default order, then the moves."""
    in_envoy = deployment.dynamic_module is not None
    filters = [
        *rbac_filters(deployment),
        *(wasm_filter(w, i) for i, w in enumerate(deployment.wasm)),
        *([ext_proc_filter(deployment)] if deployment.processor is not None and not in_envoy
          else []),
        *([dynamic_module_filter(deployment)] if in_envoy else []),
    ]
    by_name = {f.name: f for f in filters}
    return [by_name[n] for n in order(list(by_name),
                                                   deployment.policy.filter_order)]


def _cidr_principals(cidrs: Sequence[str]) -> list[Any]:
    principals = []
    for cidr in cidrs:  # canonical: Policy parsed them
        network = ipaddress.ip_network(cidr)
        principal = rbac_config_pb2.Principal()
        # remote_ip: the client address after X-Forwarded-For trusted hops are applied.
        principal.remote_ip.address_prefix = str(network.network_address)
        principal.remote_ip.prefix_len.value = network.prefixlen
        principals.append(principal)
    return principals


def rbac_filters(deployment: Deployment) -> list[Any]:
    """A DENY filter for ``deny_cidrs``, then, when other clients are denied (the policy's
    ``client_action``), an ALLOW filter for ``allow_cidrs``: Envoy Gateway's SecurityPolicy
    order (deny rules, allow rules, default action)."""
    policy = deployment.policy
    lists = [("DENY", policy.deny_cidrs)]
    if policy.client_action == "Deny":
        lists.append(("ALLOW", policy.allow_cidrs))
    filters = []
    for action, cidrs in lists:
        if not cidrs and action == "DENY":
            continue
        rules = rbac_config_pb2.RBAC(action=rbac_config_pb2.RBAC.Action.Value(action))
        if cidrs:  # an ALLOW filter without a policy refuses every client
            policy_rules = rules.policies[f"{action.lower()}-cidrs"]
            policy_rules.permissions.add().any = True
            policy_rules.principals.extend(_cidr_principals(cidrs))
        filters.append(hcm_pb2.HttpFilter(
            name=f"envoy.filters.http.rbac/{action.lower()}-cidrs",
            typed_config=_any(rbac_filter_pb2.RBAC(rules=rules))))
    return filters


def wasm_filter(wasm: WasmModule, index: int) -> Any:
    """The ``envoy.filters.http.wasm`` filter for one module (v8 runtime): its local file, or
    its URL (Envoy downloads it and checks the sha256)."""
    plugin = wasm_pb2.PluginConfig(name=wasm.name, root_id=wasm.root_id, fail_open=wasm.fail_open)
    vm = plugin.vm_config
    vm.vm_id = wasm.name
    vm.runtime = "envoy.wasm.runtime.v8"
    if wasm.vm_configuration:
        vm.configuration.Pack(wrappers_pb2.StringValue(value=wasm.vm_configuration))
    if wasm.file is not None:
        vm.code.local.filename = wasm.file
    elif wasm.url is None:
        raise ConfigError(
            f"wasm {wasm.name}: Envoy cannot pull an image; pull it first (extctl pull "
            f"{wasm.image} -o {wasm.name}.wasm --sha256 DIGEST) and give the file")
    else:
        if not wasm.sha256:
            raise ConfigError(f"wasm {wasm.name}: a module Envoy downloads needs its sha256 "
                              "(URL@sha256:HEX)")
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


def _discovery(addresses: Sequence[str]) -> Any:
    """STATIC for IPs and Unix sockets; STRICT_DNS when a name must be resolved."""
    named = any(not is_socket_path(a) and not is_ip(host_port(a, 'address')[0])
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
