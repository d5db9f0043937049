"""``extctl doctor`` against real Envoys started from generated configs: one correct, one
without the filter on the route, one with a Wasm module that fails to load, one whose
processor socket is gone, one whose processor dies before any traffic, one without a health
check. (Misbehaving admin endpoints: test_doctor_hostile.py.)"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
import time
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

import extproc
from extctl.cli import cli
from extctl.cli.exits import FINDINGS, OK, TRANSPORT
from extctl.config import Deployment, WasmModule
from extctl.diagnose.doctor import diagnose, doctor
from extctl.testing import EnvoyProcess
from tests.helpers.common import ROOT, http, wait_for_socket
from tests.helpers.doctor import one_ext_proc_listener
from tests.helpers.procs import HeadersOnly, Rewrite

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
                                      "--output", "json", "--app-dir", str(ROOT),
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
        code, report = _doctor(envoy, "tests.helpers.procs:Rewrite", "--wasm", "tag")
        text = CliRunner().invoke(cli, ["doctor", "--admin", envoy.admin_address])
    assert code == OK, report["problems"]
    assert report["ok"] is True and report["problems"] == []
    (route,) = report["routes"]
    assert route["filters"] == ["envoy.filters.http.ext_proc/rewrite",
                                "envoy.filters.http.wasm/tag", "envoy.filters.http.router"]
    (endpoint,) = report["endpoints"]
    assert endpoint["address"] == socket and endpoint["health"] == "healthy"
    assert endpoint["detail"] == "Envoy's active health check passes"
    assert endpoint["answer"] == "SERVING"  # the socket is on this machine: asked directly
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
        code, report = _doctor(envoy, "tests.helpers.procs:HeadersOnly")
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
    url, _ = module_url  # the served module is fine; only the pinned digest is wrong
    socket = str(sock_dir / "p.sock")
    deployment = Deployment(Rewrite, addresses=[socket], wasm=[
        WasmModule("broken", url=url, sha256="0" * 64, fail_open=True)])
    args = ("tests.helpers.procs:Rewrite", "--wasm", "broken", "--wasm", "absent")
    with extproc.ServerThread(Rewrite, uds=socket), \
            EnvoyProcess(deployment.envoy_bootstrap(), tmp_path / "envoy") as envoy:
        reply = http(envoy.port, "/")
        code, report = _doctor(envoy, *args)
        text = CliRunner().invoke(cli, ["doctor", "--admin", envoy.admin_address,
                                        "--app-dir", str(ROOT), *args])
    assert reply.status == 200 and "x-wasm" not in reply.headers  # failed open, not run
    assert code == text.exit_code == FINDINGS
    assert report["counters"]["wasm.remote_load_fetch_failures"] >= 1
    absent = ("Wasm module absent is not configured in Envoy (for Envoy Gateway: see the "
              "controller's log for the policy)")
    fetch = re.compile(r"\d+ remote Wasm module fetch\(es\) failed or did not match the "
                       r"sha256, so a module did not load \(remote: broken; Envoy's log names "
                       r"it: 'Plugin NAME failed to load'\)")
    first, second = report["problems"]
    assert first == absent and fetch.fullmatch(second), report["problems"]
    # Envoy does not say which remote module failed: it is never reported as loaded.
    assert report["wasm"] == [{"name": "broken", "source": f"remote {url}", "loaded": None}]
    assert report["ok"] is False
    # What a user reads: the module and its state, each problem, how many.
    lines = text.stdout.splitlines()
    assert f"wasm broken (remote {url}): load state unknown" in lines
    first, second = [line for line in lines if line.startswith("problem: ")]
    assert first == f"problem: {absent}" and fetch.fullmatch(second.removeprefix("problem: "))
    assert lines[-1] == "2 problem(s)"


def test_a_processor_socket_that_is_gone(sock_dir, tmp_path):
    socket = str(sock_dir / "p.sock")
    deployment = Deployment(Rewrite, addresses=[socket])
    with EnvoyProcess(deployment.envoy_bootstrap(), tmp_path / "envoy") as envoy:
        with extproc.ServerThread(Rewrite, uds=socket):
            assert http(envoy.port, "/").status == 200
        # The processor stopped and took its socket with it.
        reply = http(envoy.port, "/")
        code, report = _doctor(envoy, "tests.helpers.procs:Rewrite")
    assert reply.status == 500
    assert code == FINDINGS
    (endpoint,) = report["endpoints"]
    assert endpoint["active_connections"] == 0 and endpoint["connect_failures"] >= 1
    assert endpoint["health"] in ("unhealthy", "unreachable")
    assert endpoint["answer"] is None  # no socket here to ask
    assert any(p.startswith(f"ext_proc endpoint {socket} is un") and "Envoy cannot connect"
               in p for p in report["problems"]), report["problems"]
    assert report["counters"]["ext_proc.streams_failed"] >= 1


def _envoy_health(envoy: EnvoyProcess, path: str) -> dict[str, object]:
    """The health_status Envoy's /clusters gives the endpoint at socket ``path``."""
    url = f"http://{envoy.admin_address}/clusters?format=json"
    with urllib.request.urlopen(url, timeout=5) as answer:
        clusters = json.load(answer)
    return next(h.get("health_status", {}) for c in clusters["cluster_statuses"]
                for h in c.get("host_statuses", [])
                if h["address"].get("pipe", {}).get("path") == path)


