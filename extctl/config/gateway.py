"""Envoy Gateway resources (v1alpha1, EG v1.9) of a :class:`Deployment`.

The EnvoyExtensionPolicy's processing mode comes from the class's FilterSpec, so Envoy only
sends what the class handles; a Wasm image's ``sha256`` is the manifest digest from ``push``.
The policy adds the resources a deployment of extensions usually needs: client CIDR
authorization (SecurityPolicy), session persistence (BackendTrafficPolicy consistent hash),
X-Forwarded-For trusted hops and HTTP/1.1 trailers for trailer hooks (ClientTrafficPolicy)
and filter order (EnvoyProxy). Rules the CRDs enforce with CEL, which a schema check cannot
see, are refused here with GatewayError.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from extproc import BodyMode, FilterSpec

from .dynamic_module import FILTER_NAME
from .errors import GatewayError
from .ext_proc import gateway_fields
from .health_check import PROCESSOR, SERVICE
from .model import DeploymentData as Deployment
from .model import Target, check_name, is_kubernetes_name
from .net import MAX_UDS_PATH, host_port, is_ip, is_socket_path
from .sidecar import envoy_deployment, gateway_class
from .wasm import WasmModule

API_VERSION = "gateway.envoyproxy.io/v1alpha1"
_ATTRIBUTE = re.compile(r"^(connection\.|source\.|destination\.|request\.|response\.|upstream\."
                        r"|xds\.route_)[a-z_1-9]*$")


def _duration(seconds: float) -> str:
    """A Gateway API duration: whole seconds as ``Ns``, else milliseconds (up to 5 digits)."""
    millis = round(seconds * 1000)
    if millis % 1000 == 0 and 1 <= millis // 1000 <= 99999:
        return f"{millis // 1000}s"
    if millis < 1 or millis > 99999:
        raise GatewayError(f"messageTimeout {seconds}s: give whole seconds, or 0.001..99.999 s")
    return f"{millis}ms"


def _meta(kind: str, name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind,
            "metadata": {"name": name, "namespace": namespace}}


def _refs(targets: Sequence[Target]) -> list[dict[str, str]]:
    if not targets:
        raise GatewayError("a policy needs a target (a route or a gateway)")
    return [{"group": "gateway.networking.k8s.io", "kind": t.kind, "name": t.name}
            for t in targets]


def processing_mode(spec: FilterSpec) -> dict[str, Any]:
    """``processingMode`` from the spec: a direction is present when any of its phases is.

    What Envoy Gateway cannot ask Envoy for is refused rather than dropped: trailers (its
    processingMode has no trailer setting), and header mutations it does not allow.
    """
    mode, name = spec.mode, spec.name
    if not mode.phases and not (spec.request_attributes or spec.response_attributes):
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
    if spec.allow_routing_mutations or spec.allow_envoy_mutations:
        raise GatewayError(f"{name} sets allow_routing_mutations/allow_envoy_mutations, which "
                           "Envoy Gateway cannot express: those mutations would be ignored")
    result: dict[str, Any] = {}
    for direction in ("request", "response"):
        body: BodyMode | None = getattr(mode, f"{direction}_body")
        sent = (getattr(mode, f"{direction}_headers") or body is not None
                or getattr(mode, f"{direction}_trailers"))
        attributes: tuple[str, ...] = getattr(spec, f"{direction}_attributes")
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
    if spec.allow_mode_override:
        result["allowModeOverride"] = True
    return result


def wasm_spec(module: WasmModule) -> dict[str, Any]:
    """One ``spec.wasm`` entry: the module's image or URL (a local file is not fetchable)."""
    code: dict[str, Any]
    sha = module.sha256
    if module.image is not None:
        url = module.image.removeprefix("oci://")
        tagged = ":" in url.rpartition("/")[2]
        if not tagged and sha and "@" not in url:
            url = f"{url}@sha256:{sha}"  # no tag: the digest names the image
        image: dict[str, Any] = {"url": url}
        if sha:
            image["sha256"] = sha
        if module.pull_secret:
            image["pullSecretRef"] = {"name": module.pull_secret}
        code = {"type": "Image", "image": image}
    elif module.url is not None:
        http: dict[str, Any] = {"url": module.url}
        if sha:
            http["sha256"] = sha
        code = {"type": "HTTP", "http": http}
    else:
        raise GatewayError(f"wasm {module.name}: Envoy Gateway fetches modules; push it "
                           "(extctl push) and give the image, or give an https URL")
    if module.text is not None:
        raise GatewayError(f"wasm {module.name}: Envoy Gateway hands modules a JSON value; "
                           "give config instead of text")
    if module.vm_configuration:
        raise GatewayError(f"wasm {module.name}: Envoy Gateway has no VM configuration for a "
                           "module (only a standalone Envoy); leave it out")
    if module.pull_policy:
        code["pullPolicy"] = module.pull_policy
    spec: dict[str, Any] = {"name": module.name, "code": code}
    if module.root_id:
        spec["rootID"] = module.root_id
    if module.config is not None:
        spec["config"] = module.config
    if module.fail_open:
        spec["failOpen"] = True
    return spec


