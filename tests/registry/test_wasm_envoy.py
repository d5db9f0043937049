"""A module pushed to the registry, pulled back, served over HTTP and loaded by a real Envoy
that checks its sha256: the filter's effect is seen on a request."""

from __future__ import annotations

import functools
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

import registry as oci
from extctl.config import Deployment, WasmModule
from extctl.testing import EnvoyProcess
from tests.helpers.common import http
from tests.helpers.oci import PASSWORD, USER


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def module_server(tmp_path):
    handler = functools.partial(_Quiet, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_pushed_and_pulled_module_runs_in_envoy(registry, wat_module, tmp_path, echo,
                                                module_server):
    conn = oci.Connection(oci.Credentials(USER, PASSWORD, "t"), ca_file=str(registry.ca_file))
    ref = f"oci://{registry.host}/filters/envoy-header:v1"
    pushed = oci.push(wat_module, ref, connection=conn)
    pulled = oci.pull(ref, tmp_path / "served.wasm", connection=conn, sha256=pushed.digest)
    sha = hashlib.sha256(pulled.path.read_bytes()).hexdigest()
    assert sha == pulled.sha256
    config = Deployment(upstreams=[echo.address], wasm=[WasmModule(
        "add-header", url=f"{module_server}/served.wasm", sha256=sha, text="{}")])
    with EnvoyProcess(config.envoy_bootstrap(), tmp_path / "envoy") as envoy:
        reply = http(envoy.port, "/")
    assert reply.status == 200
    assert reply.headers["x-wasm"] == "added"


def test_envoy_refuses_a_module_with_the_wrong_sha256(wat_module, tmp_path, echo, module_server):
    (tmp_path / "served.wasm").write_bytes(wat_module.read_bytes())
    config = Deployment(upstreams=[echo.address], wasm=[WasmModule(
        "add-header", url=f"{module_server}/served.wasm", sha256="0" * 64)])
    with EnvoyProcess(config.envoy_bootstrap(), tmp_path / "envoy") as envoy:
        reply = http(envoy.port, "/")
        log = envoy.log()
    # The download does not match: the plugin is not loaded and, failing closed, Envoy refuses
    # the request instead of running without it.
    assert reply.status == 503
    assert "x-wasm" not in reply.headers
    assert "Plugin add-header failed to load" in log