def test_a_processor_that_dies_before_any_traffic_is_reported(sock_dir, tmp_path, extctl):
    """No request reaches Envoy. Right after the processor is killed (its socket file stays,
    nothing listens) the doctor asks the socket itself and finds it unreachable; once
    Envoy's active health check has failed, Envoy's own flag says so as well."""
    socket = sock_dir / "p.sock"
    proc = extctl("serve", "tests.helpers.procs:Rewrite", "--uds", str(socket))
    wait_for_socket(socket, proc)
    deployment = Deployment(Rewrite, addresses=[str(socket)])
    with EnvoyProcess(deployment.envoy_bootstrap(), tmp_path / "envoy") as envoy:
        alive_code, alive = _doctor(envoy, "tests.helpers.procs:Rewrite")
        proc.kill()
        proc.wait(10)
        assert socket.exists()
        dead_code, dead = _doctor(envoy, "tests.helpers.procs:Rewrite")
        deadline = time.monotonic() + 10
        while not _envoy_health(envoy, str(socket)).get("failed_active_health_check"):
            assert time.monotonic() < deadline, _envoy_health(envoy, str(socket))
            time.sleep(0.05)
        flagged_code, flagged = _doctor(envoy, "tests.helpers.procs:Rewrite")
        text = CliRunner().invoke(cli, ["doctor", "--admin", envoy.admin_address])
    assert alive_code == OK, alive["problems"]
    (endpoint,) = alive["endpoints"]
    assert endpoint["health"] == "healthy" and endpoint["answer"] == "SERVING"
    assert endpoint["connections"] == 0  # no traffic: Envoy's health check said so
    assert alive["counters"]["cluster.extproc.health_check.success"] >= 1

    assert dead_code == FINDINGS
    (endpoint,) = dead["endpoints"]
    assert endpoint["answer"] == "UNREACHABLE (Connection refused)"
    assert f"ext_proc endpoint {socket} is unreachable: asked on its socket here, the " \
           "processor does not answer (Connection refused)" in dead["problems"]

    assert flagged_code == FINDINGS
    (endpoint,) = flagged["endpoints"]
    assert endpoint["health"] == "unhealthy" and endpoint["connections"] == 0
    assert f"ext_proc endpoint {socket} is unhealthy: Envoy's active health check fails, so " \
           "no requests go there [failed_active_health_check]" in flagged["problems"]
    assert flagged["counters"]["cluster.extproc.health_check.failure"] >= 1
    assert flagged["counters"]["ext_proc.streams_started"] == 0
    assert text.exit_code == FINDINGS
    assert f"{socket} unhealthy (Envoy's active health check fails" in text.stdout
    assert "asked on its socket: UNREACHABLE (Connection refused)" in text.stdout


def test_without_a_health_check_or_traffic_an_endpoint_is_not_called_healthy(sock_dir,
                                                                              tmp_path):
    socket = str(sock_dir / "p.sock")
    bootstrap = Deployment(Rewrite, addresses=[socket]).envoy_bootstrap()
    for cluster in bootstrap.static_resources.clusters:
        del cluster.health_checks[:]
    with extproc.ServerThread(Rewrite, uds=socket), \
            EnvoyProcess(bootstrap, tmp_path / "envoy") as envoy:
        code, report = _doctor(envoy, "tests.helpers.procs:Rewrite")
    assert code == OK, report["problems"]
    (endpoint,) = report["endpoints"]
    assert endpoint["health"] == "unknown" and endpoint["answer"] == "SERVING"
    assert not [k for k in report["counters"] if k.startswith("cluster.")]
    assert any("no active health check and no connection made yet" in n
               for n in report["notes"])


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
    assert report.endpoints[0].health == "unhealthy"
    assert report.problems == [
        "ext_proc endpoint /s.sock is unhealthy: Envoy's active health check fails, so no "
        "requests go there [failed_active_health_check]"]
    assert "\x1b" not in report.text() and "h\\x1b[31m" in report.text()


