"""Envoy Gateway resources (v1alpha1, EG v1.9) generated from a Processor class and pushed modules.

The processing mode comes from the class, so Envoy only sends what the class handles; a Wasm
image's ``sha256`` is the manifest digest from ``push``. Rules the CRDs enforce with CEL, which
a schema check cannot see, are refused here with a GatewayError.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from extproc import BodyMode, Processor
from extproc._config import split_address

from .errors import ConfigError
from .ext_proc_options import gateway_fields
from .filter_order import FilterPosition
from .session_persistence import SessionPersistence

API_VERSION = "gateway.envoyproxy.io/v1alpha1"
TARGET_KINDS = ("Gateway", "ListenerSet", "HTTPRoute", "GRPCRoute", "TCPRoute", "UDPRoute",
                "TLSRoute")
_ATTRIBUTE = re.compile(r"^(connection\.|source\.|destination\.|request\.|response\.|upstream\."
                        r"|xds\.route_)[a-z_1-9]*$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SHA256 = re.compile(r"^[a-f0-9]{64}$")


class GatewayError(ConfigError):
    """A resource Envoy Gateway would refuse (or a CEL rule of its CRDs would)."""


@dataclass(frozen=True)
class Target:
    kind: str
    name: str

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise GatewayError(f"target kind {self.kind!r}: EnvoyExtensionPolicy targets one of "
                               f"{', '.join(TARGET_KINDS)}")
        _check_name(self.name, "target")


@dataclass(frozen=True)
class WasmSource:
    """A Wasm extension: an OCI image (``image`` + manifest digest) or an HTTP URL + sha256."""

    name: str
    image: str | None = None
    http: str | None = None
    sha256: str | None = None
    pull_secret: str | None = None
    pull_policy: str | None = None
    root_id: str | None = None
    config: Any = None
    fail_open: bool = False

    def __post_init__(self) -> None:
        if (self.image is None) == (self.http is None):
            raise GatewayError(f"wasm {self.name}: give exactly one of image or http")
        if self.sha256 is not None and not _SHA256.match(self.sha256.removeprefix("sha256:")):
            raise GatewayError(f"wasm {self.name}: sha256 must be 64 lower-case hex digits")
        if self.pull_policy not in (None, "IfNotPresent", "Always"):
            raise GatewayError(f"wasm {self.name}: pullPolicy is IfNotPresent or Always")
        if self.pull_secret and self.http:
            raise GatewayError(f"wasm {self.name}: pullSecretRef applies to images only")
        if self.image is not None:
            from registry import InvalidReference, parse_reference

            try:
                parse_reference(self.image if self.image.startswith("oci://")
                                else f"oci://{self.image}")
            except InvalidReference as exc:
                raise GatewayError(f"wasm {self.name}: {exc}") from None

    def to_spec(self) -> dict[str, Any]:
        code: dict[str, Any]
        sha = self.sha256.removeprefix("sha256:") if self.sha256 else None
        if self.image is not None:
            url = self.image.removeprefix("oci://")
            tagged = ":" in url.rpartition("/")[2]
            if not tagged and sha and "@" not in url:
                url = f"{url}@sha256:{sha}"  # no tag: the digest names the image
            image: dict[str, Any] = {"url": url}
            if sha:
                image["sha256"] = sha
            if self.pull_secret:
                image["pullSecretRef"] = {"name": self.pull_secret}
            code = {"type": "Image", "image": image}
        else:
            http: dict[str, Any] = {"url": self.http}
            if sha:
                http["sha256"] = sha
            code = {"type": "HTTP", "http": http}
        if self.pull_policy:
            code["pullPolicy"] = self.pull_policy
        spec: dict[str, Any] = {"name": self.name, "code": code}
        if self.root_id:
            spec["rootID"] = self.root_id
        if self.config is not None:
            spec["config"] = self.config
        if self.fail_open:
            spec["failOpen"] = True
        return spec


@dataclass(frozen=True)
class GatewayConfig:
    name: str
    namespace: str = "default"
    targets: Sequence[Target] = ()
    processor: type[Processor] | None = None
    processor_addresses: Sequence[str] = ()
    """Unix socket paths (every worker) or host:port / fqdn:port of the ext_proc server."""
    tls_ca_configmap: str | None = None
    """Backend TLS: a ConfigMap whose ``ca.crt`` signed the processor's certificate."""
    tls_client_secret: str | None = None
    """Backend TLS: a kubernetes.io/tls Secret Envoy presents to a processor that checks
    clients."""
    tls_sni: str | None = None
    fail_open: bool = False
    """Envoy continues without the processor when it is unreachable or errors."""
    message_timeout: float | None = None
    """Seconds Envoy waits per answer; default: the class's ``message_timeout``."""
    wasm: Sequence[WasmSource] = field(default_factory=tuple)
    allow_cidrs: Sequence[str] = ()
    """SecurityPolicy: clients in these CIDRs are allowed (``default_action`` for the rest)."""
    deny_cidrs: Sequence[str] = ()
    """SecurityPolicy: clients in these CIDRs are denied (checked before ``allow_cidrs``)."""
    default_action: str | None = None
    """SecurityPolicy ``defaultAction``; default: Deny with an allow list, else Allow."""
    session: SessionPersistence | None = None
    """BackendTrafficPolicy: consistent hashing to the route's backends."""
    xff_trusted_hops: int = 0
    """ClientTrafficPolicy on ``client_gateway``: X-Forwarded-For hops to trust."""
    client_gateway: str | None = None
    """The Gateway a ClientTrafficPolicy attaches to; default: the Gateway among the targets."""
    filter_order: Sequence[FilterPosition] = ()
    """An EnvoyProxy with this ``filterOrder`` (reference it from the GatewayClass/Gateway)."""


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name) or len(name) > 253:
        raise GatewayError(f"{what} name {name!r} is not a Kubernetes name (lower-case "
                           "letters, digits and '-')")


