"""The processor as a native sidecar of Envoy Gateway's Envoy pods (EnvoyProxy, v1alpha1).

Kubernetes starts an init container with ``restartPolicy: Always`` before the main containers
and waits for its startup probe, so Envoy never dials a socket that is not there yet; it stops
it after Envoy. The socket lives in a memory-backed emptyDir that only the two containers mount.

Permissions: the pod's ``fsGroup`` makes kubelet create the emptyDir group-owned by that group
with the setgid bit, and adds the group to every container's supplementary groups (Envoy's
too: Envoy Gateway runs Envoy as uid 65532). The socket the sidecar creates there inherits the
group, and mode 660 lets the sidecar's user and that group connect and nobody else.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from extproc import ServeError, ServerConfig

from .errors import GatewayError

ENVOY_UID = 65532
"""The user Envoy Gateway runs Envoy as."""
SOCKET_MODE = 0o660
VOLUME = "extproc-socket"
EG_NAMESPACE = "envoy-gateway-system"
EG_CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"

# Envoy Gateway's CEL rule for container images, which sidecar images are held to as well.
_IMAGE = re.compile(r"^[a-zA-Z0-9._-]+(:[0-9]+)?(/[a-zA-Z0-9._/-]+)?(:[a-zA-Z0-9._-]+)?"
                    r"(@sha256:[a-z0-9]+)?$")
_QUANTITY = re.compile(r"^(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


@dataclass(frozen=True)
class Sidecar:
    """How the processor runs next to Envoy: its image, user, socket group and resources."""

    image: str = field(metadata={
        "help": "The processor's container image (extctl on PATH, the class importable)."})
    user: int = field(default=10001, metadata={
        "help": "The sidecar's uid and gid (non-root; the scaffolded Dockerfile's user)."})
    socket_group: int = field(default=10001, metadata={
        "help": "The pod's fsGroup: owns the socket's directory and the socket; Envoy's user "
                "is a member."})
    socket_mode: int = field(default=SOCKET_MODE, metadata={
        "help": "The socket's mode: the sidecar's user and the group read/write, others "
                "nothing."})
    cpu: str = field(default="100m", metadata={"help": "The sidecar's CPU request."})
    memory: str = field(default="128Mi", metadata={
        "help": "The sidecar's memory request, and limit."})
    cpu_limit: str | None = field(default=None, metadata={
        "help": "The sidecar's CPU limit (none by default: a throttled processor stalls "
                "every request)."})
    gateway_class: str | None = field(default=None, metadata={
        "help": "Write this GatewayClass, its parametersRef naming the EnvoyProxy (none: set "
                "your Gateway's spec.infrastructure.parametersRef; the output says how)."})
    eg_namespace: str = field(default=EG_NAMESPACE, metadata={
        "help": "Namespace of Envoy Gateway's envoy-gateway-config ConfigMap."})
    admin_port: int | None = field(default=None, metadata={
        "help": "Serve the admin endpoint on this port of the pod (metrics for Prometheus at "
                "/metrics, /healthz, /readyz) and probe it over HTTP instead of running "
                "`extctl health` in the container for every probe."})

    def __post_init__(self) -> None:
        if not _IMAGE.match(self.image):
            raise GatewayError(f"sidecar image {self.image!r} is not an image reference "
                               "(REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST])")
        for what, uid in (("user", self.user), ("socket group", self.socket_group)):
            if not 0 < uid < 2**31:
                raise GatewayError(f"sidecar {what} {uid}: give a non-root id (1..2^31-1)")
        if self.socket_mode & 0o007 or not self.socket_mode & 0o060 == 0o060:
            raise GatewayError(f"socket mode {self.socket_mode:o}: the group (Envoy) needs "
                               "read and write, and others no access (660)")
        if self.admin_port is not None and not 1024 <= self.admin_port <= 65535:
            raise GatewayError(f"admin port {self.admin_port}: give 1024..65535 (the sidecar "
                               "runs as non-root)")
        for what, quantity in (("cpu", self.cpu), ("memory", self.memory),
                               ("cpu limit", self.cpu_limit)):
            if quantity is not None and not _QUANTITY.match(quantity):
                raise GatewayError(f"sidecar {what} {quantity!r} is not a Kubernetes quantity "
                                   "(e.g. 100m, 0.5, 128Mi)")


def socket_base(addresses: Sequence[str]) -> tuple[str, int]:
    """The socket path and workers count (``extctl serve --uds``, ``--workers``) that serve
    exactly ``addresses``."""
    if not addresses or not all(a.startswith("/") for a in addresses):
        raise GatewayError.naming("a sidecar is reached over a Unix socket: give {addresses} "
                                  "as the socket's absolute path (Envoy Gateway refuses "
                                  "loopback IPs)")
    workers = len(addresses)
    base = addresses[0]
    if workers > 1:
        stem, ext = os.path.splitext(addresses[0])
        base = stem.removesuffix("-0") + ext
    try:
        expected = ServerConfig(uds=base, workers=workers).addresses()
    except ServeError as exc:
        raise exc.recast(GatewayError) from None
    if expected != list(addresses):
        raise GatewayError("the sidecar serves its workers' sockets as ServerConfig names them "
                           f"({', '.join(expected)}); give those addresses")
    return base, workers


def _probe(how: dict[str, Any], period: int, failures: int) -> dict[str, Any]:
    # a copy each: shared objects would come out as YAML anchors
    return {**copy.deepcopy(how), "periodSeconds": period, "timeoutSeconds": 3,
            "failureThreshold": failures}


def container(sidecar: Sidecar, processor: str, addresses: Sequence[str]) -> dict[str, Any]:
    """The sidecar: ``extctl serve`` as a native sidecar (an init container that keeps
    running), probed with ``extctl health`` on every worker's socket, or over HTTP on the
    admin endpoint when it has a port (``/readyz``: every worker serving; ``/healthz``:
    every worker's event loop turns)."""
    uds, workers = socket_base(addresses)
    command = ["extctl", "serve", processor, "--uds", uds, "--workers", str(workers),
               "--socket-mode", f"{sidecar.socket_mode:o}"]
    ports: list[dict[str, Any]] = []
    ready: dict[str, Any]
    alive: dict[str, Any]
    if sidecar.admin_port is None:
        health: dict[str, Any] = {"exec": {"command": [
            "extctl", "health", "--uds", uds, "--workers", str(workers), "--timeout", "2"]}}
        ready = alive = health
    else:
        # the pod's address: kubelet probes it, Prometheus scrapes it
        command += ["--admin", f"0.0.0.0:{sidecar.admin_port}"]
        ports = [{"name": "extproc-admin", "containerPort": sidecar.admin_port,
                  "protocol": "TCP"}]
        ready = {"httpGet": {"path": "/readyz", "port": sidecar.admin_port}}
        alive = {"httpGet": {"path": "/healthz", "port": sidecar.admin_port}}
    resources: dict[str, Any] = {"requests": {"cpu": sidecar.cpu, "memory": sidecar.memory},
                                 "limits": {"memory": sidecar.memory}}
    if sidecar.cpu_limit is not None:
        resources["limits"]["cpu"] = sidecar.cpu_limit
    return {
        "name": "extproc",
        "image": sidecar.image,
        "restartPolicy": "Always",
        "command": command,
        **({"ports": ports} if ports else {}),
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        # Envoy starts once this passes: no "No such file" 500s while the sidecar starts.
        "startupProbe": _probe(ready, 1, 60),
        "readinessProbe": _probe(ready, 5, 2),
        "livenessProbe": _probe(alive, 10, 3),
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": sidecar.user, "runAsGroup": sidecar.user,
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": VOLUME, "mountPath": os.path.dirname(uds)}],
    }


def envoy_deployment(sidecar: Sidecar, processor: str,
                     addresses: Sequence[str]) -> dict[str, Any]:
    """``provider.kubernetes.envoyDeployment``: the sidecar, the shared socket volume, and
    the pod's fsGroup that lets Envoy's user reach the socket."""
    directory = os.path.dirname(socket_base(addresses)[0])
    return {
        "pod": {
            "securityContext": {"fsGroup": sidecar.socket_group},
            "volumes": [{"name": VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
        },
        "container": {
            # Envoy Gateway's own defaults, spelled out: Envoy is not root either.
            "securityContext": {
                "runAsNonRoot": True, "runAsUser": ENVOY_UID, "runAsGroup": ENVOY_UID,
                "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}},
            "volumeMounts": [{"name": VOLUME, "mountPath": directory}],
        },
        "initContainers": [container(sidecar, processor, addresses)],
    }


def gateway_class(sidecar: Sidecar, proxy: str, namespace: str) -> dict[str, Any]:
    """The GatewayClass that hands the EnvoyProxy to every Gateway of the class."""
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": sidecar.gateway_class},
            "spec": {"controllerName": EG_CONTROLLER,
                     "parametersRef": {"group": "gateway.envoyproxy.io", "kind": "EnvoyProxy",
                                       "name": proxy, "namespace": namespace}}}
