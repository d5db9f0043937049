"""Operating a processor: the admin endpoint (/metrics, /healthz, /readyz) through a real Envoy
with workers, JSON log lines, and OpenTelemetry spans whose parent is Envoy's span."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

import extproc
from extctl.config import Deployment
from extctl.testing import EnvoyProcess
from extproc.testing import ServerThread
from tests.helpers.common import http, wait_for_socket
from tests.helpers.oci import free_port
from tests.helpers.procs import Rewrite, Slow


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, keyed by name and labels (the gRPC labels left out)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset((k, v) for k, v in sample.labels.items()
                               if not k.startswith("grpc_") or k == "grpc_code")
            found[sample.name, labels] = sample.value
    return found


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _wait_ready(url: str, proc: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.communicate()[1]}")
        try:
            if _get(url + "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url}/readyz never answered 200")



# Metrics, the probes and traces hold on both transports: each test that takes ``transport``
# runs on each (tests/conftest.py). The in-process span exporter sees only spans made in this
# process: the tests that use it run on grpcio, and the OTLP one covers pyvoy.


def test_one_scrape_counts_the_traffic_of_two_workers_through_envoy(sock_dir, extctl, transport,
                                                                    tmp_path):
    admin = f"127.0.0.1:{free_port()}"
    stderr = (tmp_path / "stderr").open("w+")  # at debug, pyvoy's Envoys say more than a pipe holds
    proc = extctl("serve", "tests.helpers.procs:Rewrite", "--uds", str(sock_dir / "m.sock"),
                  "--workers", "2", "--transport", transport,
                  "--admin", admin, "--log-format", "json", "--log-level", "debug", stderr=stderr)
    sockets = [sock_dir / "m-0.sock", sock_dir / "m-1.sock"]
    ok, denied = 12, 3
    try:
        for path in sockets:
            wait_for_socket(path, proc)
        _wait_ready(f"http://{admin}", proc)
        config = Deployment.build(Rewrite, addresses=[str(s) for s in sockets],
                                  preserve_external_request_id=True)
        with EnvoyProcess(config.envoy_bootstrap(), sock_dir / "envoy") as envoy:
            served_by = {http(envoy.port, "/").headers["x-processed-by"] for _ in range(ok)}
            for _i in range(denied):
                assert http(envoy.port, "/", headers={"x-deny": "1"}).status == 403
            boom = http(envoy.port, "/", headers={"x-boom": "1", "x-request-id": "boom-1"})
            assert boom.status == 500
        assert len(served_by) == 2  # both workers served
        streams = ok + denied + 1
        deadline = time.monotonic() + 10
        while True:  # a stream is counted when it ends, just after the reply
            status, text = _get(f"http://{admin}/metrics")
            samples = _samples(text)
            # Envoy may reset a stream that has had its last answer (CANCELLED) rather than
            # wait for the server to close it.
            handled = {code: _value(samples, "grpc_server_handled_total", grpc_code=code)
                       for code in ("OK", "CANCELLED", "INVALID_ARGUMENT", "INTERNAL")}
            if sum(handled.values()) == streams or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200, text
        assert _value(samples, "grpc_server_started_total") == streams
        assert handled["OK"] + handled["CANCELLED"] == streams, handled
        # Allowed requests send both header phases; denied and failed ones stop at the first.
        assert _value(samples, "grpc_server_msg_received_total") == 2 * ok + denied + 1
        assert _value(samples, "grpc_server_msg_sent_total") == 2 * ok + denied + 1
        assert _value(samples, "grpc_server_handling_seconds_count") == streams
        assert _value(samples, "extproc_hook_duration_seconds_count", processor="Rewrite",
                      phase="request_headers") == streams
        assert _value(samples, "extproc_hook_duration_seconds_count", processor="Rewrite",
                      phase="response_headers") == ok
        assert _value(samples, "extproc_immediate_responses_total", processor="Rewrite",
                      phase="request_headers", status="403") == denied
        assert _value(samples, "extproc_immediate_responses_total", processor="Rewrite",
                      phase="request_headers", status="500") == 1
        assert _value(samples, "extproc_hook_errors_total", processor="Rewrite",
                      phase="request_headers", outcome="fail_closed") == 1
        assert _value(samples, "extproc_active_streams", processor="Rewrite") == 0
        assert _value(samples, "extproc_serving") == 2
        assert _get(f"http://{admin}/healthz") == (200, "ok\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    proc.communicate(timeout=15)
    lines = [json.loads(line) for line in (tmp_path / "stderr").read_text().splitlines()]
    stderr.close()
    assert all({"time", "level", "logger", "pid", "message"} <= line.keys() for line in lines)
    errors = [line for line in lines if line["level"] == "error" and "request_id" in line]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "boom-1"
    assert (errors[0]["phase"], errors[0]["processor"]) == ("request_headers", "Rewrite")
    assert (errors[0]["outcome"], errors[0]["status"]) == ("fail_closed", 500)
    assert "secret internal detail" in errors[0]["exception"]
    immediate = [line for line in lines if line.get("outcome") == "immediate"]
    assert [line["status"] for line in immediate] == [403] * denied
    assert all(line["level"] == "info" and line["request_id"] for line in immediate)
    access = [line for line in lines if line["logger"] == "extproc.access"]
    assert len(access) == streams
    assert {line["grpc_code"] for line in access} <= {"OK", "CANCELLED"}
    assert sum(line["phases"] == ["request_headers", "response_headers"]
               for line in access) == ok
    assert {line["pid"] for line in access} == {int(p.split("-")[1]) for p in served_by}


@pytest.mark.parametrize("workers", [1, 2])
def test_readyz_answers_503_while_draining(sock_dir, extctl, workers, transport):
    admin = f"127.0.0.1:{free_port()}"
    path = sock_dir / "r.sock"
    proc = extctl("serve", "tests.helpers.procs:Slow", "--uds", str(path), "--workers",
                  str(workers), "--transport", transport,
                  "--admin", admin, "--grace-period", "10")
    sockets = [path] if workers == 1 else [sock_dir / f"r-{i}.sock" for i in range(workers)]
    try:
        for socket_path in sockets:
            wait_for_socket(socket_path, proc)
        _wait_ready(f"http://{admin}", proc)
        config = Deployment.build(Slow, addresses=[str(s) for s in sockets])
        with EnvoyProcess(config.envoy_bootstrap(), sock_dir / "envoy") as envoy:
            replies: list[Any] = []
            inside, release = sock_dir / "inside", sock_dir / "release"
            slow = threading.Thread(target=lambda: replies.append(http(
                envoy.port, "/", headers={"x-mark": str(inside), "x-release": str(release)})),
                daemon=True)
            slow.start()
            wait_for_socket(inside, proc)  # the hook holds the request until released
            assert _get(f"http://{admin}/readyz")[0] == 200
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _get(f"http://{admin}/readyz")[0] != 503:
                assert time.monotonic() < deadline, "/readyz did not turn 503"
                time.sleep(0.05)
            assert _get(f"http://{admin}/healthz")[0] == 200  # up, only not ready
            assert proc.poll() is None and not replies  # still draining the held request
            release.touch()
            slow.join(20)
        assert replies and replies[0].status == 200
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_means_every_socket_is_in_place(sock_dir, extctl, transport, workers):
    """/readyz answers 200 only once every worker's socket is where Envoy dials it (pyvoy's
    Envoy runs the processor's startup before serve moves its socket into place)."""
    admin = f"127.0.0.1:{free_port()}"
    path = sock_dir / "w.sock"
    proc = extctl("serve", "tests.helpers.procs:HeadersOnly", "--uds", str(path), "--workers",
                  str(workers), "--transport", transport, "--admin", admin)
    sockets = [path] if workers == 1 else [sock_dir / f"w-{i}.sock" for i in range(workers)]
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "never ready"
            try:
                ready = _get(f"http://{admin}/readyz")[0] == 200
            except OSError:  # the endpoint is not up yet
                ready = False
            if ready:
                missing = [str(s) for s in sockets if not s.is_socket()]
                assert not missing, f"ready while {missing} are not in place"
                break
        assert _get(f"http://{admin}/healthz")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_a_protocol_error_is_counted_by_its_grpc_code(sock_dir, transport):
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    headers = pb.ProcessingRequest(request_headers=pb.HttpHeaders(end_of_stream=False))
    with ServerThread(Slow, uds=str(sock_dir / "p.sock"), admin="127.0.0.1:0",
                      transport=transport) as server, \
            grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError):
            list(pb_grpc.ExternalProcessorStub(channel).Process(iter([headers, headers]),
                                                                timeout=10))
        assert server.server.admin is not None
        url = server.server.admin.url
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            samples = _samples(_get(url + "/metrics")[1])
            if _value(samples, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT"):
                break
            time.sleep(0.05)
    assert _value(samples, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT") == 1
    assert _value(samples, "grpc_server_msg_received_total") == 2
    assert _value(samples, "extproc_active_streams", processor="Slow") == 0


def test_admin_address_in_use_exits_3(sock_dir, extctl, transport, tmp_path):
    scratch = tmp_path / "tmp"  # the server's temporary directory: nothing may stay there
    scratch.mkdir()
    with __import__("socket").socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            proc = extctl("serve", "tests.helpers.procs:HeadersOnly", "--uds",
                          str(sock_dir / "a.sock"), "--transport", transport,
                          "--workers", workers, "--admin", f"127.0.0.1:{port}",
                          env={"TMPDIR": str(scratch)})
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 3, err
            assert f"cannot listen on admin address 127.0.0.1:{port}" in err
    # no socket, no private bind directory beside it, no work directory
    assert not list(sock_dir.iterdir()) and not list(scratch.iterdir())


def test_admin_address_is_loopback_unless_a_host_is_given():
    assert extproc.ServerConfig(uds="/tmp/x.sock", admin="9901").admin == "127.0.0.1:9901"
    assert extproc.ServerConfig(uds="/tmp/x.sock", admin="0.0.0.0:9901").admin == "0.0.0.0:9901"
    with pytest.raises(extproc.ServeError, match="not host:port"):
        extproc.ServerConfig(uds="/tmp/x.sock", admin="localhost")


def test_without_admin_tracing_or_debug_nothing_records(sock_dir):
    with ServerThread(Rewrite, uds=str(sock_dir / "n.sock")) as server:
        assert server.server.observer is None  # the loop gets no record
        assert server.server.admin is None


def test_extctl_dev_serves_the_admin_endpoint_and_prints_its_url(extctl):
    proc = extctl("dev", "--port", "0")
    admin = port = None
    deadline = time.monotonic() + 40
    while (admin is None or port is None) and time.monotonic() < deadline:
        line = proc.stderr.readline()  # the banner; stdout carries the live view alone
        if line.startswith("metrics: "):
            admin = line.split()[1].removesuffix("/metrics")
        elif line.startswith("try: "):
            port = int(line.rsplit(":", 1)[1].split("/")[0])
    assert admin and port, proc.communicate(timeout=15)
    assert http(port, "/hello").status == 200
    samples = _samples(_get(admin + "/metrics")[1])
    assert _value(samples, "grpc_server_started_total") >= 1
    assert _get(admin + "/readyz")[0] == 200
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0


# -- traces ------------------------------------------------------------------------------------


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC trace collector on loopback: what Envoy exports lands in ``spans``."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[Any] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            self.resources.append(resource_spans.resource)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def _traced_envoy(processor: type, socket_path: str, collector_port: int) -> Any:
    """The generated bootstrap with the HTTP connection manager tracing through Envoy's
    OpenTelemetry tracer to the collector, every request sampled, spans flushed at once."""
    from envoy.config.trace.v3 import opentelemetry_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )
    from google.protobuf import struct_pb2

    bootstrap = Deployment.build(processor, addresses=[socket_path]).envoy_bootstrap()
    listener = bootstrap.static_resources.listeners[0]
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    tracer = opentelemetry_pb2.OpenTelemetryConfig(service_name="envoy-under-test")
    tracer.grpc_service.envoy_grpc.cluster_name = "otel-collector"
    manager.tracing.provider.name = "envoy.tracers.opentelemetry"
    manager.tracing.provider.typed_config.Pack(tracer)
    manager.tracing.random_sampling.value = 100
    listener.filter_chains[0].filters[0].typed_config.Pack(manager)
    clusters = bootstrap.static_resources.clusters
    extproc_cluster = next(c for c in clusters if c.name == "extproc")  # an HTTP/2 cluster
    collector = clusters.add()
    collector.CopyFrom(extproc_cluster)
    collector.name = collector.load_assignment.cluster_name = "otel-collector"
    endpoint = collector.load_assignment.endpoints[0].lb_endpoints[0].endpoint
    endpoint.address.Clear()
    endpoint.address.socket_address.address = "127.0.0.1"
    endpoint.address.socket_address.port_value = collector_port
    layer = bootstrap.layered_runtime.layers.add(name="flush-now")
    layer.static_layer.CopyFrom(struct_pb2.Struct())
    layer.static_layer.update({"tracing.opentelemetry.flush_interval_ms": 100,
                               "tracing.opentelemetry.min_flush_spans": 1})
    return bootstrap


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """An SDK TracerProvider with the in-memory exporter, as the application's own."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    return exporter


TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


def _ours(exporter: InMemorySpanExporter, count: int) -> list[Any]:
    deadline = time.monotonic() + 10
    while len(exporter.get_finished_spans()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(exporter.get_finished_spans())


def test_spans_carry_the_trace_id_with_envoys_span_as_parent(sock_dir, spans):
    collector = _Collector()
    collector.server.start()
    socket_path = str(sock_dir / "t.sock")
    try:
        with ServerThread(Rewrite, uds=socket_path), \
                EnvoyProcess(_traced_envoy(Rewrite, socket_path, collector.port),
                             sock_dir / "envoy") as envoy:
            # No x-request-id of our own: Envoy keeps its sampling decision in the UUID it
            # generates (a request id it cannot mark is not sampled).
            reply = http(envoy.port, "/", headers={
                "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
            assert reply.status == 200
            finished = _ours(spans, 3)
            deadline = time.monotonic() + 10
            streams = [s for s in finished if s.name == "ext_proc Rewrite"]
            assert streams, [s.name for s in finished]
            stream = streams[0]
            parent_id = f"{stream.parent.span_id:016x}"
            while time.monotonic() < deadline and not any(
                    s.span_id.hex() == parent_id for s in collector.spans):
                time.sleep(0.1)
    finally:
        collector.server.stop(0)
    assert f"{stream.context.trace_id:032x}" == TRACE_ID
    assert parent_id != CLIENT_SPAN  # not the client's span: Envoy's own
    envoy_span = next(s for s in collector.spans if s.span_id.hex() == parent_id)
    assert envoy_span.trace_id.hex() == TRACE_ID
    assert "ExternalProcessor" in envoy_span.name  # Envoy's ext_proc call
    assert stream.attributes["extproc.processor"] == "Rewrite"
    request_id = stream.attributes["extproc.request_id"]
    assert len(request_id) == 36  # the UUID Envoy generated
    hooks = {s.name: s for s in finished if s.parent and s.parent.span_id == stream.context.span_id}
    assert set(hooks) == {"on_request_headers", "on_response_headers"}
    assert hooks["on_request_headers"].attributes["extproc.phase"] == "request_headers"
    assert hooks["on_request_headers"].attributes["extproc.request_id"] == request_id
    assert all(f"{s.context.trace_id:032x}" == TRACE_ID for s in hooks.values())


@pytest.mark.parametrize("transport", ["grpcio"])  # the in-process exporter
def test_without_envoy_tracing_the_request_traceparent_is_the_parent(make_stack, spans):
    with make_stack(Rewrite, preserve_external_request_id=True) as s:
        s.get("/", headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
        denied = s.get("/", headers={"x-deny": "1", "x-request-id": "denied-1"})
        failed = s.get("/", headers={"x-boom": "1"})
    assert (denied.status, failed.status) == (403, 500)
    finished = _ours(spans, 7)
    streams = [s for s in finished if s.name == "ext_proc Rewrite"]
    assert len(streams) == 3
    first = streams[0]
    assert f"{first.context.trace_id:032x}" == TRACE_ID
    assert f"{first.parent.span_id:016x}" == CLIENT_SPAN
    by_request = {s.attributes.get("extproc.request_id"): s for s in finished
                  if s.name == "on_request_headers"}
    deny = by_request["denied-1"]
    assert deny.attributes["extproc.immediate_response.status"] == 403
    assert deny.attributes["extproc.outcome"] == "immediate"
    boom = next(s for s in finished if s.name == "on_request_headers"
                and s.attributes["extproc.outcome"] == "fail_closed")
    assert boom.attributes["error.type"] == "RuntimeError"
    assert boom.attributes["extproc.immediate_response.status"] == 500
    assert boom.status.status_code == trace.StatusCode.ERROR
    assert [e.name for e in boom.events] == ["exception"]


def test_body_bytes_are_counted_by_direction(sock_dir, extctl, echo, transport):
    from tests.helpers.procs import BufferedJson

    admin = f"127.0.0.1:{free_port()}"
    path = sock_dir / "b.sock"
    proc = extctl("serve", "tests.helpers.procs:BufferedJson", "--uds", str(path), "--admin", admin,
                  "--transport", transport)
    bodies = [json.dumps({"n": i, "pad": "x" * (100 * i)}).encode() for i in range(1, 4)]
    try:
        wait_for_socket(path, proc)
        _wait_ready(f"http://{admin}", proc)
        config = Deployment.build(BufferedJson, addresses=[str(path)], upstreams=[echo.address])
        with EnvoyProcess(config.envoy_bootstrap(), sock_dir / "envoy") as envoy:
            for body in bodies:
                reply = http(envoy.port, "/", method="POST", body=body,
                             headers={"content-type": "application/json"})
                assert reply.status == 200
        samples = _samples(_get(f"http://{admin}/metrics")[1])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert _value(samples, "extproc_body_bytes_total", processor="BufferedJson",
                  direction="request") == sum(len(b) for b in bodies)
    assert _value(samples, "extproc_body_bytes_total", processor="BufferedJson",
                  direction="response") == 0
    assert _value(samples, "extproc_hook_duration_seconds_count", processor="BufferedJson",
                  phase="request_body") == len(bodies)


def test_otel_variables_alone_export_every_workers_spans_over_otlp(sock_dir, extctl, transport):
    collector = _Collector()
    collector.server.start()
    sockets = [sock_dir / "o-0.sock", sock_dir / "o-1.sock"]
    proc = extctl("serve", "tests.helpers.procs:Rewrite", "--uds", str(sock_dir / "o.sock"),
                  "--workers", "2", "--transport", transport,
                  env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
                       "OTEL_SERVICE_NAME": "tenant-guard",
                       # a minute: the spans arrive only because each worker flushes them
                       # as it stops
                       "OTEL_BSP_SCHEDULE_DELAY": "60000"})
    try:
        for path in sockets:
            wait_for_socket(path, proc)
        config = Deployment.build(Rewrite, addresses=[str(s) for s in sockets])
        with EnvoyProcess(config.envoy_bootstrap(), sock_dir / "envoy") as envoy:
            pids = {http(envoy.port, "/", headers={
                "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}).headers["x-processed-by"]
                for _ in range(6)}
        assert len(pids) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0  # each worker flushes its spans as it stops
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.server.stop(0)
    streams = [s for s in collector.spans if s.name == "ext_proc Rewrite"]
    assert len(streams) == 6
    assert {s.trace_id.hex() for s in collector.spans} == {TRACE_ID}
    assert {s.parent_span_id.hex() for s in streams} == {CLIENT_SPAN}
    names = {a.value.string_value for r in collector.resources for a in r.attributes
             if a.key == "service.name"}
    assert names == {"tenant-guard"}


class Extending(extproc.Processor):
    message_timeout = 0.2
    max_message_timeout = 2.0

    async def on_request_headers(self, headers):
        if "x-slow" in headers:
            await self.extend_timeout(2.0)
            await asyncio.sleep(0.5)  # longer than message_timeout: passes only extended
        headers["x-extended"] = "yes"


def test_timeouts_extended_are_counted_by_phase(sock_dir, echo, transport):
    socket_path = str(sock_dir / "x.sock")
    with ServerThread(Extending, uds=socket_path, admin="127.0.0.1:0",
                      transport=transport) as server, \
            EnvoyProcess(Deployment(Extending, [socket_path], upstreams=[echo.address])
                         .envoy_bootstrap(), sock_dir / "envoy") as envoy:
        slow = http(envoy.port, "/", headers={"x-slow": "1"})
        quick = http(envoy.port, "/")
        assert server.server.admin is not None
        samples = _samples(_get(server.server.admin.url + "/metrics")[1])
    assert slow.status == quick.status == 200
    assert slow.upstream_headers()["x-extended"] == ["yes"]
    assert _value(samples, "extproc_timeouts_extended_total", processor="Extending",
                  phase="request_headers") == 1
