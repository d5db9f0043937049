"""The data of a :class:`~extctl.config.Deployment`, which the generators read: what runs
where (processor and addresses, policy, Wasm modules, upstreams) and what only one of the two
outputs has (:class:`EnvoyOptions`, :class:`GatewayOptions`). ``Deployment`` adds rendering.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extproc import FilterSpec, ProcessingMode, Processor
from wasm.configured import Configured, Given, settable
from wasm.configured import Path as PropertyPath

from .dynamic_module import DynamicModule
from .errors import ConfigError, GatewayError
from .policy import Policy
from .sidecar import Sidecar
from .wasm import WasmModule

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
TARGET_KINDS = ("Gateway", "ListenerSet", "HTTPRoute", "GRPCRoute", "TCPRoute", "UDPRoute",
                "TLSRoute")


def is_kubernetes_name(name: str) -> bool:
    return bool(_NAME.match(name))


def check_name(name: str, what: str) -> None:
    """A Kubernetes object name (lower-case DNS label characters, at most 253)."""
    if not is_kubernetes_name(name) or len(name) > 253:
        raise GatewayError(f"{what} name {name!r} is not a Kubernetes name (lower-case "
                           "letters, digits and '-')")


@dataclass(frozen=True)
class Target:
    """What an Envoy Gateway policy attaches to."""

    kind: str
    name: str

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ConfigError(f"target kind {self.kind!r}: a policy targets one of "
                              f"{', '.join(TARGET_KINDS)}")
        check_name(self.name, "target")


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


_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
RESERVED_CLUSTERS = ("extproc", "upstream")
"""Cluster names the generated config uses itself (and ``wasm_source_N``)."""


@dataclass(frozen=True)
class CalloutCluster:
    """A cluster Wasm filters call by name (``proxy_http_call``, ``proxy_grpc_call``,
    ``proxy_grpc_stream``): ``NAME=HOST:PORT``. ``http2``: talk HTTP/2 to it, as a gRPC
    service needs."""

    name: str
    address: str
    http2: bool = False

    def __post_init__(self) -> None:
        from .net import host_port

        if not _CLUSTER_NAME.match(self.name):
            raise ConfigError(f"cluster name {self.name!r}: use letters, digits, '_', '.' "
                              "and '-'")
        if self.name in RESERVED_CLUSTERS or self.name.startswith("wasm_source_"):
            raise ConfigError(f"cluster name {self.name!r} is the generated config's own; "
                              "choose another")
        host_port(self.address, f"cluster {self.name}")

    @classmethod
    def parse(cls, text: str, http2: bool = False) -> CalloutCluster:
        """``NAME=HOST:PORT``."""
        name, sep, address = text.partition("=")
        if not sep or not name or not address:
            raise ConfigError(f"cluster {text!r}: give NAME=HOST:PORT")
        return cls(name, address, http2)


@dataclass(frozen=True)
class EnvoyOptions:
    """What only the standalone Envoy config has: its own addresses and knobs."""

    listen: str = "127.0.0.1:0"
    """Listener host:port (port 0: Envoy picks one; the runner reads it back)."""
    admin: str = "127.0.0.1:0"
    """Admin host:port, loopback only."""
    processor_tls: ProcessorTls | None = None
    """TLS to the processor (TCP addresses only)."""
    processing_mode: ProcessingMode | None = None
    """Send these phases instead of the class's own (None: the class's derived mode)."""
    route_headers: Sequence[tuple[str, str]] = ()
    """Headers the route adds upstream (values may use Envoy's %...% formatters)."""
    max_grpc_message_bytes: int = 32 * 1024 * 1024
    """Largest ext_proc answer Envoy accepts (a BUFFERED body comes back in one message)."""
    buffer_limit_bytes: int | None = None
    """Listener/cluster buffer limit, which is also the largest BUFFERED body; default: 32 MiB
    when the processor buffers bodies, else Envoy's own 1 MiB (a large limit per connection is
    memory a client can make Envoy hold)."""
    access_log: bool = False
    """Log each request to Envoy's stdout."""
    access_log_file: str | None = None
    """Also log each request to this file, one JSON object per line with the keys of
    :data:`extctl.config.envoy.ACCESS_LOG_FIELDS` (what ``extctl dev``'s live view reads)."""
    request_id_to_processor: bool = False
    """Give the processor each request's x-request-id as metadata of its ext_proc stream
    (``x-request-id``), so that what it records matches Envoy's access log even when Envoy
    sends it no request headers."""
    http1_trailers: bool | None = None
    """Accept and forward HTTP/1.1 chunked trailers, from clients and from the upstream (Envoy's
    HTTP/1 codec drops them by default, before any filter). None: when the processor's mode
    sends trailers (a trailers hook), so that its hook runs for HTTP/1.1 messages too."""
    preserve_external_request_id: bool = False
    """Keep a client's x-request-id (an edge Envoy replaces it by default)."""
    clusters: Sequence[CalloutCluster] = ()
    """Clusters the Wasm modules call out to, by name."""
    properties: Mapping[PropertyPath, Given] = field(default_factory=dict)
    """Properties a Wasm module reads that the configuration sets (paths of
    :data:`wasm.configured.FORMS`: the node's id, cluster and metadata, the route's name, the
    metadata of the route, virtual host, upstream cluster and listener, and the request's
    dynamic metadata, which a ``set_metadata`` filter before the modules sets)."""

    def __post_init__(self) -> None:
        names = [c.name for c in self.clusters]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"cluster {repeated[0]!r} is given twice")
        try:
            settable(self.properties)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    @property
    def configured(self) -> Configured:
        """:attr:`properties` as what each part of the configuration holds."""
        return settable(self.properties)


