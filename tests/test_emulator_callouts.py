"""Callouts, shared queues and foreign functions in the emulator: what a scripted upstream
sees and answers, failures (timeout, reset, a refused call, a handler that breaks), unary
gRPC calls, and functions a test registers."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime
from test_emulator import _module

from wasm import CalloutReset, CalloutTimeout, HostError, ProxyWasm, Reply

WAT = Path(__file__).resolve().parent / "wat"


def _wat(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((WAT / name).read_text()))


def _allowed(call):
    return Reply(200, {"x-from": "auth"}, b"ok")


def test_a_callout_the_host_refuses_leaves_the_request_alone():
    # no such cluster: proxy_http_call answers BAD_ARGUMENT, the filter lets the request go
    result = ProxyWasm(_wat("callout.wat")).request()
    assert result.upstream_reached and result.calls == []
    assert result.request_header("x-call-status") is None


def test_a_reply_with_a_tuple_and_each_call_recorded():
    plugin = ProxyWasm(_wat("callout.wat"), upstreams={"upstream": lambda call: (200, {}, b"!")})
    results = [plugin.request(path=f"/{n}") for n in range(3)]
    assert [r.request_header("x-call-body") for r in results] == ["!", "!", "!"]
    # proxy-wasm-cpp-host's numbering, which Envoy 1.40 uses: the two low bits give the kind
    # (HTTP 0), each kind counts in fours
    assert [call.token for call in plugin.calls] == [4, 8, 12]
    assert [call.context_id for call in plugin.calls] == [2, 3, 4]


@pytest.mark.parametrize(("failure", "status"), [(CalloutTimeout, "timeout"),
                                                 (CalloutReset, "reset")])
def test_a_failed_callout_reaches_the_filter(failure, status):
    def broken(call):
        raise failure("upstream gone")

    result = ProxyWasm(_wat("callout.wat"), upstreams={"upstream": broken}).request()
    # the filter denies on anything but a 2xx reply: 504 for a timeout, nothing for a reset
    assert result.status == 403 and not result.upstream_reached
    assert result.calls[0].failure == status and result.calls[0].reply is None


def test_a_handler_that_raises_is_a_host_error_naming_the_cluster():
    def buggy(call):
        raise KeyError("oops")

    with pytest.raises(HostError, match="scripted upstream for cluster 'upstream' raised "
                                        "KeyError"):
        ProxyWasm(_wat("callout.wat"), upstreams={"upstream": buggy}).request()


GRPC = _module("(i32.const 0)", imports="""
  (import "env" "proxy_grpc_call" (func $grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32
                                                          i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))""", extra="""
  (data (i32.const 256) "auth")
  (data (i32.const 272) "pkg.Auth")
  (data (i32.const 288) "Check")
  (data (i32.const 304) "request")
  (func (export "proxy_on_tick") (param i32)
    (drop (call $grpc_call (i32.const 256) (i32.const 4) (i32.const 272) (i32.const 8)
                           (i32.const 288) (i32.const 5) (i32.const 0) (i32.const 0)
                           (i32.const 304) (i32.const 7) (i32.const 500) (i32.const 0))))
  (func (export "proxy_on_grpc_receive") (param i32 i32) (param $size i32)
    (drop (call $get_buffer (i32.const 5) (i32.const 0) (local.get $size) (i32.const 8)
                            (i32.const 12)))
    (drop (call $log (i32.const 2) (i32.load (i32.const 8)) (i32.load (i32.const 12)))))
  (func (export "proxy_on_grpc_close") (param i32 i32) (param $status i32)
    (drop (call $get_status (i32.const 16) (i32.const 20) (i32.const 24)))
    (drop (call $log (i32.const 3) (i32.load (i32.const 20)) (i32.load (i32.const 24)))))""")


def test_a_unary_grpc_call_gets_its_message_or_its_status():
    seen = []

    def auth(call):
        seen.append(call)
        if call.body == b"request" and len(seen) == 1:
            return Reply(body=b"granted")  # gRPC status 0 (OK) by default
        return Reply(7, message="permission denied")

    plugin = ProxyWasm(GRPC, upstreams={"auth": auth})
    plugin.tick()
    plugin.tick()
    assert [(c.kind, c.cluster, c.service, c.method, c.timeout_ms) for c in seen] == \
        [("grpc", "auth", "pkg.Auth", "Check", 500)] * 2
    assert [c.token for c in seen] == [5, 9]  # gRPC calls: 1 in the two low bits
    # Envoy 1.40's gRPC client appends the response code details to the upstream's message
    assert [line.message for line in plugin.logs] == ["granted",
                                                      "permission denied{via_upstream}"]


FOREIGN = _module("(i32.const 0)", imports="""
  (import "env" "proxy_call_foreign_function"
    (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))""", extra="""
  (data (i32.const 256) "upper")
  (data (i32.const 272) "missing")
  (data (i32.const 288) "hello")""",
                  configure="""
    ;; status of an unknown function (NOT_FOUND: 1) kept at 32
    (i32.store (i32.const 32) (call $foreign (i32.const 272) (i32.const 7) (i32.const 288)
                                             (i32.const 5) (i32.const 8) (i32.const 12)))
    (drop (call $foreign (i32.const 256) (i32.const 5) (i32.const 288) (i32.const 5)
                         (i32.const 8) (i32.const 12)))
    (drop (call $log (i32.const 2) (i32.load (i32.const 8)) (i32.load (i32.const 12))))
    (i32.eq (i32.load (i32.const 32)) (i32.const 1))""")


def test_foreign_functions_the_test_registers():
    plugin = ProxyWasm(FOREIGN,
                       foreign_functions={"upper": bytes.upper})
    assert [line.message for line in plugin.logs] == ["HELLO"]
    with pytest.raises(HostError, match=r"foreign function .upper. .*proxy_on_configure.* "
                                        r"raised ValueError"):
        ProxyWasm(FOREIGN,
                  foreign_functions={"upper": lambda data: int("x")})  # type: ignore


def test_queues_register_resolve_and_wake_the_registering_root():
    plugin = ProxyWasm(_wat("queue.wat"))  # vm id ""
    assert plugin.queues.resolve("", "jobs") == 1
    plugin.request(headers={"x-job": "a"})
    assert plugin.shared_data.get(b"last-job") == (b"a", 1)
    assert plugin.queues.contents("jobs") == []


def _serialised(pairs: list[tuple[str, str]]) -> tuple[str, int]:
    """A header map in the ABI's form, as a WAT data string."""
    import struct

    data = struct.pack("<I", len(pairs))
    data += b"".join(struct.pack("<II", len(k), len(v)) for k, v in pairs)
    data += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs)
    return "".join(f"\\{byte:02x}" for byte in data), len(data)


