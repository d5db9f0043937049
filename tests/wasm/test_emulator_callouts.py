"""Callouts, shared queues and foreign functions in the emulator: what a scripted upstream
sees and answers, failures (timeout, reset, a refused call, a handler that breaks), unary
gRPC calls, and functions a test registers."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
import wasmtime

from extctl.config import CalloutCluster, WasmModule
from extctl.testing import Exchange, compare_with_envoy, envoy_stack
from tests.helpers.wasm_modules import _module
from wasm import CalloutReset, CalloutTimeout, HostError, ProxyWasm, Reply

WAT = Path(__file__).resolve().parents[1] / "helpers" / "wat"


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


def _caller(headers: list[tuple[str, str]], timeout: int = 100, cluster: str = "c") -> bytes:
    """On request headers: proxy_http_call to ``cluster`` with ``headers``, its status added
    to the request as x-call (a digit); the stream waits for an accepted call, whose reply's
    callback adds x-status (proxy_get_status's code, the body's size, the trailers' count:
    "011 000 000"), x-message (the status message), x-reply (the status of reading the
    reply's :status), x-reply-status and x-body (the reply's), then continues the
    stream."""
    data, size = _serialised(headers)
    return _module(f"""
      (i32.store (i32.const 32) (local.get 0))  ;; the stream's context id
      (i32.store8 (i32.const 64) (i32.add (i32.const 48)
        (call $call (i32.const 256) (i32.const {len(cluster)}) (i32.const 1024)
                    (i32.const {size}) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                    (i32.const {timeout}) (i32.const 8))))
      (drop (call $add (i32.const 0) (i32.const 300) (i32.const 6) (i32.const 64)
                       (i32.const 1)))
      ;; StopIteration (1) while an accepted call (0) is out, else Continue
      (i32.eq (i32.load8_u (i32.const 64)) (i32.const 48))""", imports="""
      (import "env" "proxy_http_call"
        (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
      (import "env" "proxy_add_header_map_value"
        (func $add (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_get_header_map_value"
        (func $get (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_get_buffer_bytes"
        (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_set_effective_context" (func $set_context (param i32) (result i32)))
      (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))""",
                   extra=f"""
      (data (i32.const 256) "{cluster}")
      (data (i32.const 300) "x-call")     ;; 6
      (data (i32.const 310) "x-status")   ;; 8
      (data (i32.const 320) "x-message")  ;; 9
      (data (i32.const 330) "x-reply")    ;; 7
      (data (i32.const 340) ":status")    ;; 7
      (data (i32.const 350) "x-body")     ;; 6
      (data (i32.const 360) "x-reply-status")  ;; 14
      (data (i32.const 1024) "{data}")
      (func $number (param $at i32) (param $n i32)  ;; three digits at $at, a space after
        (i32.store8 (local.get $at) (i32.add (i32.const 48)
          (i32.rem_u (i32.div_u (local.get $n) (i32.const 100)) (i32.const 10))))
        (i32.store8 (i32.add (local.get $at) (i32.const 1)) (i32.add (i32.const 48)
          (i32.rem_u (i32.div_u (local.get $n) (i32.const 10)) (i32.const 10))))
        (i32.store8 (i32.add (local.get $at) (i32.const 2)) (i32.add (i32.const 48)
          (i32.rem_u (local.get $n) (i32.const 10))))
        (i32.store8 (i32.add (local.get $at) (i32.const 3)) (i32.const 32)))
      (func (export "proxy_on_http_call_response") (param i32 i32 i32) (param $body i32)
                                                   (param $trailers i32)
        (drop (call $set_context (i32.load (i32.const 32))))
        (drop (call $get_status (i32.const 16) (i32.const 20) (i32.const 24)))
        (call $number (i32.const 400) (i32.load (i32.const 16)))
        (call $number (i32.const 404) (local.get $body))
        (call $number (i32.const 408) (local.get $trailers))
        (drop (call $add (i32.const 0) (i32.const 310) (i32.const 8) (i32.const 400)
                         (i32.const 11)))
        (drop (call $add (i32.const 0) (i32.const 320) (i32.const 9) (i32.load (i32.const 20))
                         (i32.load (i32.const 24))))
        (i32.store (i32.const 40) (i32.const 0))
        (i32.store (i32.const 44) (i32.const 0))
        (i32.store8 (i32.const 420) (i32.add (i32.const 48)
          (call $get (i32.const 6) (i32.const 340) (i32.const 7) (i32.const 40) (i32.const 44))))
        (drop (call $add (i32.const 0) (i32.const 330) (i32.const 7) (i32.const 420)
                         (i32.const 1)))
        (drop (call $add (i32.const 0) (i32.const 360) (i32.const 14)
                         (i32.load (i32.const 40)) (i32.load (i32.const 44))))
        (i32.store (i32.const 40) (i32.const 0))
        (i32.store (i32.const 44) (i32.const 0))
        (drop (call $get_buffer (i32.const 4) (i32.const 0) (local.get $body) (i32.const 40)
                                (i32.const 44)))
        (drop (call $add (i32.const 0) (i32.const 350) (i32.const 6) (i32.load (i32.const 40))
                         (i32.load (i32.const 44))))
        (drop (call $continue (i32.const 0))))""")


GOOD = [(":method", "GET"), (":path", "/"), (":authority", "svc")]
REPORT = ("x-call", "x-status", "x-message", "x-reply", "x-reply-status", "x-body")


def _report(headers) -> dict[str, str]:
    """What _caller's module added to the request, from the upstream's headers."""
    return {name: value for name, value in dict(headers).items() if name in REPORT}


@pytest.mark.envoy
@pytest.mark.parametrize(("headers", "timeout", "cluster", "status"), [
    (GOOD[1:], 100, "c", "2"),                            # no :method
    (GOOD[:1] + GOOD[2:], 100, "c", "2"),                 # no :path
    (GOOD[:2], 100, "c", "2"),                            # no :authority
    (GOOD, -1, "c", "2"),                                 # a negative timeout
    (GOOD, 100, "other", "2"),                            # no such cluster
    ([*GOOD[:2], ("host", "svc")], 100, "c", "0"),        # host is :authority
    ([*GOOD[:2], (":authority", "")], 0, "c", "0"),       # empty, and no timeout: fine
])
def test_calls_envoy_refuses_answer_bad_argument(headers, timeout, cluster, status):
    """Through Envoy and in the emulator: BAD_ARGUMENT (2) for a call Envoy refuses, and the
    request goes on; an accepted call (0) is answered."""
    module = _caller(headers, timeout, cluster)
    assert compare_with_envoy(module, requests=[Exchange()], upstreams={"c": _allowed}) == []
    result = ProxyWasm(module, upstreams={"c": _allowed}).request()
    assert result.upstream_reached
    assert result.request_header("x-call") == status
    assert [call.header(":authority") for call in result.calls] == (
        [] if status == "2" else [dict(headers).get(":authority", "svc")])
    if status == "0":
        assert _report(result.request_headers) == {
            "x-call": "0", "x-status": "000 002 000", "x-message": "", "x-reply": "0",
            "x-reply-status": "200", "x-body": "ok"}
        assert result.calls[0].timeout_ms == timeout


class _Breaking:
    """A callout upstream that reads a request, writes ``answer`` (may be nothing), and closes
    the connection."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.listener.accept()
                with connection:
                    received = b""
                    while b"\r\n\r\n" not in received and (data := connection.recv(4096)):
                        received += data
                    connection.sendall(self.answer)
                    time.sleep(0.05)  # then the connection breaks

    def __enter__(self) -> _Breaking:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.listener.close()


ROUTER_RESET = b"upstream connect error or disconnect/reset before headers. reset reason: " \
               b"connection termination"


@pytest.mark.envoy
@pytest.mark.parametrize(("answer", "report"), [
    # after its headers: the call fails, BROKEN_CONNECTION (11) "reset", no reply to read
    (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
     {"x-status": "011 000 000", "x-message": "reset", "x-reply": "2", "x-reply-status": ""}),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
     {"x-status": "011 000 000", "x-message": "reset", "x-reply": "2", "x-reply-status": ""}),
    # before them: Envoy's router answers the call itself, 503, and the call succeeds (OK)
    (b"", {"x-status": f"000 {len(ROUTER_RESET):03} 000", "x-message": "", "x-reply": "0",
           "x-reply-status": "503"}),
])
def test_a_callout_whose_upstream_breaks_the_connection(answer, report):
    """What the filter gets when the callout's upstream closes the connection mid-answer, in
    Envoy: the emulator's CalloutReset is the break after the reply's headers; a break before
    them is Envoy's own 503 reply, which a handler scripts as a Reply."""
    module = _caller(GOOD, timeout=5000)
    with tempfile.TemporaryDirectory() as directory, _Breaking(answer) as upstream:
        path = Path(directory) / "caller.wasm"
        path.write_bytes(module)
        plugin = WasmModule("caller", file=str(path), text="")
        with envoy_stack(wasm=[plugin], clusters=[CalloutCluster("c", upstream.address)]) as stack:
            reply = stack.get("/")
    assert reply.status == 200
    seen = _report((name, values[0]) for name, values in reply.upstream_headers().items())
    assert seen == {"x-call": "0", "x-body": ROUTER_RESET.decode() if not answer else "",
                    **report}

    def breaks(call):
        if answer:
            raise CalloutReset()
        return Reply(503, {"content-length": str(len(ROUTER_RESET)),
                           "content-type": "text/plain"}, ROUTER_RESET)

    result = ProxyWasm(module, upstreams={"c": breaks}).request()
    assert _report(result.request_headers) == seen


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