def _duration(seconds: float) -> str:
    """A Gateway API duration: whole seconds as ``Ns``, else milliseconds (up to 5 digits)."""
    millis = round(seconds * 1000)
    if millis % 1000 == 0 and 1 <= millis // 1000 <= 99999:
        return f"{millis // 1000}s"
    if millis < 1 or millis > 99999:
        raise GatewayError(f"messageTimeout {seconds}s: give whole seconds, or 0.001..99.999 s")
    return f"{millis}ms"


def processing_mode(processor: type[Processor]) -> dict[str, Any]:
    """``processingMode`` from the class: a direction is present when any of its phases is.

    What Envoy Gateway cannot ask Envoy for is refused rather than dropped: trailers (its
    processingMode has no trailer setting), and header mutations it does not allow.
    """
    mode = processor.processing_mode()
    name = processor.__name__
    if not mode.phases and not (processor.request_attributes or processor.response_attributes):
        raise GatewayError(f"{name} handles no phase: the filter would receive nothing")
    # With FullDuplexStreamed bodies, Envoy Gateway sends that direction's trailers as Envoy
    # requires; otherwise it cannot ask for them.
    trailers = [f"{d}_trailers" for d in ("request", "response")
                if getattr(mode, f"{d}_trailers")
                and getattr(mode, f"{d}_body") is not BodyMode.FULL_DUPLEX_STREAMED]
    if trailers:
        raise GatewayError(f"{name} handles {' and '.join(trailers)}, which Envoy Gateway's "
                           "processingMode cannot ask for (v1.9); use the standalone Envoy "
                           "config (extctl gen envoy) or handle the body instead")
    if processor.allow_routing_mutations or processor.allow_envoy_mutations:
        raise GatewayError(f"{name} sets allow_routing_mutations/allow_envoy_mutations, which "
                           "Envoy Gateway cannot express: those mutations would be ignored")
    result: dict[str, Any] = {}
    for direction in ("request", "response"):
        body: BodyMode | None = getattr(mode, f"{direction}_body")
        sent = (getattr(mode, f"{direction}_headers") or body is not None
                or getattr(mode, f"{direction}_trailers"))
        attributes = tuple(getattr(processor, f"{direction}_attributes"))
        for attribute in attributes:
            if not _ATTRIBUTE.match(attribute):
                raise GatewayError(f"attribute {attribute!r}: Envoy Gateway sends only "
                                   "connection., source., destination., request., response., "
                                   "upstream. and xds.route_ attributes")
        if not sent and not attributes:
            continue
        entry: dict[str, Any] = {}
        if body is not None:
            entry["body"] = body.gateway_name
        if attributes:
            entry["attributes"] = list(attributes)
        result[direction] = entry
    if processor.allow_mode_override:
        result["allowModeOverride"] = True
    return result


def backend(config: GatewayConfig) -> dict[str, Any]:
    """The Backend the ext_proc filter dials: unix sockets (all workers), IPs or FQDNs."""
    endpoints: list[dict[str, Any]] = []
    for address in config.processor_addresses:
        if address.startswith("/"):
            if len(address) > 108:
                raise GatewayError(f"unix socket path {address!r} exceeds 108 characters")
            endpoints.append({"unix": {"path": address}})
            continue
        host, port = split_address(address)
        kind = "ip" if re.match(r"^[\d.]+$|:", host) else "fqdn"
        key = "address" if kind == "ip" else "hostname"
        endpoints.append({kind: {key: host, "port": port}})
    if not endpoints:
        raise GatewayError("the ext_proc Backend needs at least one address")
    spec: dict[str, Any] = {"endpoints": endpoints}
    if config.tls_ca_configmap or config.tls_client_secret or config.tls_sni:
        if any("unix" in e for e in endpoints):
            raise GatewayError("TLS to the processor applies to TCP endpoints, not Unix sockets")
        tls: dict[str, Any] = {}
        if config.tls_ca_configmap:
            _check_name(config.tls_ca_configmap, "CA ConfigMap")
            tls["caCertificateRefs"] = [{"group": "", "kind": "ConfigMap",
                                         "name": config.tls_ca_configmap}]
        else:
            tls["wellKnownCACertificates"] = "System"
        if config.tls_client_secret:
            _check_name(config.tls_client_secret, "client certificate Secret")
            tls["clientCertificateRef"] = {"group": "", "kind": "Secret",
                                           "name": config.tls_client_secret}
        if config.tls_sni:
            tls["sni"] = config.tls_sni
        spec["tls"] = tls
    return {"apiVersion": API_VERSION, "kind": "Backend",
            "metadata": {"name": f"{config.name}-extproc", "namespace": config.namespace},
            "spec": spec}


