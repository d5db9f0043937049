"""Body framing and HTTP callouts: the emulator against a real Envoy, same modules, same
requests (tests/wat/framing.wat marks every body call; tests/wat/callout.wat checks each
request with a callout to the ``upstream`` cluster, which Envoy has and the emulator
scripts)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import wasmtime

from extctl.config import WasmModule
from extctl.testing import envoy_stack
from wasm import Call, ProxyWasm, Reply

pytestmark = pytest.mark.envoy

WAT = Path(__file__).resolve().parent / "wat"
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
    # HTTP/2 framing, on request: the last frame ends the stream.
    http2 = emulator.request(method="POST", body=[b"ab", b"cd"], response_body=b"x",
                             framing="http2")
    assert (http2.request_body, http2.response_body) == (b"ab<D>cd<E>", b"x<E>")
    # No body: the headers end the stream, no body call.
    assert emulator.request().response_body == b""


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
