"""``extctl serve`` over TCP with TLS and client certificates, from the test CA (openssl): the
one serve test that needs a tool beyond the venv, so it lives with the CLI tests, whose
conftest asks for openssl, and tests/extproc runs with the venv alone."""

from __future__ import annotations

import signal
import time

import grpc
import pytest

from tests.helpers.oci import free_port
from tests.helpers.serve import SERVING, _health, serve


def test_tcp_with_tls_and_client_certificates(test_ca, extctl, transport):
    tls_files = test_ca
    port = free_port()
    proc = serve(extctl, transport, "tests.helpers.procs:HeadersOnly", "--address",
                 f"127.0.0.1:{port}",
                  "--tls-cert", str(tls_files["server.pem"]),
                  "--tls-key", str(tls_files["server.key"]),
                  "--tls-client-ca", str(tls_files["ca.pem"]))
    try:
        ca = tls_files["ca.pem"].read_bytes()
        with_client_cert = grpc.ssl_channel_credentials(
            ca, tls_files["client.key"].read_bytes(), tls_files["client.pem"].read_bytes())
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline and status is None:
            try:
                status = _health(f"127.0.0.1:{port}", credentials=with_client_cert)
            except grpc.RpcError:
                time.sleep(0.1)
        assert status == SERVING
        with pytest.raises(grpc.RpcError):
            _health(f"127.0.0.1:{port}", credentials=grpc.ssl_channel_credentials(ca))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0

