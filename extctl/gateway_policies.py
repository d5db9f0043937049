"""The other Envoy Gateway resources a deployment of extensions usually needs: client CIDR
authorization (SecurityPolicy), session persistence (BackendTrafficPolicy consistent hash),
X-Forwarded-For trusted hops (ClientTrafficPolicy), and filter order (EnvoyProxy)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from .gateway import API_VERSION, GatewayError, Target

FILTERS = ("envoy.filters.http.ext_proc", "envoy.filters.http.wasm", "envoy.filters.http.rbac",
           "envoy.filters.http.ext_authz", "envoy.filters.http.jwt_authn",
           "envoy.filters.http.lua", "envoy.filters.http.ratelimit",
           "envoy.filters.http.local_ratelimit", "envoy.filters.http.cors",
           "envoy.filters.http.buffer", "envoy.filters.http.compressor")


def _meta(kind: str, name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind,
            "metadata": {"name": name, "namespace": namespace}}


def _refs(targets: Sequence[Target]) -> list[dict[str, str]]:
    if not targets:
        raise GatewayError("a policy needs a target (a route or a gateway)")
    return [{"group": "gateway.networking.k8s.io", "kind": t.kind, "name": t.name}
            for t in targets]


def _cidrs(values: Sequence[str]) -> list[str]:
    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_network(value, strict=True)))
        except ValueError:
            raise GatewayError(f"{value!r} is not a CIDR such as 10.0.0.0/8") from None
    return out


def security_policy(name: str, targets: Sequence[Target], *, allow: Sequence[str] = (),
                    deny: Sequence[str] = (), default_action: str = "Deny",
                    namespace: str = "default") -> dict[str, Any]:
    """Allow and/or deny client CIDRs (deny rules first); anything else gets ``default_action``."""
    if default_action not in ("Allow", "Deny"):
        raise GatewayError("defaultAction is Allow or Deny")
    rules = []
    if deny:
        rules.append({"name": "deny-cidrs", "action": "Deny",
                      "principal": {"clientCIDRs": _cidrs(deny)}})
    if allow:
        rules.append({"name": "allow-cidrs", "action": "Allow",
                      "principal": {"clientCIDRs": _cidrs(allow)}})
    if not rules:
        raise GatewayError("give at least one CIDR to allow or deny")
    doc = _meta("SecurityPolicy", name, namespace)
    doc["spec"] = {"targetRefs": _refs(targets),
                   "authorization": {"defaultAction": default_action, "rules": rules}}
    return doc


def session_persistence(name: str, targets: Sequence[Target], *, by: str,
                        key: str | None = None, cookie_ttl: str | None = None,
                        namespace: str = "default") -> dict[str, Any]:
    """BackendTrafficPolicy ``loadBalancer.type: ConsistentHash`` by SourceIP, Header or Cookie."""
    consistent: dict[str, Any] = {"type": by}
    if by == "SourceIP":
        if key:
            raise GatewayError("SourceIP hashing takes no header or cookie name")
    elif by in ("Header", "Cookie"):
        if not key:
            raise GatewayError(f"{by} hashing needs the {by.lower()} name")
        consistent[by.lower()] = {"name": key}
        if by == "Cookie" and cookie_ttl:
            consistent["cookie"]["ttl"] = cookie_ttl
    else:
        raise GatewayError("session persistence is by SourceIP, Header or Cookie")
    doc = _meta("BackendTrafficPolicy", name, namespace)
    doc["spec"] = {"targetRefs": _refs(targets),
                   "loadBalancer": {"type": "ConsistentHash", "consistentHash": consistent}}
    return doc


def client_ip_detection(name: str, gateway: str, *, trusted_hops: int,
                        namespace: str = "default") -> dict[str, Any]:
    """ClientTrafficPolicy: take the client address ``trusted_hops`` back in X-Forwarded-For."""
    if trusted_hops < 1:
        raise GatewayError("numTrustedHops must be at least 1")
    doc = _meta("ClientTrafficPolicy", name, namespace)
    doc["spec"] = {"targetRefs": _refs([Target("Gateway", gateway)]),
                   "clientIPDetection": {"xForwardedFor": {"numTrustedHops": trusted_hops}}}
    return doc


def filter_order(name: str, order: Sequence[tuple[str, str, str]],
                 namespace: str = "default") -> dict[str, Any]:
    """EnvoyProxy ``filterOrder``: each ``(filter, "before"|"after", other filter)``."""
    entries = []
    for filter_name, relation, other in order:
        for value in (filter_name, other):
            if value not in FILTERS:
                raise GatewayError(f"unknown filter {value!r}; one of {', '.join(FILTERS)}")
        if relation not in ("before", "after"):
            raise GatewayError("a filter goes before or after another")
        if filter_name == other:
            raise GatewayError(f"{filter_name} cannot be ordered against itself")
        entries.append({"name": filter_name, relation: other})
    doc = _meta("EnvoyProxy", name, namespace)
    doc["spec"] = {"filterOrder": entries}
    return doc