def backend(deployment: Deployment) -> dict[str, Any]:
    """The Backend the ext_proc filter dials: unix sockets (all workers), IPs or FQDNs."""
    options = deployment.gateway
    endpoints: list[dict[str, Any]] = []
    for address in deployment.addresses:
        if is_socket_path(address):
            if not address.startswith("/"):
                raise GatewayError(f"{address}: give the socket's absolute path as Envoy's "
                                   "container sees it")
            if len(address.encode()) > MAX_UDS_PATH:
                raise GatewayError(f"Unix socket path {address!r} is longer than "
                                   f"{MAX_UDS_PATH} bytes")
            endpoints.append({"unix": {"path": address}})
            continue
        host, port = host_port(address, "processor address")
        kind = "ip" if is_ip(host) else "fqdn"
        key = "address" if kind == "ip" else "hostname"
        endpoints.append({kind: {key: host, "port": port}})
    if not endpoints:
        raise GatewayError("the ext_proc Backend needs at least one address")
    if any("fqdn" in e for e in endpoints) and not all("fqdn" in e for e in endpoints):
        raise GatewayError("a Backend cannot mix host names with IP addresses or sockets "
                           "(Envoy Gateway's CEL rule): give one kind")
    spec: dict[str, Any] = {"endpoints": endpoints}
    if options.tls_ca_configmap or options.tls_client_secret or options.tls_sni:
        if any("unix" in e for e in endpoints):
            raise GatewayError("TLS to the processor applies to TCP endpoints, not Unix sockets")
        tls: dict[str, Any] = {}
        if options.tls_ca_configmap:
            check_name(options.tls_ca_configmap, "CA ConfigMap")
            tls["caCertificateRefs"] = [{"group": "", "kind": "ConfigMap",
                                         "name": options.tls_ca_configmap}]
        else:
            tls["wellKnownCACertificates"] = "System"
        if options.tls_client_secret:
            check_name(options.tls_client_secret, "client certificate Secret")
            tls["clientCertificateRef"] = {"group": "", "kind": "Secret",
                                           "name": options.tls_client_secret}
        if options.tls_sni:
            tls["sni"] = options.tls_sni
        spec["tls"] = tls
    doc = _meta("Backend", f"{deployment.name}-extproc", options.namespace)
    doc["spec"] = spec
    return doc


def active_health_check() -> dict[str, Any]:
    """extProc ``backendSettings.healthCheck.active``: the standalone config's gRPC check with
    the same timings, except what Envoy Gateway v1.9 has no field for (``no_traffic_interval``:
    Envoy's 60 s applies until the first request)."""
    timings = PROCESSOR
    return {"type": "GRPC", "grpc": {"service": SERVICE},
            "timeout": _duration(timings.timeout), "interval": _duration(timings.interval),
            "unhealthyThreshold": timings.unhealthy_threshold,
            "healthyThreshold": timings.healthy_threshold}