def _tick_caller(headers: list[tuple[str, str]], timeout: int = 100) -> bytes:
    """On each tick: proxy_http_call to cluster "c" with ``headers``, logging the call's
    status (a digit); its reply's callback logs proxy_get_status's code and message."""
    data, size = _serialised(headers)
    return _module("(i32.const 0)", imports="""
      (import "env" "proxy_http_call"
        (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
      (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))""", extra=f"""
      (data (i32.const 256) "c")
      (data (i32.const 512) "{data}")
      (func (export "proxy_on_tick") (param i32)
        (i32.store8 (i32.const 64) (i32.add (i32.const 48)
          (call $call (i32.const 256) (i32.const 1) (i32.const 512) (i32.const {size})
                      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                      (i32.const {timeout}) (i32.const 8))))
        (drop (call $log (i32.const 2) (i32.const 64) (i32.const 1))))
      (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
        (drop (call $get_status (i32.const 16) (i32.const 20) (i32.const 24)))
        (i32.store8 (i32.const 68) (i32.add (i32.const 48) (i32.rem_u (i32.load (i32.const 16))
                                                                     (i32.const 10))))
        (drop (call $log (i32.const 2) (i32.const 68) (i32.const 1)))
        (drop (call $log (i32.const 2) (i32.load (i32.const 20)) (i32.load (i32.const 24)))))""")


GOOD = [(":method", "GET"), (":path", "/"), (":authority", "svc")]


@pytest.mark.parametrize(("headers", "timeout", "upstreams"), [
    (GOOD[1:], 100, {"c": _allowed}),             # no :method
    (GOOD[:1] + GOOD[2:], 100, {"c": _allowed}),  # no :path
    (GOOD[:2], 100, {"c": _allowed}),             # no :authority
    (GOOD, -1, {"c": _allowed}),                  # a negative timeout
    (GOOD, 100, {"other": _allowed}),             # no such cluster
])
def test_calls_envoy_refuses_answer_bad_argument(headers, timeout, upstreams):
    plugin = ProxyWasm(_tick_caller(headers, timeout), upstreams=upstreams)
    plugin.tick()
    assert [line.message for line in plugin.logs] == ["2"] and plugin.calls == []


def test_a_reset_callout_reports_broken_connection():
    def reset(call):
        raise CalloutReset()

    plugin = ProxyWasm(_tick_caller(GOOD), upstreams={"c": reset})
    plugin.tick()
    # call accepted (0); then the reply's callback: status 11 (BROKEN_CONNECTION) "reset"
    assert [line.message for line in plugin.logs] == ["0", "1", "reset"]
    ok = ProxyWasm(_tick_caller(GOOD), upstreams={"c": _allowed})
    ok.tick()
    assert [line.message for line in ok.logs] == ["0", "0", ""]
    assert ok.calls[0].header(":authority") == "svc" and ok.calls[0].timeout_ms == 100


def test_declare_property_as_in_envoy():
    # Envoy 1.40 logs "declare 0 2 2 set 0 2 0 0 one" for this module
    # (test_emulator_envoy_features.py runs it there): declared once, then refused; a
    # read-only property set once per stream; an undeclared one as often as wanted.
    plugin = ProxyWasm(_wat("declare_property.wat"))
    for _ in range(2):
        plugin.request()
    assert [line.message for line in plugin.logs] == ["declare 0 2 2 set 0 2 0 0 one"] * 2
    # a function the test registers under the name wins over Envoy's
    mine = ProxyWasm(_wat("declare_property.wat"),
                     foreign_functions={"declare_property": lambda data: b""})
    mine.request()
    assert mine.logs[0].message == "declare 0 0 0 set 0 0 0 0 two"


def test_uncompress_refuses_what_is_not_whole_zlib_data_and_stays_bounded():
    import zlib

    from wasm.queues import _zlib

    packed = _zlib("compress", b"abc" * 1000)
    assert packed == zlib.compress(b"abc" * 1000)  # zlib format, default level
    assert _zlib("uncompress", packed) == b"abc" * 1000
    assert _zlib("uncompress", packed + b"tail") == b"abc" * 1000  # as zlib's uncompress()
    assert _zlib("uncompress", packed[:-3]) is None  # cut short
    bomb = zlib.compress(bytes(80 * 1024 * 1024))
    assert _zlib("uncompress", bomb) is None  # past 64 MiB: refused, not held
