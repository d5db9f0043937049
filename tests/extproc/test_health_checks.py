"""Envoy's active gRPC health checks of the processor, as both generators configure them, and what
they do through a real Envoy 1.40: every worker healthy when Envoy starts, a draining worker out
of rotation while another serves, a dead processor noticed before any traffic."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2

import extproc
from extctl.config import Deployment, GatewayOptions, Target
from extctl.config.health_check import PROCESSOR, SERVICE
from extctl.diagnose.health import check
from extctl.testing import EnvoyProcess
from tests.helpers.common import alive, http, wait_for_socket
from tests.helpers.crds import validate
from tests.helpers.procs import Rewrite, Slow


def test_both_generators_check_the_service_the_servers_answer_for():
    service = external_processor_pb2.DESCRIPTOR.services_by_name["ExternalProcessor"]
    assert SERVICE == service.full_name == extproc.SERVICE_NAME
    deployment = Deployment(Rewrite, addresses=["/run/p/p-0.sock", "/run/p/p-1.sock"],
                            gateway=GatewayOptions(targets=[Target("HTTPRoute", "r")]))
    (cluster,) = [c for c in deployment.envoy_bootstrap().static_resources.clusters
                  if c.name == "extproc"]
    (check,) = cluster.health_checks
    assert check.grpc_health_check.service_name == SERVICE
    assert check.timeout.ToMilliseconds() == PROCESSOR.timeout * 1000
    assert check.interval.ToMilliseconds() == PROCESSOR.interval * 1000
    # Envoy's default, 60 s until the first request, would leave a dead processor unnoticed
    assert check.no_traffic_interval.ToMilliseconds() == PROCESSOR.no_traffic_interval * 1000
    assert check.unhealthy_threshold.value == PROCESSOR.unhealthy_threshold
    assert check.healthy_threshold.value == PROCESSOR.healthy_threshold
    policy = deployment.gateway_resources()[0]
    validate(policy)
    (ext_proc,) = policy["spec"]["extProc"]
    assert ext_proc["backendSettings"] == {"healthCheck": {"active": {
        "type": "GRPC", "grpc": {"service": SERVICE}, "timeout": "1s", "interval": "500ms",
        "unhealthyThreshold": PROCESSOR.unhealthy_threshold,
        "healthyThreshold": PROCESSOR.healthy_threshold}}}


def _hosts(envoy: EnvoyProcess) -> dict[str, dict[str, Any]]:
    """The ext_proc cluster's hosts by socket path: their ``health_status``."""
    clusters = json.loads(envoy.admin("/clusters?format=json"))["cluster_statuses"]
    (cluster,) = [c for c in clusters if c["name"] == "extproc"]
    return {h["address"]["pipe"]["path"]: h["health_status"] for h in cluster["host_statuses"]}


def _failed(envoy: EnvoyProcess, path: str) -> bool:
    return bool(_hosts(envoy)[path].get("failed_active_health_check"))


