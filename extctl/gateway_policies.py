"""The other Envoy Gateway resources a deployment of extensions usually needs: client CIDR
authorization (SecurityPolicy), session persistence (BackendTrafficPolicy consistent hash),
X-Forwarded-For trusted hops (ClientTrafficPolicy), and filter order (EnvoyProxy)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from .filter_order import FilterPosition
from .gateway import API_VERSION, GatewayError, Target
from .session_persistence import SessionPersistence


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


def session_persistence(name: str, targets: Sequence[Target], session: SessionPersistence,
                        namespace: str = "default") -> dict[str, Any]:
    """BackendTrafficPolicy ``loadBalancer.type: ConsistentHash`` by SourceIP, Header or Cookie."""
    doc = _meta("BackendTrafficPolicy", name, namespace)
    doc["spec"] = {"targetRefs": _refs(targets),
                   "loadBalancer": {"type": "ConsistentHash",
                                    "consistentHash": session.to_consistent_hash()}}
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


def filter_order(name: str, positions: Sequence[FilterPosition],
                 namespace: str = "default") -> dict[str, Any]:
    """EnvoyProxy ``filterOrder``, applied by Envoy Gateway in the order given."""
    if not positions:
        raise GatewayError("give at least one filter position")
    doc = _meta("EnvoyProxy", name, namespace)
    doc["spec"] = {"filterOrder": [p.to_spec() for p in positions]}
    return doc
