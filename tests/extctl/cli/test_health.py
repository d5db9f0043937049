"""``extctl health``: what the sidecar's probes run, against real servers."""

from __future__ import annotations

import json
from concurrent import futures

import grpc
from click.testing import CliRunner
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import extproc
from extctl.cli import cli
from extctl.cli.exits import OK, UNHEALTHY, USAGE
from extctl.diagnose.health import check
from tests.helpers.procs import Rewrite


def _health(*args: str):
    return CliRunner().invoke(cli, ["health", *args])


def test_every_worker_serving_exits_0(sock_dir):
    base = str(sock_dir / "p.sock")
    config = extproc.ServerConfig(uds=base, workers=2)
    # One server on each worker's socket, as serve --workers 2 would listen.
    threads = [extproc.ServerThread(Rewrite, uds=address) for address in config.addresses()]
    for thread in threads:
        thread.start()
    try:
        result = _health("--uds", base, "--workers", "2")
        as_json = _health("--uds", base, "--workers", "2", "--output", "json")
    finally:
        for thread in threads:
            thread.stop()
    assert result.exit_code == OK, result.output
    assert result.stdout.splitlines() == [f"{a}: SERVING" for a in config.addresses()]
    assert json.loads(as_json.stdout) == [{"address": a, "status": "SERVING", "detail": ""}
                                          for a in config.addresses()]


def test_a_missing_worker_or_socket_exits_unhealthy(sock_dir):
    base = str(sock_dir / "p.sock")
    with extproc.ServerThread(Rewrite, uds=base):
        one = _health("--uds", base, "--workers", "1")
        two = _health("--uds", base, "--workers", "2", "--timeout", "0.5")
    assert one.exit_code == OK
    assert two.exit_code == UNHEALTHY
    assert f"{sock_dir}/p-0.sock: UNREACHABLE" in two.output
    gone = _health("--uds", base, "--timeout", "0.5")
    assert gone.exit_code == UNHEALTHY
    assert gone.output == f"{base}: UNREACHABLE (no socket there)\n"


def test_not_serving_is_unhealthy(sock_dir):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    path = str(sock_dir / "h.sock")
    server.add_insecure_port("unix:" + path)
    server.start()
    try:
        result = _health("--uds", path)
        (answer,) = check([path], timeout=2)
    finally:
        server.stop(None)
    assert result.exit_code == UNHEALTHY
    assert "NOT_SERVING" in result.output
    assert answer.status == "NOT_SERVING" and not answer.serving


def test_tcp_and_usage():
    assert _health().exit_code == USAGE
    assert _health("--uds", "/x.sock", "--address", "127.0.0.1:1").exit_code == USAGE
    refused = _health("--address", "127.0.0.1:9", "--timeout", "0.5")
    assert refused.exit_code == UNHEALTHY and "UNREACHABLE" in refused.output
    from_env = CliRunner().invoke(cli, ["health"], env={"EXTCTL_HEALTH_ADDRESS": "127.0.0.1:9",
                                                        "EXTCTL_HEALTH_TIMEOUT": "0.5"})
    assert from_env.exit_code == UNHEALTHY and "127.0.0.1:9: UNREACHABLE" in from_env.output
