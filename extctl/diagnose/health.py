"""One gRPC health check (``grpc.health.v1``) per processor worker, with a deadline: what the
sidecar's Kubernetes probes run (``extctl health``).

    results = check(ServerConfig(uds="/var/run/extproc/extproc.sock", workers=2).addresses())
    assert all(r.serving for r in results)
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """One worker's answer: ``SERVING``, ``NOT_SERVING``, ``UNKNOWN``, or why there was none."""

    address: str
    status: str
    detail: str = ""
    workers: tuple[str, ...] = ()
    """For a socket that is not there: the sockets of a server's workers found next to it
    (``p-0.sock``, ``p-1.sock`` for ``p.sock``: what ``ServerConfig(workers=N)`` names)."""

    @property
    def serving(self) -> bool:
        return self.status == "SERVING"


def _target(address: str) -> str:
    return "unix:" + address if address.startswith("/") else address


def check_one(address: str, timeout: float = 1.0, service: str = "") -> Result:
    """Ask the server at ``address`` (a socket path or host:port) once, within ``timeout``."""
    if address.startswith("/") and not os.path.exists(address):
        return Result(address, "UNREACHABLE", "no socket there", worker_sockets(address))
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(_target(address)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service),
                                timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            name = "UNREACHABLE" if code in (grpc.StatusCode.UNAVAILABLE,
                                             grpc.StatusCode.DEADLINE_EXCEEDED) else code.name
            return Result(address, name, str(exc.details() or ""))
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return Result(address, status)


def worker_sockets(path: str) -> tuple[str, ...]:
    """The sockets a server with workers listens on instead of ``path`` (``NAME-i.EXT``,
    ``i`` from 0 up), those that exist."""
    stem, ext = os.path.splitext(path)
    directory = os.path.dirname(path) or "."
    pattern = re.compile(re.escape(os.path.basename(stem)) + r"-(\d+)" + re.escape(ext) + "$")
    try:
        names = os.listdir(directory)
    except OSError:
        return ()
    found = {int(m.group(1)) for m in map(pattern.match, names) if m}
    count = 0
    while count in found:
        count += 1
    return tuple(f"{stem}-{i}{ext}" for i in range(count))


def check(addresses: Sequence[str], timeout: float = 1.0, service: str = "") -> list[Result]:
    """Every worker's answer, in order."""
    return [check_one(address, timeout, service) for address in addresses]