def _wait_failed(envoy: EnvoyProcess, path: str, timeout: float = 30) -> None:
    """Until Envoy marks ``path`` failed_active_health_check (Envoy's default no-traffic
    interval, 60 s, would not make it within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not _failed(envoy, path):
        assert time.monotonic() < deadline, f"{path} still healthy: {_hosts(envoy)}"
        time.sleep(0.05)


def _logged_envoy(processor: type, sockets: list[str], workdir: Path) -> EnvoyProcess:
    """Envoy from the generated config, its health checker logging every check's outcome
    (and each ejection) to ``workdir / "checks.log"``."""
    from envoy.extensions.health_check.event_sinks.file.v3 import file_pb2

    bootstrap = Deployment.build(processor, addresses=sockets).envoy_bootstrap()
    (cluster,) = [c for c in bootstrap.static_resources.clusters if c.name == "extproc"]
    (health_check,) = cluster.health_checks
    health_check.always_log_health_check_failures = True
    health_check.always_log_health_check_success = True
    sink = health_check.event_logger.add(name="envoy.health_check.event_sink.file")
    sink.typed_config.Pack(file_pb2.HealthCheckEventFileSink(
        event_log_path=str(workdir / "checks.log")))
    return EnvoyProcess(bootstrap, workdir / "envoy")


def _checks_until_ejected(workdir: Path, path: str) -> list[str]:
    """The failed checks of ``path`` since its last success, up to the one that ejected it,
    each by its failure type (``NETWORK``: refused or reset; ``ACTIVE``: NOT_SERVING)."""
    outcomes: list[str] = []
    for line in (workdir / "checks.log").read_text().splitlines():
        event = json.loads(line)
        if event["host"]["pipe"]["path"] != path:
            continue
        if "successful_health_check_event" in event or "add_healthy_event" in event:
            outcomes = []
        elif "health_check_failure_event" in event:
            outcomes.append(event["health_check_failure_event"]["failure_type"])
        elif "eject_unhealthy_event" in event:
            # logged before the failure of the check that ejects
            return [*outcomes, event["eject_unhealthy_event"]["failure_type"]]
    raise AssertionError(f"{path} was never ejected: {outcomes}")


def _stop(proc: Any) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except Exception:
        proc.kill()


def _wait_serving(proc: Any, sockets: list[str]) -> None:
    """Until every worker answers SERVING, as the sidecar's startup probe waits before
    Kubernetes starts Envoy (a socket can exist before its server answers)."""
    deadline = time.monotonic() + 30
    for path in sockets:
        wait_for_socket(Path(path), proc)
    while not all(r.serving for r in check(sockets, service=SERVICE)):
        assert proc.poll() is None, proc.communicate(timeout=15)
        assert time.monotonic() < deadline, check(sockets, service=SERVICE)
        time.sleep(0.1)


def _workers(extctl: Any, sock_dir: Path, transport: str = "grpcio") -> tuple[Any, list[str]]:
    sockets = [str(sock_dir / f"w-{i}.sock") for i in range(2)]
    proc = extctl("serve", "tests.helpers.procs:Slow", "--uds", str(sock_dir / "w.sock"),
                  "--workers", "2",
                  "--grace-period", "15", "--transport", transport)
    _wait_serving(proc, sockets)
    return proc, sockets


@pytest.mark.envoy
def test_every_worker_is_healthy_when_envoy_starts_and_the_first_request_passes(
        sock_dir, extctl, transport):
    """Envoy starts its listener after one check of every host, and a first success marks a
    host healthy: the request right after start reaches a healthy worker (both transports
    answer the check)."""
    proc, sockets = _workers(extctl, sock_dir, transport)
    try:
        with EnvoyProcess(Deployment.build(Slow, addresses=sockets).envoy_bootstrap(),
                          sock_dir / "envoy") as envoy:
            first = http(envoy.port, "/")
            hosts = _hosts(envoy)
        assert first.status == 200 and "x-worker-pid" in first.headers, first
        assert set(hosts) == set(sockets)
        for path, health in hosts.items():
            assert not health.get("failed_active_health_check"), (path, health)
    finally:
        _stop(proc)


@pytest.mark.envoy
def test_a_draining_worker_gets_no_new_streams_while_the_other_serves_them(sock_dir, extctl):
    proc, sockets = _workers(extctl, sock_dir)
    try:
        owners = {path: _listener_pid(path) for path in sockets}
        victim, other = sockets
        release = sock_dir / "release"
        with _logged_envoy(Slow, sockets, sock_dir) as envoy:
            # One Envoy worker thread: round robin alternates, so two requests in a row
            # reach both processor workers, and each holds one in flight until released.
            slow: dict[int, Any] = {}
            threads = []
            for i in range(2):
                mark = sock_dir / f"inside-{i}"
                threads.append(threading.Thread(target=lambda i=i, mark=mark: slow.update(
                    {i: http(envoy.port, "/", headers={"x-mark": str(mark),
                                                       "x-release": str(release)})}),
                    daemon=True))
                threads[-1].start()
                wait_for_socket(mark, proc)  # held in a worker's hook before the next one
            holders = {int((sock_dir / f"inside-{i}").read_text()) for i in range(2)}
            assert holders == set(owners.values())  # each worker holds one
            os.kill(owners[victim], signal.SIGTERM)  # it drains; its request stays in flight
            _wait_failed(envoy, victim)
            served = [http(envoy.port, "/") for _ in range(20)]
            still_draining = alive(owners[victim])
            assert not _failed(envoy, other)
            release.touch()
            for thread in threads:
                thread.join(20)
        assert still_draining, "the worker exited: it was not draining during the requests"
        assert [r.status for r in served] == [200] * 20
        assert {r.headers["x-worker-pid"] for r in served} == {str(owners[other])}
        # each worker had a request in flight, and the draining one finished its own
        assert sorted(r.headers.get("x-worker-pid") for r in slow.values()) == sorted(
            str(pid) for pid in owners.values()), slow
        # out of rotation after no more failed checks than unhealthy_threshold
        failed = _checks_until_ejected(sock_dir, victim)
        assert 1 <= len(failed) <= PROCESSOR.unhealthy_threshold, failed
    finally:
        _stop(proc)


def _listener_pid(path: str) -> int:
    """The pid of the process listening on the Unix socket ``path`` (the peer's credentials
    of a connection to it)."""
    import socket
    import struct

    with socket.socket(socket.AF_UNIX) as probe:
        probe.connect(path)
        pid, _, _ = struct.unpack("3i", probe.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return int(pid)



@pytest.mark.envoy
def test_a_dead_processor_is_marked_failed_without_any_traffic(sock_dir, extctl):
    path = sock_dir / "p.sock"
    proc = extctl("serve", "tests.helpers.procs:Slow", "--uds", str(path))
    try:
        _wait_serving(proc, [str(path)])
        with _logged_envoy(Slow, [str(path)], sock_dir) as envoy:
            assert not _failed(envoy, str(path))
            proc.kill()  # its socket file stays: connections are refused
            proc.wait(10)
            _wait_failed(envoy, str(path))
            assert envoy.stats("cluster.extproc.")["cluster.extproc.upstream_cx_total"] == 0
        # refused connections: ejected at the unhealthy_threshold-th in a row, no later
        failed = _checks_until_ejected(sock_dir, str(path))
        assert failed == ["NETWORK"] * PROCESSOR.unhealthy_threshold, failed
    finally:
        _stop(proc)