def extension_policy(deployment: Deployment) -> dict[str, Any]:
    options, policy = deployment.gateway, deployment.policy
    name = deployment.name
    check_name(name, "policy")
    if len(options.namespace) > 63 or not is_kubernetes_name(options.namespace):
        raise GatewayError(f"namespace {options.namespace!r} is not a Kubernetes namespace name")
    spec: dict[str, Any] = {"targetRefs": _refs(options.targets)}
    filter_spec = deployment.spec
    module = deployment.dynamic_module
    if module is not None and filter_spec is not None:
        # Envoy Gateway hands the module this JSON (the standalone config, the same text)
        spec["dynamicModule"] = [{"name": module.name, "filterName": FILTER_NAME,
                                  "config": deployment.module_config()}]
    elif filter_spec is not None:
        if policy.fail_open and filter_spec.full_duplex:
            raise GatewayError("failOpen cannot be true with FullDuplexStreamed bodies "
                               "(Envoy Gateway's CEL rule)")
        ext_proc: dict[str, Any] = {
            "backendRefs": [{"group": "gateway.envoyproxy.io", "kind": "Backend",
                             "name": f"{name}-extproc"}],
            "backendSettings": {"healthCheck": {"active": active_health_check()}},
            "processingMode": processing_mode(filter_spec),
        }
        timeout = policy.message_timeout or filter_spec.message_timeout
        if timeout is not None:
            ext_proc["messageTimeout"] = _duration(timeout)
        if policy.fail_open:
            ext_proc["failOpen"] = True
        ext_proc.update(gateway_fields(filter_spec))
        namespaces = list(filter_spec.dynamic_metadata_namespaces)
        if namespaces:
            if len(namespaces) > 8 or any(n.startswith("envoy.filters.http") for n in namespaces):
                raise GatewayError("dynamic_metadata_namespaces: at most 8, and none of Envoy's "
                                   "own envoy.filters.http.* namespaces")
            ext_proc.setdefault("metadata", {})["writableNamespaces"] = namespaces
        spec["extProc"] = [ext_proc]
    if deployment.wasm:
        spec["wasm"] = [wasm_spec(w) for w in deployment.wasm]
    if not {"extProc", "wasm", "dynamicModule"} & spec.keys():
        raise GatewayError("nothing to deploy: give a processor and/or Wasm modules")
    doc = _meta("EnvoyExtensionPolicy", name, options.namespace)
    doc["spec"] = spec
    return doc


def security_policy(deployment: Deployment) -> dict[str, Any]:
    """Deny CIDRs, then allow CIDRs; anything else gets the policy's client action."""
    policy = deployment.policy
    rules = []
    if policy.deny_cidrs:
        rules.append({"name": "deny-cidrs", "action": "Deny",
                      "principal": {"clientCIDRs": list(policy.deny_cidrs)}})
    if policy.allow_cidrs:
        rules.append({"name": "allow-cidrs", "action": "Allow",
                      "principal": {"clientCIDRs": list(policy.allow_cidrs)}})
    doc = _meta("SecurityPolicy", f"{deployment.name}-clients", deployment.gateway.namespace)
    doc["spec"] = {"targetRefs": _refs(deployment.gateway.targets),
                   "authorization": {"defaultAction": policy.client_action, "rules": rules}}
    return doc


def session_persistence(deployment: Deployment) -> dict[str, Any]:
    """BackendTrafficPolicy ``loadBalancer.type: ConsistentHash`` by SourceIP, Header or Cookie."""
    session = deployment.policy.session
    assert session is not None
    doc = _meta("BackendTrafficPolicy", f"{deployment.name}-sessions",
                deployment.gateway.namespace)
    doc["spec"] = {"targetRefs": _refs(deployment.gateway.targets),
                   "loadBalancer": {"type": "ConsistentHash",
                                    "consistentHash": session.to_consistent_hash()}}
    return doc


def client_gateway(deployment: Deployment) -> str | None:
    """The Gateway a ClientTrafficPolicy targets: ``client_gateway``, else the first Gateway
    among the targets."""
    options = deployment.gateway
    gateway = options.client_gateway or next(
        (t.name for t in options.targets if t.kind == "Gateway"), None)
    if gateway is not None:
        check_name(gateway, "gateway")
    return gateway


def client_traffic_policy(deployment: Deployment) -> dict[str, Any] | None:
    """ClientTrafficPolicy on the client Gateway: take the client address
    ``xff_trusted_hops`` back in X-Forwarded-For, and keep HTTP/1.1 trailers when the
    processor has trailer hooks (``http1.enableTrailers``: Envoy Gateway enables them on the
    listener's codec and on its HTTP/1.1 clusters' alike). None when neither applies, or when
    only trailers do and there is no Gateway to target (:func:`notes` says so)."""
    hops = deployment.policy.xff_trusted_hops
    trailers = deployment.processor is not None and deployment.http1_trailers
    if not hops and not trailers:
        return None
    gateway = client_gateway(deployment)
    if gateway is None:
        if hops:
            raise GatewayError.naming("X-Forwarded-For trusted hops ({xff_trusted_hops}) are "
                                      "set on a Gateway (ClientTrafficPolicy): name it "
                                      "({client_gateway}) or target one")
        return None
    doc = _meta("ClientTrafficPolicy", f"{deployment.name}-client", deployment.gateway.namespace)
    spec: dict[str, Any] = {"targetRefs": [{"group": "gateway.networking.k8s.io",
                                            "kind": "Gateway", "name": gateway}]}
    if hops:
        spec["clientIPDetection"] = {"xForwardedFor": {"numTrustedHops": hops}}
    if trailers:
        spec["http1"] = {"enableTrailers": True}
    doc["spec"] = spec
    return doc