def extension_policy(config: GatewayConfig) -> dict[str, Any]:
    _check_name(config.name, "policy")
    if not _NAME.match(config.namespace) or len(config.namespace) > 63:
        raise GatewayError(f"namespace {config.namespace!r} is not a Kubernetes namespace name")
    if not config.targets:
        raise GatewayError("EnvoyExtensionPolicy needs a target (a route or a gateway)")
    spec: dict[str, Any] = {"targetRefs": [
        {"group": "gateway.networking.k8s.io", "kind": t.kind, "name": t.name}
        for t in config.targets]}
    if config.processor is not None:
        mode = config.processor.processing_mode()
        if config.fail_open and BodyMode.FULL_DUPLEX_STREAMED in (mode.request_body,
                                                                  mode.response_body):
            raise GatewayError("failOpen cannot be true with FullDuplexStreamed bodies "
                               "(Envoy Gateway's CEL rule)")
        ext_proc: dict[str, Any] = {
            "backendRefs": [{"group": "gateway.envoyproxy.io", "kind": "Backend",
                             "name": f"{config.name}-extproc"}],
            "processingMode": processing_mode(config.processor),
        }
        timeout = config.message_timeout or config.processor.message_timeout
        if timeout is not None:
            ext_proc["messageTimeout"] = _duration(timeout)
        if config.fail_open:
            ext_proc["failOpen"] = True
        fields, problems = gateway_fields(config.processor.filter_spec())
        if problems:
            raise GatewayError("; ".join(problems) + ": use the standalone Envoy config "
                               "(extctl gen envoy)")
        ext_proc.update(fields)
        namespaces = list(config.processor.dynamic_metadata_namespaces)
        if namespaces:
            if len(namespaces) > 8 or any(n.startswith("envoy.filters.http") for n in namespaces):
                raise GatewayError("dynamic_metadata_namespaces: at most 8, and none of Envoy's "
                                   "own envoy.filters.http.* namespaces")
            ext_proc.setdefault("metadata", {})["writableNamespaces"] = namespaces
        spec["extProc"] = [ext_proc]
    if config.wasm:
        spec["wasm"] = [w.to_spec() for w in config.wasm]
    if "extProc" not in spec and "wasm" not in spec:
        raise GatewayError("nothing to deploy: give a processor and/or Wasm modules")
    return {"apiVersion": API_VERSION, "kind": "EnvoyExtensionPolicy",
            "metadata": {"name": config.name, "namespace": config.namespace}, "spec": spec}


def resources(config: GatewayConfig) -> list[dict[str, Any]]:
    """The EnvoyExtensionPolicy, the Backend when there is a processor, and the policies the
    config asks for (SecurityPolicy, BackendTrafficPolicy, ClientTrafficPolicy, EnvoyProxy)."""
    from . import gateway_policies as policies

    docs = [extension_policy(config)]
    if config.processor is not None:
        docs.append(backend(config))
    name, namespace, targets = config.name, config.namespace, config.targets
    if config.allow_cidrs or config.deny_cidrs:
        default = config.default_action or ("Deny" if config.allow_cidrs else "Allow")
        docs.append(policies.security_policy(
            f"{name}-clients", targets, allow=config.allow_cidrs, deny=config.deny_cidrs,
            default_action=default, namespace=namespace))
    elif config.default_action is not None:
        raise GatewayError("a default action needs CIDRs to allow or deny")
    if config.session is not None:
        docs.append(policies.session_persistence(f"{name}-sessions", targets, config.session,
                                                 namespace=namespace))
    if config.xff_trusted_hops:
        gateway = config.client_gateway or next(
            (t.name for t in targets if t.kind == "Gateway"), None)
        if gateway is None:
            raise GatewayError("X-Forwarded-For trusted hops are set on a Gateway "
                               "(ClientTrafficPolicy): name it (--client-gateway) or target one")
        docs.append(policies.client_ip_detection(f"{name}-client-ip", gateway,
                                                 trusted_hops=config.xff_trusted_hops,
                                                 namespace=namespace))
    if config.filter_order:
        docs.append(policies.filter_order(f"{name}-proxy", config.filter_order,
                                          namespace=namespace))
    return docs


def to_yaml(documents: Sequence[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(list(documents), sort_keys=False, default_flow_style=False)