@dataclass(frozen=True)
class GatewayOptions:
    """What only Envoy Gateway's resources have: names, targets, Backend TLS."""

    targets: Sequence[Target] = ()
    name: str | None = None
    """The EnvoyExtensionPolicy's name (others derive from it); default: the processor class
    in kebab-case."""
    namespace: str = "default"
    client_gateway: str | None = None
    """The Gateway a ClientTrafficPolicy attaches to; default: the Gateway among the targets."""
    tls_ca_configmap: str | None = None
    """Backend TLS: a ConfigMap whose ``ca.crt`` signed the processor's certificate."""
    tls_client_secret: str | None = None
    """Backend TLS: a kubernetes.io/tls Secret Envoy presents to a processor that checks
    clients."""
    tls_sni: str | None = None
    sidecar: Sidecar | None = None
    """Run the processor as a native sidecar of Envoy's pods: adds the EnvoyProxy deployment
    patch, Envoy Gateway's Backend switch and (with a class) the GatewayClass."""


def kebab(name: str) -> str:
    """``PiiRedact`` -> ``pii-redact``: a class name as a Kubernetes name."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|_+", "-", name).lower().strip("-")


@dataclass(frozen=True)
class DeploymentData:
    """What runs where: the processor and its addresses, the policy, the Wasm modules, the
    upstreams, and what only one of the two outputs has."""

    processor: type[Processor] | FilterSpec | None = None
    """The class whose spec configures the ext_proc filter, or that spec itself (what a process
    that cannot import the class has); None: Wasm modules only."""
    addresses: Sequence[str] = ()
    """Every worker's Unix socket path or host:port (``ServerConfig.addresses()``)."""
    policy: Policy = field(default_factory=Policy)
    wasm: Sequence[WasmModule] = ()
    """proxy-wasm modules, in this order among themselves."""
    upstreams: Sequence[str] = ()
    """host:port of each upstream (balanced round-robin, or by ``policy.session``); none: the
    standalone Envoy answers every request 200 itself."""
    envoy: EnvoyOptions = field(default_factory=EnvoyOptions)
    gateway: GatewayOptions = field(default_factory=GatewayOptions)
    header: str = ""
    """A comment line written at the top of each rendered file."""
    dynamic_module: DynamicModule | None = None
    """Run the processor's class inside the data-plane Envoy (the extkit dynamic module)
    instead of in an ext_proc server at ``addresses``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", tuple(self.addresses))
        object.__setattr__(self, "wasm", tuple(self.wasm))
        object.__setattr__(self, "upstreams", (self.upstreams,) if isinstance(
            self.upstreams, str) else tuple(self.upstreams))
        if self.processor is None and self.addresses:
            raise ConfigError("processor addresses need a processor class")
        if self.dynamic_module is not None:
            if self.processor is None:
                raise ConfigError("a dynamic module runs a processor class: give one")
            if self.addresses:
                raise ConfigError("a processor in the dynamic module runs in Envoy: give no "
                                  "ext_proc addresses")
            self.module_config()  # what the module cannot run is refused here
            positions = [p for p in self.policy.filter_order
                         if "envoy.filters.http.ext_proc" in (p.filter, p.other)]
            if positions:
                raise ConfigError("the class runs in Envoy's dynamic_modules filter, not "
                                  "ext_proc: name dynamic_modules in the filter order")
            options = self.envoy
            if (options.processing_mode is not None or options.request_id_to_processor
                    or options.processor_tls is not None):
                raise ConfigError("processing_mode, request_id_to_processor and processor "
                                  "TLS are ext_proc's: the dynamic module takes none of them")
        elif self.processor is not None and not self.addresses:
            raise ConfigError(f"where does {FilterSpec.of(self.processor).name} listen? give its "
                              "addresses (a Unix socket path or host:port per worker)")
        names = [module.name for module in self.wasm]
        if len(set(names)) != len(names):
            raise ConfigError("two Wasm modules share a name: give each its own")

    def module_config(self) -> dict[str, Any]:
        """The dynamic module's filter config (JSON), with the policy's fail-open and message
        timeout as Envoy's ext_proc filter would take them."""
        assert self.dynamic_module is not None and self.processor is not None
        return self.dynamic_module.config(FilterSpec.of(self.processor), self.policy.fail_open,
                                          self.policy.message_timeout)

    @property
    def spec(self) -> FilterSpec | None:
        """What the processor asks of Envoy (the standalone config may override the mode)."""
        if self.processor is None:
            return None
        spec = FilterSpec.of(self.processor)
        mode = self.envoy.processing_mode
        return spec if mode is None else spec.with_mode(mode)

    @property
    def http1_trailers(self) -> bool:
        """Whether Envoy's HTTP/1 codecs keep trailers: as asked, else when the processor's
        mode sends them."""
        if self.envoy.http1_trailers is not None:
            return self.envoy.http1_trailers
        mode = self.spec.mode if self.spec is not None else None
        return mode is not None and (mode.request_trailers or mode.response_trailers)

    @property
    def name(self) -> str:
        """The Envoy Gateway policy name: given, else from the processor or the modules."""
        if self.gateway.name:
            return self.gateway.name
        if self.processor is not None:
            return kebab(FilterSpec.of(self.processor).name)
        if self.wasm:
            return kebab(self.wasm[0].name)
        raise ConfigError("nothing to deploy: give a processor and/or Wasm modules")
