"""``Deployment``: one description of what runs where, rendered for Envoy and Envoy Gateway.

    deployment = Deployment(Redact, addresses=ServerConfig(uds=SOCKET, workers=2).addresses(),
                            policy=Policy(allow_cidrs=["10.0.0.0/8"]),
                            wasm=[WasmModule.parse("tag=oci://reg.example.com/f/tag:v1@sha256:…")],
                            upstreams=["127.0.0.1:8080"],
                            gateway=GatewayOptions(targets=[Target("HTTPRoute", "backend")]))
    deployment.write("envoy-configs")      # envoy.yaml and gateway.yaml, written atomically

The processor's half comes from the class (:class:`extproc.FilterSpec`); the policy, the Wasm
modules and the upstreams are given once and mean the same in both outputs.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extproc import FilterSpec, ProcessingMode, Processor

from .errors import ConfigError
from .policy import Policy
from .wasm import WasmModule

TARGET_KINDS = ("Gateway", "ListenerSet", "HTTPRoute", "GRPCRoute", "TCPRoute", "UDPRoute",
                "TLSRoute")


@dataclass(frozen=True)
class Target:
    """What an Envoy Gateway policy attaches to."""

    kind: str
    name: str

    def __post_init__(self) -> None:
        from .gateway import check_name

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
    http1_trailers: bool = False
    """Accept and forward HTTP/1.1 chunked trailers (Envoy drops them by default)."""
    preserve_external_request_id: bool = False
    """Keep a client's x-request-id (an edge Envoy replaces it by default)."""


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


def kebab(name: str) -> str:
    """``PiiRedact`` -> ``pii-redact``: a class name as a Kubernetes name."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|_+", "-", name).lower().strip("-")


@dataclass(frozen=True)
class Deployment:
    processor: type[Processor] | None = None
    """The class whose spec configures the ext_proc filter (None: Wasm modules only)."""
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", tuple(self.addresses))
        object.__setattr__(self, "wasm", tuple(self.wasm))
        object.__setattr__(self, "upstreams", (self.upstreams,) if isinstance(
            self.upstreams, str) else tuple(self.upstreams))
        if self.processor is None and self.addresses:
            raise ConfigError("processor addresses need a processor class")
        if self.processor is not None and not self.addresses:
            raise ConfigError(f"where does {self.processor.__name__} listen? give its "
                              "addresses (a Unix socket path or host:port per worker)")
        names = [module.name for module in self.wasm]
        if len(set(names)) != len(names):
            raise ConfigError("two Wasm modules share a name: give each its own")

    @classmethod
    def build(cls, processor: type[Processor] | None = None, **options: Any) -> Deployment:
        """A Deployment from flat keywords, each sorted to the dataclass that declares it:
        ``Deployment.build(Redact, addresses=[...], allow_cidrs=[...], access_log=True)``."""
        groups: dict[str, dict[str, Any]] = {"policy": {}, "envoy": {}, "gateway": {}}
        own: dict[str, Any] = {}
        fields = {name: "policy" for name in _FIELDS[Policy]}
        fields.update({name: "envoy" for name in _FIELDS[EnvoyOptions]})
        fields.update({name: "gateway" for name in _FIELDS[GatewayOptions]})
        for name, value in options.items():
            if name in _FIELDS[Deployment] and name not in groups:
                own[name] = value
            elif name in fields:
                groups[fields[name]][name] = value
            else:
                raise TypeError(f"Deployment.build() got an unexpected option {name!r}")
        return cls(processor, policy=own.pop("policy", None) or Policy(**groups["policy"]),
                   envoy=EnvoyOptions(**groups["envoy"]),
                   gateway=GatewayOptions(**groups["gateway"]), **own)

    @property
    def spec(self) -> FilterSpec | None:
        """What the processor asks of Envoy (the standalone config may override the mode)."""
        if self.processor is None:
            return None
        spec = FilterSpec.of(self.processor)
        mode = self.envoy.processing_mode
        return spec if mode is None else spec.with_mode(mode)

    @property
    def name(self) -> str:
        """The Envoy Gateway policy name: given, else from the processor or the modules."""
        if self.gateway.name:
            return self.gateway.name
        if self.processor is not None:
            return kebab(self.processor.__name__)
        if self.wasm:
            return kebab(self.wasm[0].name)
        raise ConfigError("nothing to deploy: give a processor and/or Wasm modules")

    def envoy_bootstrap(self) -> Any:
        """The standalone Envoy Bootstrap message (xds-protos)."""
        from .envoy import bootstrap

        return bootstrap(self)

    def gateway_resources(self) -> list[dict[str, Any]]:
        """Envoy Gateway's documents: EnvoyExtensionPolicy, Backend and the policies asked for."""
        from .gateway import resources

        return resources(self)

    def render(self) -> dict[str, str]:
        """File name -> text: ``envoy.yaml`` always, ``gateway.yaml`` when there are targets."""
        from .envoy import to_yaml
        from .gateway import to_yaml as gateway_yaml

        header = f"# {self.header}\n" if self.header else ""
        files = {"envoy.yaml": header + to_yaml(self.envoy_bootstrap())}
        if self.gateway.targets:
            files["gateway.yaml"] = header + gateway_yaml(self.gateway_resources())
        return files

    def write(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write :meth:`render`'s files into ``directory``, each atomically; their paths."""
        from registry.transfer_io import write_atomic

        written = []
        for name, text in self.render().items():
            path = Path(directory) / name
            write_atomic(path, text.encode())
            written.append(path)
        return written


_FIELDS = {kind: frozenset(f.name for f in dataclasses.fields(kind))
           for kind in (Deployment, Policy, EnvoyOptions, GatewayOptions)}