def filter_order(deployment: Deployment) -> dict[str, Any]:
    """EnvoyProxy ``filterOrder``, applied by Envoy Gateway in the order given."""
    doc = _meta("EnvoyProxy", f"{deployment.name}-proxy", deployment.gateway.namespace)
    doc["spec"] = {"filterOrder": [p.to_spec() for p in deployment.policy.filter_order]}
    return doc


def processor_path(deployment: Deployment) -> str:
    """``MODULE:CLASS`` of the processor, as ``extctl serve`` in the sidecar imports it."""
    spec = deployment.spec
    if spec is None:
        raise GatewayError("a sidecar serves a processor: give its class")
    if not spec.importable:
        raise GatewayError(f"{spec.name}: the sidecar imports the class by name; "
                           "define it in a module (not __main__ or a function)")
    return spec.import_path


def envoy_proxy(deployment: Deployment) -> dict[str, Any]:
    """The EnvoyProxy: ``filterOrder`` when the policy moves filters, the processor as a
    native sidecar of Envoy's pods when the deployment has one, and the dynamic module's
    allowlist entry when the processor runs in Envoy (the module file must be in Envoy's
    image at its path, with the Python environment it was built for)."""
    doc = filter_order(deployment) if deployment.policy.filter_order else _meta(
        "EnvoyProxy", f"{deployment.name}-proxy", deployment.gateway.namespace)
    doc.setdefault("spec", {})
    module = deployment.dynamic_module
    if module is not None:
        # doNotClose: an embedded interpreter cannot be unloaded
        doc["spec"]["dynamicModules"] = [{"name": module.name, "doNotClose": True,
                                          "source": {"local": {"path": module.path}}}]
    sidecar_options = deployment.gateway.sidecar
    if sidecar_options is not None:
        doc["spec"]["provider"] = {"type": "Kubernetes", "kubernetes": {
            "envoyDeployment": envoy_deployment(
                sidecar_options, processor_path(deployment), deployment.addresses)}}
    return doc


def sidecar_documents(deployment: Deployment) -> list[dict[str, Any]]:
    """What a sidecar deployment needs besides the EnvoyProxy: the GatewayClass that refers
    to it, when named. (Envoy Gateway's own configuration is not a document to apply: see
    :func:`extctl.config.gateway_notes.envoy_gateway_patch`.)"""
    options = deployment.gateway.sidecar
    if options is None or options.gateway_class is None:
        return []
    check_name(options.gateway_class, "GatewayClass")
    return [gateway_class(options, f"{deployment.name}-proxy", deployment.gateway.namespace)]


def resources(deployment: Deployment) -> list[dict[str, Any]]:
    """The EnvoyExtensionPolicy, the Backend when there is a processor, and the policies the
    deployment asks for (SecurityPolicy, BackendTrafficPolicy, ClientTrafficPolicy,
    EnvoyProxy, with the sidecar when there is one; then the GatewayClass that attaches it,
    when named)."""
    policy = deployment.policy
    docs = [extension_policy(deployment)]
    if deployment.processor is not None and deployment.dynamic_module is None:
        docs.append(backend(deployment))
    if policy.allow_cidrs or policy.deny_cidrs:
        docs.append(security_policy(deployment))
    if policy.session is not None:
        docs.append(session_persistence(deployment))
    client = client_traffic_policy(deployment)
    if client is not None:
        docs.append(client)
    if (policy.filter_order or deployment.gateway.sidecar is not None
            or deployment.dynamic_module is not None):
        docs.append(envoy_proxy(deployment))
    docs.extend(sidecar_documents(deployment))
    return docs


def to_yaml(documents: Sequence[dict[str, Any]], notes: Sequence[str] = ()) -> str:
    """The documents as YAML, after ``notes`` as comment lines (with the comments on each
    document: :func:`extctl.config.gateway_notes.render`)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> Any:
        # A ConfigMap's embedded file reads as a block, the way people write it.
        return dumper.represent_scalar("tag:yaml.org,2002:str", value,
                                       style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    comments = "".join(f"# {line}\n" for line in notes)
    return comments + str(yaml.dump_all(list(documents), Dumper=Dumper, sort_keys=False,
                                        default_flow_style=False))
