"""gRPC streams from a Wasm filter (``proxy_grpc_stream``): the emulator against a real Envoy
calling a real gRPC server (grpcio), same module (tests/helpers/wat/grpc_stream.wat logs every step
and callback), same requests; then what the emulator offers a test beyond that (pushes from
the test, plain handlers, refusals)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from extctl.config import CalloutCluster, WasmModule
from extctl.testing import envoy_stack
from tests.helpers.wasm_modules import MODULE, GrpcServer, Talk, _module
from wasm import GrpcStream, GrpcStreamHandler, HostError, ProxyWasm, Reply

WAT = Path(__file__).resolve().parents[1] / "helpers" / "wat"

# The requests, each with what the gRPC server does with the stream (it reads the first
# message, the request's path).
CASES: list[dict[str, Any]] = [
    {"path": "/echo"},                                          # metadata, echo, trailers, OK
    {"path": "/deny"},                                          # trailers-only PERMISSION_DENIED
    {"path": "/late"},                                          # a message, then status 9
    {"path": "/echo", "headers": {"x-end": "1"}},               # two messages, end of stream
    {"path": "/echo", "headers": {"x-cancel": "1"}},            # the filter cancels at once
    {"path": "/plain", "headers": {"x-cluster": "nope"}},       # no such cluster: PARSE_FAILURE
    {"path": "/proto", "headers": {"x-cluster": "nope", "x-proto": "1"}},  # fails as it starts
    {"path": "/wrapped", "headers": {"x-proto": "1"}},          # a GrpcService naming "grpc"
    {"path": "/deny", "headers": {"x-keep": "1"}},              # the filter never closes
    {"path": "/", "headers": {"x-last": "1"}},                  # close, send, cancel after it
    {"path": "/", "headers": {"x-last": "1"}},                  # ... again: forgotten
    {"path": "/deny", "headers": {"x-end": "1"}},               # denied at the first message
    {"path": "/", "headers": {"x-last": "1"}},
]


SERVICE_TIME = re.compile(r"x-envoy-upstream-service-time\|\d+\|")


def _normal(line: str) -> str:
    return SERVICE_TIME.sub("x-envoy-upstream-service-time|N|", line)


@pytest.mark.envoy
def test_grpc_streams_as_in_envoy(tmp_path):
    server = GrpcServer()
    server.server.start()
    try:
        module = tmp_path / "grpc_stream.wasm"
        module.write_bytes(MODULE)
        plugin = WasmModule("streams", file=str(module), text="")
        cluster = CalloutCluster("grpc", f"127.0.0.1:{server.port}", http2=True)
        with envoy_stack(wasm=[plugin], clusters=[cluster]) as stack:
            replies = [stack.get(c["path"], headers=c.get("headers", {})) for c in CASES]
            log = stack.envoy.log()
    finally:
        server.server.stop(0)
    envoy_lines = [_normal(m.group(1)) for m in re.finditer(r"wasm log[^:\n]*: ([^\n]*)", log)]
    envoy_closes = [r.upstream_headers().get("x-grpc-close") for r in replies]

    emulator = ProxyWasm(MODULE, upstreams={"grpc": Talk()})
    results = [emulator.request(path=c["path"], headers=c.get("headers", {})) for c in CASES]
    emulator_lines = [_normal(line.message) for line in emulator.logs]
    emulator_closes = [[r.request_header("x-grpc-close")] if r.request_header("x-grpc-close")
                       else None for r in results]

    assert emulator_lines == envoy_lines
    assert emulator_closes == envoy_closes == [["0"], ["7"], ["9"], ["0"], None, None, None,
                                               ["0"], ["7"], None, None, ["7"], None]
    # What both agree on, spelled out: stream tokens 6, 10, ... (a failed start uses one);
    # trailers-only; the details Envoy appends to the status message; the token forgotten
    # after a failed start (the send in its close callback: NOT_FOUND).
    assert envoy_lines[:2] == ["open 0 6", "sent 0 0"]
    assert "initial 0 " in envoy_lines
    assert ("trailing 5 :status|200|content-type|application/grpc|grpc-status|7|"
            "grpc-message|denied|x-envoy-upstream-service-time|N|") in envoy_lines
    assert "close 10 7 denied{via_upstream}" in envoy_lines
    assert "open 4 0" in envoy_lines  # a plain name that names no cluster
    failed = envoy_lines.index("open 10 0")  # INTERNAL_FAILURE, then a close for its token
    assert envoy_lines[failed:failed + 5] == ["open 10 0", "close 26 14 Cluster not available",
                                              "after 1", "open 0 30", "sent 0 0"]
    # The router's x-envoy-upstream-service-time only once the filter had ended its side;
    # after the upstream's close, proxy_grpc_close forgets the token at once.
    kept = envoy_lines.index("open 0 34")
    assert envoy_lines[kept + 3:kept + 8] == [
        "trailing 4 :status|200|content-type|application/grpc|grpc-status|7|"
        "grpc-message|denied|", "close 34 7 denied{via_upstream}", "after 0", "last 0 1 1",
        "last 1 1 1"]
    assert envoy_lines[-1] == "last 0 1 1"
    # What the gRPC server received, against what the scripted one was told.
    real = [(c["metadata"].get("x-from"), c["messages"]) for c in server.calls]
    scripted = [(s.header("x-from"), s.received) for s in emulator.grpc_streams
                if s.status != (14, "Cluster not available")]
    assert real == scripted
    assert real[3] == ("filter", [b"/echo", b"bye"]) and real[4] == ("filter", [])
    assert real[-1] == ("filter", [b"/deny"])  # "bye" came after the upstream ended it
    assert [s.cancelled for s in emulator.grpc_streams] == [False] * 4 + [True] + [False] * 4


def _stream_module(**upstreams: Any) -> ProxyWasm:
    return ProxyWasm(MODULE, upstreams=upstreams)


class Quiet(GrpcStreamHandler):
    """Answers nothing, and keeps the stream open when the filter ends its side."""

    def half_closed(self, stream: GrpcStream) -> None:
        pass


def _root_lines(plugin: ProxyWasm) -> list[str]:
    return [line.message for line in plugin.logs if line.context_id == 1]


def test_a_test_pushes_on_an_open_stream_and_the_filter_gets_it_at_once():
    plugin = _stream_module(grpc=Quiet())
    result = plugin.request(path="/watch")
    assert result.paused == "request_headers" and not result.upstream_reached
    [stream] = result.grpc_streams
    assert (stream.cluster, stream.service, stream.method) == ("grpc", "test.Chat", "Talk")
    assert stream.header("x-from") == "filter" and stream.received == [b"/watch"]
    assert stream.half_closed and stream.open
    stream.send_metadata({"x-push": "1"})
    stream.send(b"update-1")
    stream.send(b"update-2")
    assert _root_lines(plugin) == [
        "initial 4 :status|200|content-type|application/grpc|x-push|1|"
        "x-envoy-upstream-service-time|0|", "message 6 update-1", "message 6 update-2"]
    stream.close(5, "gone", trailers={"x-why": "test"})
    assert _root_lines(plugin)[3:] == ["trailing 3 grpc-status|5|grpc-message|gone|x-why|test|",
                                       "close 6 5 gone{via_upstream}", "after 0"]
    assert stream.status == (5, "gone") and not stream.open
    with pytest.raises(ValueError, match="already ended it"):
        stream.send(b"late")
    plugin.request(path="/again")
    second = plugin.grpc_streams[-1]
    assert second.token == 10
    second.send_metadata()
    with pytest.raises(ValueError, match="initial metadata was already sent"):
        second.send_metadata()


def test_a_plain_handler_answers_each_message_and_closes_when_the_filter_ends():
    seen = []

    def upper(call):
        seen.append(call)
        return Reply(body=call.body.upper(), headers={"x-h": "1"})

    plugin = _stream_module(grpc=upper)
    result = plugin.request(path="/abc", headers={"x-end": "1"})
    assert result.request_header("x-grpc-close") == "0" and result.upstream_reached
    assert [(c.kind, c.service, c.method, c.body) for c in seen] == [
        ("grpc", "test.Chat", "Talk", b"/abc"), ("grpc", "test.Chat", "Talk", b"bye")]
    assert [line for line in _root_lines(plugin) if line.startswith("message")] == \
        ["message 6 /ABC", "message 6 BYE"]
    # a status other than OK closes the stream with it
    denied = _stream_module(grpc=lambda call: Reply(7, message="no"))
    assert denied.request().request_header("x-grpc-close") == "7"
    assert "close 6 7 no{via_upstream}" in _root_lines(denied)


def test_upstream_failures_on_a_stream():
    class Resets(GrpcStreamHandler):
        def received(self, stream, message):
            stream.reset()

    reset = _stream_module(grpc=Resets())
    assert reset.request().request_header("x-grpc-close") == "13"
    assert _root_lines(reset) == ["trailing 0 ", "close 6 13 ", "after 0"]

    class Broken(GrpcStreamHandler):
        def received(self, stream, message):
            raise KeyError("oops")

    with pytest.raises(HostError, match="scripted upstream for cluster 'grpc' raised KeyError"):
        _stream_module(grpc=Broken()).request()
    # a stream handler given for HTTP callouts says so
    from tests.helpers.wasm_modules import _wat

    with pytest.raises(HostError, match="answers gRPC calls and streams, not HTTP calls"):
        ProxyWasm(_wat("callout.wat"), upstreams={"upstream": Quiet()}).request()


def test_the_host_checks_stream_tokens_as_envoy_does():
    plugin = _stream_module(grpc=Quiet())
    plugin.request(path="/x", headers={"x-cancel": "1"})
    [stream] = plugin.grpc_streams
    assert stream.cancelled and stream.received == []  # reset before anything went out
    stream.send(b"dropped")  # the upstream's sends after a cancel go nowhere
    assert _root_lines(plugin) == []
    vm = plugin.vm
    state = plugin.state
    from wasm.callouts import CalloutFunctions

    functions = CalloutFunctions(state, vm.memory)
    assert functions.proxy_grpc_send(stream.token, 0, 0, 0) == 1    # cancelled: NOT_FOUND
    assert functions.proxy_grpc_send(4, 0, 0, 0) == 2               # an HTTP call's: BAD_ARGUMENT
    assert functions.proxy_grpc_send(5, 0, 0, 0) == 2               # a gRPC call's: BAD_ARGUMENT
    assert functions.proxy_grpc_close(10) == 1                      # no such stream
    assert functions.proxy_grpc_cancel(8) == 2                      # an HTTP call's token


PING_PONG = _module("(i32.const 0)", imports="""
  (import "env" "proxy_grpc_stream"
    (func $stream (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))""", extra="""
  (data (i32.const 256) "grpc")
  (data (i32.const 272) "ping")
  (func (export "proxy_on_tick") (param i32)
    (drop (call $stream (i32.const 256) (i32.const 4) (i32.const 256) (i32.const 4)
                        (i32.const 256) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 8)))
    (drop (call $send (i32.load (i32.const 8)) (i32.const 272) (i32.const 4) (i32.const 0))))
  (func (export "proxy_on_grpc_receive") (param i32) (param $token i32) (param $size i32)
    (global.set $heap (i32.const 4096))
    (drop (call $get_buffer (i32.const 5) (i32.const 0) (local.get $size) (i32.const 16)
                            (i32.const 20)))
    (drop (call $send (local.get $token) (i32.load (i32.const 16)) (i32.load (i32.const 20))
                      (i32.const 0))))""")


def test_a_filter_and_an_upstream_answering_each_other_forever_fail_the_test():
    plugin = ProxyWasm(PING_PONG,
                       upstreams={"grpc": lambda call: Reply(body=call.body)})
    plugin.state.max_events = 500
    with pytest.raises(HostError, match=r"more than 500 .* answer each other without end"):
        plugin.tick()
    [stream] = plugin.grpc_streams
    assert 250 <= len(stream.received) <= 502  # it ran, then stopped
    assert len(plugin.state.pending) == 0


def test_what_a_scripted_upstream_gives_is_checked_where_it_gives_it():
    plugin = _stream_module(grpc=Quiet())
    plugin.request()
    [stream] = plugin.grpc_streams
    with pytest.raises(TypeError, match="initial metadata: names and values are str"):
        stream.send_metadata({"x-count": 3})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="a message is bytes, not str"):
        stream.send("text")  # type: ignore[arg-type]
    stream.send(b"ok")  # nothing was half-sent: the metadata still comes first
    assert _root_lines(plugin)[0].startswith("initial 3 :status|200|")
    with pytest.raises(TypeError, match="close\\(status: int"):
        stream.close("7")  # type: ignore[arg-type]

    class TimesOut(GrpcStreamHandler):
        def received(self, stream, message):
            from wasm import CalloutTimeout

            raise CalloutTimeout("slow")

    with pytest.raises(HostError, match="a gRPC stream has no timeout in proxy-wasm"):
        _stream_module(grpc=TimesOut()).request()


@pytest.mark.parametrize(("service", "parsed"), [
    (b"grpc", ("grpc", True)),                                   # a plain name
    (b"\x0a\x06\x0a\x04grpc", ("grpc", False)),                  # GrpcService.envoy_grpc
    (b"\x0a\x02\x0a\x05", ("\n\x02\n\x05", True)),               # corrupt inside: a name
    (b"\x0a\x07\x0a\x05first\x0a\x08\x0a\x06second", ("second", False)),  # the last wins
    (b"", ("", False)),                                          # an empty GrpcService
])
def test_a_grpc_service_is_read_as_envoy_reads_it(service, parsed):
    from wasm.callouts import parse_service

    assert parse_service(service) == parsed


def test_declare_property_arguments_are_read_as_protobuf_reads_them():
    import random

    from wasm.protowire import LENGTH_DELIMITED, VARINT, message

    schema = {1: LENGTH_DELIMITED, 2: VARINT}
    assert message(b"\x0a\x01a\x0a\x01b\x10\x01", schema) == {1: b"b", 2: 1}  # the last wins
    assert message(b"\x08\x05\x12\x01x", schema) == {}    # other wire types: unknown fields
    assert message(b"\x10" + b"\xff" * 10 + b"\x01", schema) is None  # past 64 bits
    assert message(b"\x0a\x05ab", schema) is None         # runs past the end
    assert message(b"\x00", schema) is None               # field number 0
    rng = random.Random(7)
    for _ in range(3000):  # whatever the bytes, an answer and no exception
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(24)))
        assert message(data, schema) is None or isinstance(message(data, schema), dict)


@pytest.mark.envoy
def test_unary_grpc_calls_as_in_envoy(tmp_path):
    """The same grpcio server answering unary calls (tests/helpers/wat/grpc_call.wat): the message,
    or the status with Envoy's details appended."""
    server = GrpcServer()
    server.server.start()
    module = tmp_path / "grpc_call.wasm"
    module.write_bytes(wasmtime.wat2wasm((WAT / "grpc_call.wat").read_text()))
    paths = ["/echo", "/deny", "/late"]
    try:
        plugin = WasmModule("calls", file=str(module), text="")
        cluster = CalloutCluster("grpc", f"127.0.0.1:{server.port}", http2=True)
        with envoy_stack(wasm=[plugin], clusters=[cluster]) as stack:
            for count, path in enumerate(paths, 1):
                assert stack.get(path).status == 200
                # The reply comes after the request: its line, logged, before the next call.
                deadline = time.monotonic() + 10
                while len(re.findall(r"wasm log[^:\n]*: ", stack.envoy.log())) < 2 * count:
                    assert time.monotonic() < deadline, stack.envoy.log()[-2000:]
                    time.sleep(0.02)
            log = stack.envoy.log()
    finally:
        server.server.stop(0)
    envoy_lines = re.findall(r"wasm log[^:\n]*: ([^\n]*)", log)
    emulator = ProxyWasm(module, upstreams={"grpc": Talk()})
    for path in paths:
        emulator.request(path=path)
    assert [line.message for line in emulator.logs] == envoy_lines == [
        "call 0 5", "message 5 echo:/echo",
        "call 0 9", "close 9 7 denied{via_upstream}",
        "call 0 13", "close 13 9 late{via_upstream}"]


def test_a_stream_handler_serves_unary_calls_as_a_grpc_server_would():
    module = bytes(wasmtime.wat2wasm((WAT / "grpc_call.wat").read_text()))

    class Silent(GrpcStreamHandler):  # ends OK without a message: Envoy reports INTERNAL
        pass

    class Twice(GrpcStreamHandler):  # two messages: the call gets the last
        def received(self, stream, message):
            stream.send(b"first")
            stream.send(b"second")

    class Resets(GrpcStreamHandler):
        def received(self, stream, message):
            stream.reset()

    for handler, expected in [(Silent(), "close 5 13 "), (Twice(), "message 5 second"),
                              (Resets(), "close 5 14 upstream connect error or reset")]:
        plugin = ProxyWasm(module, upstreams={"grpc": handler})
        plugin.request(path="/x")
        assert [line.message for line in plugin.logs] == ["call 0 5", expected]
        assert plugin.calls[0].body == b"/x"
