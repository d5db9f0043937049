"""Body framing, HTTP callouts and header maps: the emulator against a real Envoy, same
modules, same requests (tests/helpers/wat/framing.wat marks every body call, over HTTP/1.1 and over
HTTP/2; tests/helpers/wat/callout.wat checks each request with a callout to the ``upstream``
cluster, which Envoy has and the emulator scripts; tests/helpers/wat/header_maps.wat and
tests/helpers/wat/inline_names.wat show the header maps Envoy lends a module)."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import wasmtime
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from extctl.config import Deployment, WasmModule
from extctl.config.envoy import UPSTREAM_CLUSTER
from extctl.harness.upstreams import CHUNK_DELAY, HttpUpstream
from extctl.testing import EnvoyProcess, Exchange, compare_with_envoy, envoy_stack
from wasm import Call, ProxyWasm, Reply
from wasm.headers import INLINE_JOINED

pytestmark = pytest.mark.envoy

WAT = Path(__file__).resolve().parents[1] / "helpers" / "wat"
MARKS = re.compile(rb"<[DE]>")


def _compiled(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    path = tmp_path_factory.mktemp("wat") / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm((WAT / f"{name}.wat").read_text()))
    return path


@pytest.fixture(scope="module")
def framing_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compiled(tmp_path_factory, "framing")


@pytest.fixture(scope="module")
def callout_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compiled(tmp_path_factory, "callout")


def _echo_like(call: Call) -> Reply:
    """What the echo upstream answers a callout: x-echo-status's status, a JSON body."""
    return Reply(int(call.header("x-echo-status") or 200),
                 {"content-type": "application/json"},
                 json.dumps({"headers": call.headers}).encode())


def _echoed(reply) -> dict:
    """The echo upstream's JSON, less the marks the filter added to the response."""
    return json.loads(re.sub(rb"(<[DE]>)+$", b"", reply.body))


@contextlib.contextmanager
def _envoy(upstream: str, module: Path, configuration: str = "", *,
           http2_upstream: bool = False, **options: Any) -> Iterator[EnvoyProcess]:
    """Envoy from the config extctl generates, ``module`` its Wasm filter, in front of the
    upstream at ``upstream`` (host:port; ``http2_upstream``: the cluster speaks HTTP/2)."""
    bootstrap = Deployment.build(None, upstreams=[upstream], wasm=[WasmModule(
        module.stem, file=str(module), text=configuration)], **options).envoy_bootstrap()
    if http2_upstream:
        [cluster] = [c for c in bootstrap.static_resources.clusters
                     if c.name == UPSTREAM_CLUSTER]
        http2 = http_protocol_options_pb2.HttpProtocolOptions()
        http2.explicit_http_config.http2_protocol_options.SetInParent()
        cluster.typed_extension_protocol_options[
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Pack(http2)
    workdir = Path(tempfile.mkdtemp(prefix="extkit-", dir="/tmp"))
    try:
        with EnvoyProcess(bootstrap, workdir / "envoy") as envoy:
            yield envoy
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_body_framing_matches_envoys_http1_codec(framing_module):
    plugin = WasmModule("framing", file=str(framing_module), text="")
    with envoy_stack(wasm=[plugin]) as stack:
        sized = stack.get("/", method="POST", body=b"abc")
        # chunks well apart, so that each is its own read (and frame) on a busy machine
        chunked = stack.get("/", method="POST", chunks=[b"ab", b"cd"], chunk_delay=0.15)
        response_chunks = stack.get("/", headers={"x-echo-chunks": '["x", "y"]',
                                                  "x-echo-chunk-delay-ms": "150"})
        response_sized = stack.get("/")
    # Envoy: the data frame(s), then an empty frame that ends the stream, both directions.
    assert _echoed(sized)["body"] == "abc<D><E>"
    assert _echoed(chunked)["body"] == "ab<D>cd<D><E>"
    assert response_chunks.body == b"x<D>y<D><E>"
    assert MARKS.findall(response_sized.body) == [b"<D>", b"<E>"]

    emulator = ProxyWasm(framing_module)
    assert emulator.request(method="POST", body=b"abc").request_body == b"abc<D><E>"
    assert emulator.request(method="POST", body=[b"ab", b"cd"]).request_body == \
        b"ab<D>cd<D><E>"
    assert emulator.request(response_body=[b"x", b"y"]).response_body == b"x<D>y<D><E>"
    answered = emulator.request(response_body=json.dumps({"a": 1}).encode())
    assert MARKS.findall(answered.response_body) == [b"<D>", b"<E>"]
    # No body: the headers end the stream, no body call.
    assert compare_with_envoy(framing_module, requests=[Exchange(), Exchange(
        method="POST", status=204)]) == []
    assert emulator.request().response_body == b""


class _H2Upstream:
    """An HTTP/2 (cleartext) upstream on 127.0.0.1 answering each stream with ``answer(headers,
    body, trailers) -> (headers, chunks, trailers)``: each chunk its own DATA frame,
    CHUNK_DELAY apart, the last ending the stream unless trailers follow."""

    def __init__(self, answer):
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.listener.close()

    def _accept(self):
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="latin-1"))
        conn.initiate_connection()
        streams = {}
        with contextlib.suppress(OSError), sock:
            sock.sendall(conn.data_to_send())
            while data := sock.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        streams[event.stream_id] = (list(event.headers), bytearray(), [])
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id][1].extend(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length,
                                                       event.stream_id)
                    elif isinstance(event, h2.events.TrailersReceived):
                        streams[event.stream_id][2].extend(event.headers)
                    elif isinstance(event, h2.events.StreamEnded):
                        sock.sendall(conn.data_to_send())
                        headers, body, trailers = streams.pop(event.stream_id)
                        _h2_send(sock, conn, event.stream_id,
                                 *self.answer(headers, bytes(body), trailers))
                sock.sendall(conn.data_to_send())


