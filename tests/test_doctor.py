"""``extctl doctor`` against real Envoys started from generated configs: one correct, one
without the filter on the route, one with a Wasm module that fails to load, one whose
processor socket is gone."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from conftest import ROOT, http
from procs import HeadersOnly, Rewrite

import extproc
from extctl.cli import cli
from extctl.cli.exits import FINDINGS, OK, TRANSPORT
from extctl.config import Deployment, WasmModule
from extctl.diagnose.doctor import diagnose, doctor
from extctl.testing import EnvoyProcess

pytestmark = pytest.mark.envoy


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def module_url(tmp_path, wat_module):
    """The module served over HTTP on loopback: (URL, its sha256)."""
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "m.wasm").write_bytes(wat_module.read_bytes())
    handler = functools.partial(_Quiet, directory=str(tmp_path / "served"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield (f"http://127.0.0.1:{server.server_address[1]}/m.wasm",
           hashlib.sha256(wat_module.read_bytes()).hexdigest())
    server.shutdown()
    server.server_close()


def _doctor(envoy: EnvoyProcess, *args: str):
    """``extctl doctor --output json`` through the CLI: (exit code, report)."""
    result = CliRunner().invoke(cli, ["doctor", "--admin", f"http://{envoy.admin_address}",
                                      "--output", "json", "--app-dir", str(ROOT / "tests"),
                                      *args])
    report = json.loads(result.stdout)
    return result.exit_code, report


def test_a_correct_deployment_is_reported_and_passes(sock_dir, tmp_path, wat_module):
    socket = str(sock_dir / "p.sock")
    deployment = Deployment(Rewrite, addresses=[socket],
                            wasm=[WasmModule("tag", file=str(wat_module), text="{}")])
    with extproc.ServerThread(Rewrite, uds=socket), \
            EnvoyProcess(deployment.envoy_bootstrap(), tmp_path / "envoy") as envoy:
        assert http(envoy.port, "/").headers["x-wasm"] == "added"
        code, report = _doctor(envoy, "procs:Rewrite", "--wasm", "tag")
        text = CliRunner().invoke(cli, ["doctor", "--admin", envoy.admin_address])
    assert code == OK, report["problems"]
    assert report["ok"] is True and report["problems"] == []
    (route,) = report["routes"]
    assert route["filters"] == ["envoy.filters.http.ext_proc/rewrite",
                                "envoy.filters.http.wasm/tag", "envoy.filters.http.router"]
    (endpoint,) = report["endpoints"]
    assert endpoint["address"] == socket and endpoint["health"] == "healthy"
    assert endpoint["active_connections"] == 1 and endpoint["connect_failures"] == 0
    assert report["wasm"] == [{"name": "tag", "source": f"local {wat_module}", "loaded": True}]
    assert report["counters"]["ext_proc.streams_started"] == 1
    assert report["counters"]["ext_proc.streams_failed"] == 0
    assert report["mode"]["match"] is True
    assert text.exit_code == OK
    assert "ok: everything expected is there" in text.stdout
    assert "route local/any prefix /: envoy.filters.http.ext_proc/rewrite -> " in text.stdout


def test_a_filter_not_on_the_route_and_a_mode_that_differs(sock_dir, tmp_path):
    socket = str(sock_dir / "p.sock")
    bootstrap = Deployment(Rewrite, addresses=[socket]).envoy_bootstrap()
    # What Envoy Gateway does for a policy no route refers to: the filter is installed
    # disabled, and no route's typed_per_filter_config turns it on.
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    chain = bootstrap.static_resources.listeners[0].filter_chains[0].filters[0]
    manager = hcm_pb2.HttpConnectionManager()
    chain.typed_config.Unpack(manager)
    manager.http_filters[0].disabled = True
    chain.typed_config.Pack(manager)
    with extproc.ServerThread(Rewrite, uds=socket), \
            EnvoyProcess(bootstrap, tmp_path / "envoy") as envoy:
        reply = http(envoy.port, "/")
        code, report = _doctor(envoy, "procs:HeadersOnly")
    assert reply.status == 200 and "x-processed-by" not in reply.headers  # it did not run
    assert code == FINDINGS
    listener = report["listeners"]["http"]
    assert listener[0] == {"name": "envoy.filters.http.ext_proc/rewrite",
                           "kind": "envoy.filters.http.ext_proc", "disabled": True}
    assert report["routes"][0]["filters"] == ["envoy.filters.http.router"]
    assert any("ext_proc/rewrite is on a listener but no route runs it" in p
               for p in report["problems"])
    assert any("response_headers SEND (class: SKIP)" in p for p in report["problems"])
    assert report["mode"]["match"] is False


def test_a_wasm_module_that_fails_to_load(sock_dir, tmp_path, module_url):
    url, sha = module_url
    socket = str(sock_dir / "p.sock")
    deployment = Deployment(Rewrite, addresses=[socket], wasm=[
        WasmModule("broken", url=url, sha256="0" * 64, fail_open=True)])
    with extproc.ServerThread(Rewrite, uds=socket), \
            EnvoyProcess(deployment.envoy_bootstrap(), tmp_path / "envoy") as envoy:
        reply = http(envoy.port, "/")
        code, report = _doctor(envoy, "procs:Rewrite", "--wasm", "broken", "--wasm", "absent")
    assert reply.status == 200 and "x-wasm" not in reply.headers  # failed open, not run
    assert code == FINDINGS
    assert report["counters"]["wasm.remote_load_fetch_failures"] >= 1
    assert any("remote Wasm module fetch(es) failed or did not match the sha256" in p
               and "broken" in p for p in report["problems"])
    assert any("Wasm module absent is not configured" in p for p in report["problems"])
    assert report["wasm"][0]["source"] == f"remote {url}"
    assert sha  # the served module is fine; only the pinned digest is wrong


def test_a_processor_socket_that_is_gone(sock_dir, tmp_path):
    socket = str(sock_dir / "p.sock")
    deployment = Deployment(Rewrite, addresses=[socket])
    with EnvoyProcess(deployment.envoy_bootstrap(), tmp_path / "envoy") as envoy:
        with extproc.ServerThread(Rewrite, uds=socket):
            assert http(envoy.port, "/").status == 200
        # The processor stopped and took its socket with it.
        reply = http(envoy.port, "/")
        code, report = _doctor(envoy, "procs:Rewrite")
    assert reply.status == 500
    assert code == FINDINGS
    (endpoint,) = report["endpoints"]
    assert endpoint["active_connections"] == 0 and endpoint["connect_failures"] >= 1
    assert any(f"ext_proc endpoint {socket}: Envoy cannot connect" in p
               for p in report["problems"])
    assert report["counters"]["ext_proc.streams_failed"] >= 1


def test_an_admin_endpoint_that_cannot_be_read_is_a_transport_failure(tmp_path):
    result = CliRunner().invoke(cli, ["doctor"], env={"EXTCTL_DOCTOR_ADMIN": "127.0.0.1:9",
                                                      "EXTCTL_DOCTOR_TIMEOUT": "2"})
    assert result.exit_code == TRANSPORT
    assert "cannot read Envoy's admin" in result.output
    bad = CliRunner().invoke(cli, ["doctor", "--admin", "http://127.0.0.1:9/x?y"])
    assert bad.exit_code == TRANSPORT and "give only http://HOST:PORT" in bad.output


def test_routes_turn_installed_filters_on_and_off_and_text_is_escaped():
    ext_proc = {"name": "envoy.filters.http.ext_proc/p", "disabled": True, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3."
                 "ExternalProcessor", "grpc_service": {"envoy_grpc": {"cluster_name": "x"}},
        "processing_mode": {"response_header_mode": "SKIP"}}}
    on = {"envoy.filters.http.ext_proc/p": {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}}
    off = {"envoy.filters.http.ext_proc/p": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3."
                 "ExtProcPerRoute", "disabled": True}}
    routes = {"name": "r1", "virtual_hosts": [{"name": "h\x1b[31m", "typed_per_filter_config": on,
                                               "routes": [{"match": {"prefix": "/a"}},
                                                          {"match": {"path": "/b"},
                                                           "typed_per_filter_config": off}]}]}
    dump = {"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
         "dynamic_listeners": [{"active_state": {"listener": {"name": "l", "filter_chains": [
             {"filters": [{"typed_config": {
                 "@type": "type.googleapis.com/envoy.extensions.filters.network."
                          "http_connection_manager.v3.HttpConnectionManager",
                 "rds": {"route_config_name": "r1"},
                 "http_filters": [ext_proc, {"name": "envoy.filters.http.router"}]}}]}]}}}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
         "dynamic_route_configs": [{"route_config": routes}]}]}
    clusters = {"cluster_statuses": [{"name": "x", "host_statuses": [{
        "address": {"pipe": {"path": "/s.sock"}},
        "health_status": {"eds_health_status": "HEALTHY", "failed_active_health_check": True},
        "stats": [{"name": "cx_total", "value": "3"}]}]}]}
    report = diagnose(dump, "http.gw.ext_proc.streams_started: 4\n", clusters,
                      processor=HeadersOnly)
    assert [r.filters for r in report.routes] == [
        ["envoy.filters.http.ext_proc/p", "envoy.filters.http.router"],
        ["envoy.filters.http.router"]]
    assert report.counters == {"ext_proc.streams_started": 4}
    assert report.endpoints[0].health == "unhealthy (failed_active_health_check)"
    assert report.problems == ["ext_proc endpoint /s.sock: unhealthy (failed_active_health_check)"]
    assert "\x1b" not in report.text() and "h\\x1b[31m" in report.text()


def test_doctor_from_python(sock_dir, tmp_path):
    socket = str(sock_dir / "p.sock")
    with extproc.ServerThread(Rewrite, uds=socket), EnvoyProcess(
            Deployment(Rewrite, addresses=[socket]).envoy_bootstrap(), tmp_path / "e") as envoy:
        http(envoy.port, "/")
        report = doctor(envoy.admin_address, processor=Rewrite)
    assert report.ok, report.problems