def _host(path, health, **stats):
    return {"address": {"pipe": {"path": path}}, "health_status": health,
            "stats": [{"name": k, "value": v} for k, v in stats.items()]}


def test_an_endpoint_is_healthy_only_with_evidence_and_never_after_failed_connections():
    dump = one_ext_proc_listener()
    healthy = {"eds_health_status": "HEALTHY"}
    clusters = {"cluster_statuses": [{"name": "x", "host_statuses": [
        _host("/quiet", healthy),
        _host("/open", healthy, cx_active="1", cx_total="1"),
        _host("/flaky", healthy, cx_active="1", cx_total="3", cx_connect_fail="2"),
        _host("/dead", healthy, cx_active="0", cx_total="2", cx_connect_fail="2"),
        _host("/first", {**healthy, "pending_active_hc": True}),
        _host("/going", {"eds_health_status": "DRAINING"}),
        # Values Envoy never writes count as absent: not healthy from them, no traceback.
        _host("/odd", healthy, cx_active="\u00b2", cx_total="9" * 5000,
              cx_connect_fail=[1]),
    ]}]}
    report = diagnose(dump, "", clusters)
    health = {e.address: (e.health, e.detail) for e in report.endpoints}
    assert health == {
        "/quiet": ("unknown", "no active health check and no open connection: not checked"),
        "/open": ("healthy", "open connection, no active health check"),
        "/flaky": ("reachable", "1 open connection(s) after 2 failed connection attempt(s)"),
        "/dead": ("unreachable", "Envoy cannot connect (2 failed attempt(s), no open "
                  "connection): is the processor running, and is its socket where Envoy "
                  "looks?"),
        "/first": ("pending", "Envoy's first active health check has not finished"),
        "/going": ("draining", "Envoy's EDS health status"),
        "/odd": ("unknown", "no active health check and no open connection: not checked"),
    }
    assert [p.split(" is ")[0] for p in report.problems] == [
        "ext_proc endpoint /dead", "ext_proc endpoint /going"]
    # With an active health check (its counters in /stats), a quiet endpoint is healthy.
    checked = diagnose(dump, "cluster.x.health_check.attempt: 3\n"
                             "cluster.x.health_check.success: 3\n", clusters)
    assert checked.endpoints[0].health == "healthy"
    assert checked.endpoints[0].detail == "Envoy's active health check passes"
    assert checked.counters["cluster.x.health_check.success"] == 3
    assert "healthy" not in [e.health for e in report.endpoints
                             if e.connect_failures or e.address == "/quiet"]


def test_format_characters_from_envoy_are_escaped_in_the_text_report():
    tricky = "\u202eevil\u2066x\u200by\x1b[2J"
    dump = {"configs": [{
        "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        "static_listeners": [{"listener": {"name": tricky, "filter_chains": [{"filters": [{
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                         "http_connection_manager.v3.HttpConnectionManager",
                "route_config": {"name": tricky, "virtual_hosts": [{"name": tricky, "routes": [
                    {"name": tricky, "match": {"prefix": tricky}}]}]},
                "http_filters": [{"name": "envoy.filters.http.wasm/" + tricky}]}}]}]}}]}]}
    text = diagnose(dump, "", {}).text()
    for raw in ("\u202e", "\u2066", "\u200b", "\x1b"):
        assert raw not in text
    assert "\\u202eevil\\u2066x\\u200by\\x1b[2J" in text
    # the listener, its filter, the route (config, host, name, prefix, filter), the module
    assert text.count("\\u202e") == 8


def test_doctor_from_python(sock_dir, tmp_path):
    socket = str(sock_dir / "p.sock")
    with extproc.ServerThread(Rewrite, uds=socket), EnvoyProcess(
            Deployment(Rewrite, addresses=[socket]).envoy_bootstrap(), tmp_path / "e") as envoy:
        http(envoy.port, "/")
        report = doctor(envoy.admin_address, processor=Rewrite)
    assert report.ok, report.problems
