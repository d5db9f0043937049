"""The host side of the proxy-wasm ABI: the functions a module imports, implemented over the
emulator's state (:mod:`wasm.emulator`). Every pointer the module hands over is checked
against its memory; every value handed back is written into memory the module allocates
itself (``proxy_on_memory_allocate`` or ``malloc``), as Envoy does."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .abi import (
    BufferType,
    LogLevel,
    MapType,
    MetricType,
    Status,
    StreamType,
    deserialize_map,
    serialize_map,
)
from .errors import MemoryAccess, WasmTrap

if TYPE_CHECKING:
    from .emulator import ProxyWasm

HeaderList = list[tuple[bytes, bytes]]


class HostFunctions:
    """One instance per loaded module; ``table()`` maps import names to callables."""

    def __init__(self, host: ProxyWasm) -> None:
        self.host = host

    # memory

    def check(self, function: str, ptr: int, size: int) -> None:
        length = self.host.memory_size()
        if ptr < 0 or size < 0 or ptr + size > length:
            raise MemoryAccess(f"{function}: the module passed {size} bytes at {ptr}, outside "
                               f"its {length}-byte memory")

    def read(self, function: str, ptr: int, size: int) -> bytes:
        self.check(function, ptr, size)
        return self.host.memory_read(ptr, size) if size else b""

    def write(self, function: str, ptr: int, data: bytes) -> None:
        self.check(function, ptr, len(data))
        if data:
            self.host.memory_write(ptr, data)

    def put_u32(self, function: str, ptr: int, value: int) -> None:
        self.write(function, ptr, struct.pack("<I", value & 0xFFFFFFFF))

    def put_u64(self, function: str, ptr: int, value: int) -> None:
        self.write(function, ptr, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def hand_back(self, function: str, data: bytes, ptr_ptr: int, size_ptr: int) -> int:
        """Copy ``data`` into memory the module allocates; write its address and size."""
        address = self.host.allocate(len(data)) if data else 0
        if data:
            self.write(function, address, data)
        self.put_u32(function, ptr_ptr, address)
        self.put_u32(function, size_ptr, len(data))
        return Status.OK

    def text(self, function: str, ptr: int, size: int) -> str:
        return self.read(function, ptr, size).decode("utf-8", "replace")

    # logging, time, ticks

    def proxy_log(self, level: int, ptr: int, size: int) -> int:
        self.host.log(LogLevel(level) if 0 <= level <= 5 else LogLevel.INFO,
                      self.text("proxy_log", ptr, size))
        return Status.OK

    def proxy_get_log_level(self, ptr: int) -> int:
        self.put_u32("proxy_get_log_level", ptr, int(self.host.log_level))
        return Status.OK

    def proxy_get_current_time_nanoseconds(self, ptr: int) -> int:
        self.put_u64("proxy_get_current_time_nanoseconds", ptr, self.host.clock())
        return Status.OK

    def proxy_set_tick_period_milliseconds(self, period: int) -> int:
        self.host.tick_period_ms = period
        return Status.OK

    # buffers

    def _buffer(self, kind: int) -> bytes | None:
        if kind == BufferType.VM_CONFIGURATION:
            return self.host.vm_configuration
        if kind == BufferType.PLUGIN_CONFIGURATION:
            return self.host.plugin_configuration
        context = self.host.http
        if context is None:
            return None
        if kind == BufferType.HTTP_REQUEST_BODY:
            return context.buffers.get("request")
        if kind == BufferType.HTTP_RESPONSE_BODY:
            return context.buffers.get("response")
        return None

    def proxy_get_buffer_bytes(self, kind: int, start: int, length: int, ptr_ptr: int,
                               size_ptr: int) -> int:
        buffer = self._buffer(kind)
        if buffer is None:
            return Status.NOT_FOUND
        if start < 0 or length < 0 or start > len(buffer):
            return Status.BAD_ARGUMENT
        data = buffer[start:start + length]
        if not data:
            return Status.NOT_FOUND  # as Envoy answers for an empty read
        return self.hand_back("proxy_get_buffer_bytes", data, ptr_ptr, size_ptr)

    def proxy_get_buffer_status(self, kind: int, length_ptr: int, flags_ptr: int) -> int:
        buffer = self._buffer(kind)
        if buffer is None:
            return Status.NOT_FOUND
        self.put_u32("proxy_get_buffer_status", length_ptr, len(buffer))
        self.put_u32("proxy_get_buffer_status", flags_ptr, 0)
        return Status.OK

    def proxy_set_buffer_bytes(self, kind: int, start: int, length: int, ptr: int,
                               size: int) -> int:
        context = self.host.http
        name = {int(BufferType.HTTP_REQUEST_BODY): "request",
                int(BufferType.HTTP_RESPONSE_BODY): "response"}.get(kind)
        if context is None or name is None or name not in context.buffers:
            return Status.NOT_FOUND
        data = self.read("proxy_set_buffer_bytes", ptr, size)
        buffer = context.buffers[name]
        if start < 0 or length < 0 or start > len(buffer):
            return Status.BAD_ARGUMENT
        context.buffers[name] = buffer[:start] + data + buffer[start + length:]
        return Status.OK

    # header maps

    def _map(self, kind: int) -> HeaderList | None:
        context = self.host.http
        if context is None or not 0 <= kind <= 3:
            return None
        return context.maps.get(MapType(kind))

    def proxy_get_header_map_pairs(self, kind: int, ptr_ptr: int, size_ptr: int) -> int:
        pairs = self._map(kind)
        if pairs is None:
            return Status.NOT_FOUND
        return self.hand_back("proxy_get_header_map_pairs", serialize_map(pairs), ptr_ptr,
                              size_ptr)

    def proxy_set_header_map_pairs(self, kind: int, ptr: int, size: int) -> int:
        pairs = self._map(kind)
        if pairs is None:
            return Status.NOT_FOUND
        try:
            new = deserialize_map(self.read("proxy_set_header_map_pairs", ptr, size))
        except ValueError:
            return Status.BAD_ARGUMENT
        pairs[:] = [(k.lower(), v) for k, v in new]
        return Status.OK

    def proxy_get_header_map_size(self, kind: int, size_ptr: int) -> int:
        pairs = self._map(kind)
        if pairs is None:
            return Status.NOT_FOUND
        self.put_u32("proxy_get_header_map_size", size_ptr, len(serialize_map(pairs)))
        return Status.OK

    def proxy_get_header_map_value(self, kind: int, key_ptr: int, key_size: int, ptr_ptr: int,
                                   size_ptr: int) -> int:
        pairs = self._map(kind)
        key = self.read("proxy_get_header_map_value", key_ptr, key_size).lower()
        if pairs is None:
            return Status.NOT_FOUND
        for name, value in pairs:
            if name == key:  # the first value, as Envoy answers
                return self.hand_back("proxy_get_header_map_value", value, ptr_ptr, size_ptr)
        return Status.NOT_FOUND

    def proxy_add_header_map_value(self, kind: int, key_ptr: int, key_size: int, ptr: int,
                                   size: int) -> int:
        pairs = self._map(kind)
        key = self.read("proxy_add_header_map_value", key_ptr, key_size).lower()
        value = self.read("proxy_add_header_map_value", ptr, size)
        if pairs is None:
            return Status.NOT_FOUND
        pairs.append((key, value))
        return Status.OK

    def proxy_replace_header_map_value(self, kind: int, key_ptr: int, key_size: int, ptr: int,
                                       size: int) -> int:
        pairs = self._map(kind)
        key = self.read("proxy_replace_header_map_value", key_ptr, key_size).lower()
        value = self.read("proxy_replace_header_map_value", ptr, size)
        if pairs is None:
            return Status.NOT_FOUND
        at = next((i for i, (name, _) in enumerate(pairs) if name == key), None)
        pairs[:] = [(n, v) for n, v in pairs if n != key]
        pairs.insert(len(pairs) if at is None else at, (key, value))
        return Status.OK

    def proxy_remove_header_map_value(self, kind: int, key_ptr: int, key_size: int) -> int:
        pairs = self._map(kind)
        key = self.read("proxy_remove_header_map_value", key_ptr, key_size).lower()
        if pairs is None:
            return Status.NOT_FOUND
        pairs[:] = [(n, v) for n, v in pairs if n != key]
        return Status.OK

    # properties

    def proxy_get_property(self, path_ptr: int, path_size: int, ptr_ptr: int,
                           size_ptr: int) -> int:
        path = self.read("proxy_get_property", path_ptr, path_size).rstrip(b"\0")
        value = self.host.property(".".join(p.decode("utf-8", "replace")
                                            for p in path.split(b"\0")))
        if value is None:
            return Status.NOT_FOUND
        return self.hand_back("proxy_get_property", value, ptr_ptr, size_ptr)

    def proxy_set_property(self, path_ptr: int, path_size: int, ptr: int, size: int) -> int:
        path = self.read("proxy_set_property", path_ptr, path_size).rstrip(b"\0")
        value = self.read("proxy_set_property", ptr, size)
        name = ".".join(p.decode("utf-8", "replace") for p in path.split(b"\0"))
        self.host.set_property(name, value)
        return Status.OK

    # the stream

    def proxy_send_local_response(self, status: int, details_ptr: int, details_size: int,
                                  body_ptr: int, body_size: int, headers_ptr: int,
                                  headers_size: int, grpc_status: int) -> int:
        context = self.host.http
        if context is None:
            return Status.BAD_ARGUMENT
        details = self.text("proxy_send_local_response", details_ptr, details_size)
        body = self.read("proxy_send_local_response", body_ptr, body_size)
        try:
            headers = deserialize_map(self.read("proxy_send_local_response", headers_ptr,
                                                headers_size))
        except ValueError:
            return Status.BAD_ARGUMENT
        context.send_local_response(status, body, headers, details,
                                    None if grpc_status in (-1, 0xFFFFFFFF) else grpc_status)
        return Status.OK

    def proxy_continue_stream(self, stream: int) -> int:
        context = self.host.http
        if context is None or stream not in (StreamType.REQUEST, StreamType.RESPONSE):
            return Status.BAD_ARGUMENT
        context.continued.add("request" if stream == StreamType.REQUEST else "response")
        return Status.OK

    def proxy_continue_request(self) -> int:
        return self.proxy_continue_stream(StreamType.REQUEST)

    def proxy_continue_response(self) -> int:
        return self.proxy_continue_stream(StreamType.RESPONSE)

    def proxy_close_stream(self, stream: int) -> int:
        context = self.host.http
        if context is None:
            return Status.BAD_ARGUMENT
        context.closed = True
        return Status.OK

    def proxy_clear_route_cache(self) -> int:
        if self.host.http is not None:
            self.host.http.route_cache_cleared = True
        return Status.OK

    def proxy_set_effective_context(self, context_id: int) -> int:
        return Status.OK if self.host.set_effective_context(context_id) else Status.BAD_ARGUMENT

    def proxy_done(self) -> int:
        return Status.OK

    # shared data and metrics

    def proxy_get_shared_data(self, key_ptr: int, key_size: int, ptr_ptr: int, size_ptr: int,
                              cas_ptr: int) -> int:
        key = self.read("proxy_get_shared_data", key_ptr, key_size)
        entry = self.host.shared_data.get(key)
        if entry is None:
            return Status.NOT_FOUND
        self.hand_back("proxy_get_shared_data", entry[0], ptr_ptr, size_ptr)
        self.put_u32("proxy_get_shared_data", cas_ptr, entry[1])
        return Status.OK

    def proxy_set_shared_data(self, key_ptr: int, key_size: int, ptr: int, size: int,
                              cas: int) -> int:
        key = self.read("proxy_set_shared_data", key_ptr, key_size)
        value = self.read("proxy_set_shared_data", ptr, size)
        current = self.host.shared_data.get(key)
        if cas and current is not None and current[1] != cas:
            return Status.CAS_MISMATCH
        self.host.shared_data[key] = (value, (current[1] + 1) if current else 1)
        return Status.OK

    def proxy_define_metric(self, kind: int, name_ptr: int, name_size: int,
                            id_ptr: int) -> int:
        if kind not in (0, 1, 2):
            return Status.BAD_ARGUMENT
        name = self.text("proxy_define_metric", name_ptr, name_size)
        self.put_u32("proxy_define_metric", id_ptr, self.host.metrics.define(MetricType(kind),
                                                                              name))
        return Status.OK

    def proxy_increment_metric(self, metric_id: int, offset: int) -> int:
        return self.host.metrics.increment(metric_id, offset)

    def proxy_record_metric(self, metric_id: int, value: int) -> int:
        return self.host.metrics.record(metric_id, value)

    def proxy_get_metric(self, metric_id: int, ptr: int) -> int:
        value = self.host.metrics.value_of(metric_id)
        if value is None:
            return Status.NOT_FOUND
        self.put_u64("proxy_get_metric", ptr, value)
        return Status.OK

    # WASI, as far as proxy-wasm SDKs use it

    def wasi_proc_exit(self, code: int) -> None:
        raise WasmTrap(f"the module exited (proc_exit {code}), as an abort does",
                       self.host.current_callback)

    def wasi_fd_write(self, fd: int, iovs: int, iovs_len: int, written_ptr: int) -> int:
        data = b""
        for index in range(iovs_len):
            ptr, size = struct.unpack("<II", self.read("fd_write", iovs + 8 * index, 8))
            data += self.read("fd_write", ptr, size)
        for line in data.decode("utf-8", "replace").splitlines():
            self.host.log(LogLevel.ERROR if fd == 2 else LogLevel.INFO, line)
        self.put_u32("fd_write", written_ptr, len(data))
        return 0

    def wasi_zero_sizes(self, count_ptr: int, size_ptr: int) -> int:
        self.put_u32("environ_sizes_get", count_ptr, 0)
        self.put_u32("environ_sizes_get", size_ptr, 0)
        return 0

    def wasi_nothing(self, *args: int) -> int:
        return 0

    def wasi_clock_time_get(self, clock: int, precision: int, ptr: int) -> int:
        self.put_u64("clock_time_get", ptr, self.host.clock())
        return 0

    def wasi_random_get(self, ptr: int, size: int) -> int:
        self.write("random_get", ptr, os.urandom(size))
        return 0

    def table(self) -> dict[tuple[str, str], Callable[..., Any]]:
        from .abi import HOST_FUNCTIONS, STUBBED_FUNCTIONS, WASI_MODULES

        found: dict[tuple[str, str], Callable[..., Any]] = {
            ("env", name): getattr(self, name) for name in HOST_FUNCTIONS}
        for name in STUBBED_FUNCTIONS:
            found[("env", name)] = self._stub(name)
        wasi: dict[str, Callable[..., Any]] = {
            "proc_exit": self.wasi_proc_exit, "fd_write": self.wasi_fd_write,
            "environ_sizes_get": self.wasi_zero_sizes, "args_sizes_get": self.wasi_zero_sizes,
            "environ_get": self.wasi_nothing, "args_get": self.wasi_nothing,
            "clock_time_get": self.wasi_clock_time_get, "random_get": self.wasi_random_get,
            "sched_yield": self.wasi_nothing}
        for module in WASI_MODULES:
            for name, function in wasi.items():
                found[(module, name)] = function
        return found

    def _stub(self, name: str) -> Callable[..., int]:
        def unimplemented(*args: int) -> int:
            self.host.log(LogLevel.WARN, f"emulator: {name} is not implemented")
            return Status.UNIMPLEMENTED
        return unimplemented