def _h2_send(sock, conn, stream_id, headers, chunks, trailers):
    """Headers, then each chunk its own DATA frame CHUNK_DELAY after the last, then the
    trailers; whichever comes last ends the stream."""
    conn.send_headers(stream_id, headers, end_stream=not chunks and not trailers)
    sock.sendall(conn.data_to_send())
    for index, chunk in enumerate(chunks):
        time.sleep(CHUNK_DELAY)
        conn.send_data(stream_id, chunk, end_stream=index == len(chunks) - 1 and not trailers)
        sock.sendall(conn.data_to_send())
    if trailers:
        time.sleep(CHUNK_DELAY)
        conn.send_headers(stream_id, trailers, end_stream=True)
        sock.sendall(conn.data_to_send())


def _h2_request(port, method, path, chunks=(), trailers=()):
    """One request over HTTP/2 (prior knowledge, as Envoy's listener takes it); the
    response's headers, body and trailers."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="latin-1"))
    conn.initiate_connection()
    headers, body, trailers_seen = [], bytearray(), []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        _h2_send(sock, conn, 1, [(":method", method), (":path", path), (":scheme", "http"),
                                 (":authority", f"127.0.0.1:{port}")], list(chunks),
                 list(trailers))
        ended = False
        while not ended and (data := sock.recv(65536)):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = list(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body.extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers_seen = list(event.headers)
                ended = ended or isinstance(event, h2.events.StreamEnded | h2.events.StreamReset)
            sock.sendall(conn.data_to_send())
    return headers, bytes(body), trailers_seen


H2_EXCHANGES = [  # (method, path, request chunks, trailers; response chunks, trailers)
    ("POST", "/chunks", [b"ab", b"cd"], [], [b"x"], []),
    ("POST", "/one", [b"abc"], [], [b"x", b"y"], []),
    ("GET", "/none", [], [], [], []),
    ("POST", "/trailed", [b"ab", b"cd"], [("x-rt", "1")], [b"x", b"y"], [("x-pt", "2")]),
]


def test_body_framing_matches_envoys_http2_codec(framing_module):
    """HTTP/2 both sides of Envoy (client and upstream cluster): the emulator's "http2"
    framing, each frame a body call, the last one ending the stream (or the trailers)."""
    answers = {path: (answer, trailers) for _, path, _, _, answer, trailers in H2_EXCHANGES}
    received = []

    def answer(headers, body, trailers):
        received.append((body, trailers))
        chunks, answer_trailers = answers[dict(headers)[":path"]]
        return [(":status", "200")], chunks, answer_trailers

    through_envoy = []
    with _H2Upstream(answer) as upstream, _envoy(upstream.address, framing_module,
                                                 http2_upstream=True) as envoy:
        for method, path, chunks, trailers, _, _ in H2_EXCHANGES:
            headers, body, trailers_seen = _h2_request(envoy.port, method, path, chunks,
                                                       trailers)
            assert dict(headers)[":status"] == "200"
            through_envoy.append((received[-1][0], body, received[-1][1], trailers_seen))
    emulator = ProxyWasm(framing_module, framing="http2")
    emulated = []
    for method, path, chunks, trailers, response, response_trailers in H2_EXCHANGES:
        result = emulator.request(method=method, path=path, body=chunks,
                                  trailers=trailers or None, response_body=response,
                                  response_trailers=response_trailers or None)
        emulated.append((result.request_body, result.response_body,
                         result.request_trailers or [], result.response_trailers or []))
    assert emulated == through_envoy
    assert [(upstream_body, body) for upstream_body, body, _, _ in through_envoy] == [
        (b"ab<D>cd<E>", b"x<E>"), (b"abc<E>", b"x<D>y<E>"), (b"", b""),
        (b"ab<D>cd<D>", b"x<D>y<D>")]


def test_http_callout_pauses_then_resumes_or_denies_as_in_envoy(callout_module):
    plugin = WasmModule("callout", file=str(callout_module), text="")
    with envoy_stack(wasm=[plugin]) as stack:
        allowed = stack.get("/a", headers={"x-keep": "1"})
        denied = stack.get("/b", headers={"x-deny": "1"})
    assert allowed.status == 200
    assert allowed.upstream_headers()["x-call-status"] == ["200"]
    assert allowed.upstream_headers()["x-call-body"] == ["{"]
    assert (denied.status, denied.body) == (403, b"denied by callout")

    emulator = ProxyWasm(callout_module, upstreams={"upstream": _echo_like})
    result = emulator.request(path="/a", headers={"x-keep": "1"})
    assert result.status == 200 and result.upstream_reached
    assert result.request_header("x-call-status") == "200"
    assert result.request_header("x-call-body") == "{"
    first, action = result.actions[0]
    assert (first, action.name) == ("request_headers", "StopIteration")
    [call] = result.calls
    # made by the stream's context (2); its reply went to the root context, as in Envoy
    assert (call.kind, call.cluster, call.timeout_ms, call.context_id) == ("http", "upstream",
                                                                            1000, 2)
    assert call.header(":path") == "/check" and call.header("x-echo-status") == "200"
    assert call.reply is not None and call.reply.status == 200
    refused = emulator.request(path="/b", headers={"x-deny": "1"})
    assert (refused.status, refused.response_body) == (403, b"denied by callout")
    assert not refused.upstream_reached
    assert refused.local_response is not None
    assert refused.local_response.details == "callout_denied"


@pytest.fixture(scope="module")
def queue_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compiled(tmp_path_factory, "queue")


def test_shared_queue_producer_and_consumer_as_in_envoy(queue_module):
    plugin = WasmModule("queued", file=str(queue_module), text="")
    with envoy_stack(wasm=[plugin]) as stack:
        first = stack.get("/", headers={"x-job": "job-1"})
        second = stack.get("/")
    assert "x-last-job" not in first.upstream_headers()
    # the enqueue woke the root context, which dequeued before the next request
    assert second.upstream_headers()["x-last-job"] == ["job-1"]

    emulator = ProxyWasm(queue_module, vm_id="queued")  # Envoy's VM id: the filter's name
    assert emulator.request(headers={"x-job": "job-1"}).request_header("x-last-job") is None
    assert emulator.request().request_header("x-last-job") == "job-1"
    assert emulator.queues.contents("jobs", vm_id="queued") == []  # all dequeued
    emulator.tick()  # a timer-driven producer: the consumer runs after the tick
    assert emulator.shared_data.get(b"last-job") == (b"tick", 2)


def test_declare_property_as_in_envoy(tmp_path_factory):
    module = _compiled(tmp_path_factory, "declare_property")
    with envoy_stack(wasm=[WasmModule("declared", file=str(module), text="")]) as stack:
        assert [stack.get("/").status for _ in range(2)] == [200, 200]
        log = stack.envoy.log()
    envoy_lines = re.findall(r"wasm log[^:\n]*: ([^\n]*)", log)
    emulator = ProxyWasm(module)
    for _ in range(2):
        emulator.request()
    assert [line.message for line in emulator.logs] == envoy_lines == \
        ["declare 0 2 2 set 0 2 0 0 one"] * 2


def test_a_callout_reply_carries_the_headers_envoy_adds(tmp_path_factory):
    module = _compiled(tmp_path_factory, "callout_headers")
    with envoy_stack(wasm=[WasmModule("headers", file=str(module), text="")]) as stack:
        assert stack.get("/").status == 200
        log = stack.envoy.log()
    [envoy_line] = re.findall(r"wasm log[^:\n]*: ([^\n]*)", log)
    envoy_names = envoy_line.split("|")[0:-1:2]
    # the echo upstream's own headers, said by the scripted one
    echo_headers = {name: "x" for name in envoy_names
                    if name not in (":status", "x-envoy-upstream-service-time")}
    emulator = ProxyWasm(module, upstreams={"upstream": lambda call: Reply(200, echo_headers)})
    emulator.request()
    emulator_names = emulator.logs[0].message.split("|")[0:-1:2]
    assert emulator_names == envoy_names
    assert envoy_names[0] == ":status" and envoy_names[-1] == "x-envoy-upstream-service-time"


def test_the_foreign_functions_envoy_ships_as_in_envoy(tmp_path_factory):
    module = _compiled(tmp_path_factory, "foreign_builtins")
    with envoy_stack(wasm=[WasmModule("builtins", file=str(module), text="")]) as stack:
        assert stack.get("/").status == 200
        log = stack.envoy.log()
    envoy_lines = re.findall(r"wasm log[^:\n]*: ([^\n]*)", log)
    emulator = ProxyWasm(module)
    result = emulator.request()
    assert [line.message for line in emulator.logs] == envoy_lines == [
        "compress 0 uncompress 0 hello hello hello garbage 3 clear 0"]
    assert result.route_cache_cleared == 1


# Header maps as Envoy lends them: through Envoy and the emulator, the same module shows each
# map it gets (tests/helpers/wat/header_maps.wat, tests/helpers/wat/inline_names.wat log them)
# and the views are compared, less the headers Envoy adds on its own.

ENVOY_OWN = ("x-forwarded-", "x-envoy-", "x-request-id")
VIEW = re.compile(r"wasm log[^:\n]*: ([^\n]*)")


def _post(port: int, headers: list[tuple[str, str]], chunks: list[bytes],
          trailers: list[tuple[str, str]], path: str = "/") -> int:
    """A chunked POST with exactly these headers (a name may repeat; no Host or
    Accept-Encoding of the client's own) and trailers; the status answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.putheader("transfer-encoding", "chunked")
        conn.endheaders()
        for chunk in chunks:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            time.sleep(CHUNK_DELAY)
        lines = "".join(f"{name}: {value}\r\n" for name, value in trailers)
        conn.send(b"0\r\n" + lines.encode() + b"\r\n")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _views(lines: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Each logged view by tag, the pairs Envoy adds on its own left out."""
    views = {}
    for line in lines:
        tag, *fields, _ = line.split("|")  # "tag|name|value|...|"
        views[tag.strip()] = [(name, value)
                              for name, value in zip(fields[0::2], fields[1::2], strict=True)
                              if not name.startswith(ENVOY_OWN)]
    return views


REQUEST = [("host", "h.example"), ("x-first", "1"), ("x-dup", "a"), ("user-agent", "ua1"),
           ("x-mid", "m1"), ("cache-control", "c1"), ("x-dup", "b"), ("accept", "a1"),
           ("location", "/l1"), ("user-agent", "ua2"), ("cookie", "k1"), ("server", "s1"),
           ("accept", "a2"), ("x-mid", "m2"), ("location", "/l2"), ("cookie", "k2"),
           ("server", "s2"), ("x-last", "z")]
TRAILERS = [("x-dup", "t1"), ("x-mid", "t2"), ("content-type", "t3"), ("x-dup", "t4"),
            ("content-type", "t5")]
RESPONSE = [("x-first", "1"), ("x-dup", "a"), ("server", "up1"), ("x-mid", "m1"),
            ("via", "v1"), ("accept", "a1"), ("cache-control", "c1"), ("x-dup", "b"),
            ("location", "/l1"), ("user-agent", "u1"), ("set-cookie", "s1"), ("via", "v2"),
            ("accept", "a2"), ("server", "up2"), ("set-cookie", "s2"), ("user-agent", "u2"),
            ("x-mid", "m2"), ("location", "/l2"), ("content-type", "text/plain"),
            ("x-last", "z")]
RESPONSE_TRAILERS = [("x-dup", "t1"), ("grpc-message", "g1"), ("x-mid", "t2"),
                     ("content-type", "t3"), ("x-dup", "t4"), ("grpc-message", "g2"),
                     ("content-type", "t5")]


def test_header_maps_are_lent_and_edited_as_in_envoy(tmp_path_factory):
    """What a module sees of each map (order, a name repeated, pseudo-headers) and where its
    adds and replaces land, through Envoy's HTTP/1.1 codec and in the emulator."""
    module = _compiled(tmp_path_factory, "header_maps")

    def answer(request):
        return 200, RESPONSE, [b"ok"], RESPONSE_TRAILERS

    with HttpUpstream(answer) as upstream, _envoy(upstream.address, module,
                                                  http1_trailers=True) as envoy:
        assert _post(envoy.port, REQUEST, [b"abc"], TRAILERS, path="/p?q=1") == 200
        envoy_views = _views(VIEW.findall(envoy.log()))
    emulator = ProxyWasm(module)
    emulator.request(method="POST", path="/p?q=1", authority="h.example", headers=REQUEST[1:],
                     body=[b"abc"], trailers=TRAILERS, response_body=[b"ok"],
                     response_headers=[*RESPONSE, ("transfer-encoding", "chunked")],
                     response_trailers=RESPONSE_TRAILERS)
    assert _views([line.message for line in emulator.logs]) == envoy_views
    # what Envoy showed: pseudo-headers first; an inline name's values in one entry, and
    # which names are inline depends on the map (accept and user-agent in request headers,
    # location and server in response headers, grpc-message in response trailers, none in
    # request trailers); a chunked request's transfer-encoding gone, a response's kept
    request, response = dict(envoy_views["rq"]), dict(envoy_views["ps"])
    assert [name for name, _ in envoy_views["rq"][:4]] == [":authority", ":path", ":method",
                                                           ":scheme"]
    assert (request["accept"], request["user-agent"]) == ("a1,a2", "ua1,ua2")
    assert [v for k, v in envoy_views["rq"] if k in ("location", "x-dup", "cookie")] == [
        "a", "b", "/l1", "k1", "/l2", "k2"]
    assert "transfer-encoding" not in request
    assert (response["location"], response["server"]) == ("/l1,/l2", "up1,up2")
    assert [v for k, v in envoy_views["ps"] if k in ("accept", "user-agent")] == [
        "a1", "u1", "a2", "u2"]
    assert response["transfer-encoding"] == "chunked"
    assert [v for k, v in envoy_views["rt"] if k == "content-type"] == ["t3", "t5"]
    assert [v for k, v in envoy_views["pt"] if k in ("content-type", "grpc-message")] == [
        "g1,g2", "t3", "t5"]
    # edits: an add to an inline name joins its entry where it is, any other add goes last
    # (a pseudo-header last of the pseudo-headers); a replace removes every entry of the
    # name and adds one, last (so :path moves behind :x-pseudo)
    assert envoy_views["rq+"][:5] == [(":authority", "h.example"), (":method", "POST"),
                                      (":scheme", "http"), (":x-pseudo", "p"),
                                      (":path", "/replaced")]
    assert envoy_views["rq+"][-3:] == [("x-dup", "added"), ("x-new", "1"),
                                       ("x-mid", "replaced")]
    assert dict(envoy_views["rq+"])["user-agent"] == "ua1,ua2,added"
    assert envoy_views["ps+"][-4:] == [("x-dup", "added"), ("x-new", "1"),
                                       ("x-mid", "replaced"), ("server", "replaced")]
    assert envoy_views["pt+"] == [("x-dup", "t1"), ("grpc-message", "g1,g2"),
                                  ("content-type", "t3"), ("x-dup", "t4"),
                                  ("content-type", "t5"), ("x-dup", "added"),
                                  ("x-mid", "replaced")]


# Names whose values Envoy keeps one entry per value, in every map
NOT_INLINE = ("x-dup", "cookie", "set-cookie", "accept-language", "forwarded", "range",
              "proxy-authorization", "link", "traceparent", "grpc-encoding",
              "sec-websocket-key", "host")


def test_which_names_envoy_joins_in_each_map(tmp_path_factory):
    """The emulator's table of inline names (wasm.headers.INLINE_JOINED) against Envoy: each
    name added twice to each map makes one entry or two in both."""
    module = _compiled(tmp_path_factory, "inline_names")
    # (not x-forwarded-proto: without it, which the module's removal would leave, Envoy
    # finds no route for the request)
    names = sorted({name.decode() for joined in INLINE_JOINED.values() for name in joined
                    if not name.startswith(b":")} - {"x-forwarded-proto"} | set(NOT_INLINE))
    configuration = " ".join(names)

    def answer(request):
        return 200, {}, [b"ok"], {"x-t": "1"}

    with HttpUpstream(answer) as upstream, _envoy(upstream.address, module, configuration,
                                                  http1_trailers=True) as envoy:
        assert _post(envoy.port, [("host", "h")], [b"abc"], [("x-t", "1")]) == 200
        envoy_views = dict(line.split("|", 1) for line in VIEW.findall(envoy.log()))
    emulator = ProxyWasm(module, plugin_configuration=configuration)
    emulator.request(method="POST", authority="h", body=[b"abc"], trailers={"x-t": "1"},
                     response_body=[b"ok"], response_trailers={"x-t": "1"})
    emulator_views = dict(line.message.split("|", 1) for line in emulator.logs)
    assert sorted(envoy_views) == sorted(emulator_views) == ["ps ", "pt ", "rq ", "rt "]

    def entries(view: str) -> dict[str, int]:
        fields = view.split("|")[0:-1:2]
        return {name: fields.count(name) for name in [*names, ":authority"]}

    for tag, view in envoy_views.items():
        assert entries(emulator_views[tag]) == entries(view), tag
    # "host" is :authority in request headers: one entry, the added values joined to it
    assert entries(envoy_views["rq "])["host"] == 0
    assert envoy_views["rq "].startswith(":authority|h,w1,w2|")
