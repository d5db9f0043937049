"""Wasm modules and gRPC peers the emulator tests share (tests/wasm, tests/extctl): a WAT file
of ``wat/`` compiled, a minimal proxy-wasm module around a callback, and the grpc_stream.wat
module with the gRPC server it talks to, real (grpcio) and scripted."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import wasmtime

from wasm import GrpcStream, GrpcStreamHandler

__all__ = ["GRPCIO_HEADERS", "MODULE", "WAT", "GrpcServer", "Talk", "_module", "_wat",
           "callout_module"]

WAT = Path(__file__).resolve().parent / "wat"


def _wat(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((WAT / name).read_text()))


def callout_module() -> bytes:
    """tests/helpers/wat/callout.wat calling cluster "checkers" instead of the upstream's."""
    text = (WAT / "callout.wat").read_text()
    assert '(data (i32.const 1024) "upstream")' in text
    return bytes(wasmtime.wat2wasm(text.replace('(data (i32.const 1024) "upstream")',
                                                '(data (i32.const 1024) "checkers")')))


def _module(body: str, imports: str = "", memory: int = 1, abi: str = "0_2_1",
            extra: str = "", configure: str = "(i32.const 1)") -> bytes:
    """A minimal proxy-wasm module around ``body`` (the request headers callback); ``extra``
    adds functions (other callbacks)."""
    return bytes(wasmtime.wat2wasm(f"""(module {imports}
      (memory (export "memory") {memory})
      (global $heap (mut i32) (i32.const 1024))
      (func (export "proxy_abi_version_{abi}"))
      (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
        (local $at i32) (local.set $at (global.get $heap))
        (global.set $heap (i32.add (global.get $heap) (local.get $n))) (local.get $at))
      (func (export "proxy_on_context_create") (param i32 i32))
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
      (func (export "proxy_on_configure") (param i32 i32) (result i32) {configure})
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) {body})
      {extra}
      (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1)))"""))



MODULE = bytes(wasmtime.wat2wasm((WAT / "grpc_stream.wat").read_text()))


class GrpcServer:
    """test.Chat/Talk, a bidirectional stream of raw bytes, recording each call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        handler = grpc.method_handlers_generic_handler("test.Chat", {
            "Talk": grpc.stream_stream_rpc_method_handler(self.talk)})
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def talk(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        call: dict[str, Any] = {"metadata": dict((m.key, m.value) for m in
                                                 context.invocation_metadata()),
                                "messages": []}
        with self.lock:
            self.calls.append(call)
        for message in requests:
            call["messages"].append(message)
            if message == b"/deny":
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied")
            if message == b"/late":
                yield b"first"
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "late")
            if len(call["messages"]) == 1:
                context.send_initial_metadata((("x-upstream", "yes"),))
            yield b"echo:" + message
        context.set_trailing_metadata((("x-trailer", "done"),))


# What grpcio adds on its own, which the scripted upstream says too.
GRPCIO_HEADERS = {"grpc-accept-encoding": "identity, deflate, gzip"}


class Talk(GrpcStreamHandler):
    """The same server, scripted."""

    def received(self, stream: GrpcStream, message: bytes) -> None:
        if message == b"/deny":
            stream.close(7, "denied")  # before anything else: a trailers-only answer
            return
        if message == b"/late":
            stream.send_metadata(GRPCIO_HEADERS)
            stream.send(b"first")
            stream.close(9, "late")
            return
        if len(stream.received) == 1:
            stream.send_metadata({**GRPCIO_HEADERS, "x-upstream": "yes"})
        stream.send(b"echo:" + message)

    def half_closed(self, stream: GrpcStream) -> None:
        if stream.open:  # grpcio sends an empty grpc-message with an OK status
            stream.close(trailers=[("grpc-message", ""), ("x-trailer", "done")])

