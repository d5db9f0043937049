"""The processor's memory for a 30 MiB BUFFERED body through a real Envoy: a real ``extctl
serve`` process (grpcio), its peak RSS (VmHWM) and its RSS once the request is done, against
the body's size.

The bounds, in bodies of growth over the RSS before the request (bench/memory.py,
bench/RESULTS.md): gRPC alone needs three bodies on the way in (its receive buffer, the
slices it copies out, and their join handed to the deserializer), which is this code's peak;
a hand-written grpc.aio servicer peaks near seven; before the large-body work this server
peaked at 5.6-6.6 and kept 1.6-2.6 after the request.
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest

import extproc
from extctl.config import Deployment
from extctl.harness.echo import EchoServer
from extctl.testing import EnvoyProcess
from tests.helpers.common import memory, wait_for_socket

pytestmark = pytest.mark.envoy

MIB = 1024 * 1024
BODY = 30 * MIB
PEAK_BODIES = 4.5  # growth of VmHWM over the RSS before the request
AFTER_BODIES = 0.5  # growth of VmRSS once the answer is back (within SETTLE)
SETTLE = 5.0


class AppendOne(extproc.Processor):
    """Appends a byte to the BUFFERED request body."""

    request_body_mode = extproc.BodyMode.BUFFERED
    message_timeout = 60.0

    async def on_request_body(self, body: extproc.Body) -> None:
        body.data = body.data + b"!"


def _length(method: str, path: str, headers: object,
            body: bytes) -> tuple[int, dict[str, str], bytes, dict[str, str]]:
    return 200, {}, str(len(body)).encode(), {}


def test_a_30_mib_buffered_body_costs_few_bodies_of_memory(extctl, sock_dir: Path,
                                                           tmp_path: Path) -> None:
    socket = sock_dir / "p.sock"
    server = extctl("serve", "tests.extproc.test_memory_e2e:AppendOne", "--uds", str(socket),
                    "--max-message-bytes", str(64 * MIB), "--log-level", "warning")
    wait_for_socket(socket, server)
    with EchoServer(answer=_length) as upstream:
        config = Deployment.build(AppendOne, addresses=[str(socket)],
                                  upstreams=[upstream.address]).envoy_bootstrap()
        with EnvoyProcess(config, tmp_path / "envoy") as envoy:
            checked = "cluster.extproc.health_check.success"
            deadline = time.monotonic() + 10
            while envoy.stats(checked)[checked] < 1:  # the first health check answered
                assert time.monotonic() < deadline, envoy.stats("cluster.extproc.health")
                time.sleep(0.02)
            start = memory(server.pid)["VmRSS"]
            connection = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=60)
            connection.request("POST", "/", body=b"x" * BODY,
                               headers={"content-type": "application/octet-stream"})
            reply = connection.getresponse()
            answer = reply.read()
            connection.close()
            assert (reply.status, answer) == (200, str(BODY + 1).encode()), envoy.log()[-2000:]
            peak = memory(server.pid)["VmHWM"] - start
            deadline = time.monotonic() + SETTLE
            while (after := memory(server.pid)["VmRSS"] - start) > AFTER_BODIES * BODY:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
    figures = f"peak {peak / BODY:.1f} bodies, after {after / BODY:.1f} bodies"
    assert peak <= PEAK_BODIES * BODY, figures
    assert after <= AFTER_BODIES * BODY, figures
