"""The host side of the proxy-wasm ABI: the functions a module imports, implemented over the
plugin's state (:mod:`wasm.state`) and memory (:mod:`wasm.memory`) with the answers Envoy
gives (proxy-wasm-cpp-host and Envoy's wasm context). Every pointer the module hands over is
checked against its memory; every value handed back is written into memory the module
allocates (``malloc`` or ``proxy_on_memory_allocate``). Arguments arrive as the unsigned
32-bit values the ABI means.

Where the emulator departs from Envoy on purpose: a pointer outside the module's memory raises
:class:`~wasm.errors.MemoryAccess` (Envoy answers INVALID_MEMORY_ACCESS and carries on), so a
test sees the bug at once.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from typing import Any

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
from .headers import HeaderMap
from .memory import Memory
from .properties import lookup
from .state import PluginState

# WASI errnos
EBADF, ENOENT, ENOSYS, ENOTDIR, EINVAL, ENOTSUP = 8, 44, 52, 20, 28, 58
RANDOM_GET_MAX = 64 * 1024
"""The most random bytes Envoy hands out in one ``random_get``."""
_WHITESPACE = re.compile(rb"\s")


class HostFunctions:
    """The core host functions (logging, time, buffers, header maps, properties, the stream,
    shared data, metrics, WASI); ``table()`` maps every import name to a callable, those of
    :mod:`wasm.callouts` and :mod:`wasm.queues` included."""

    def __init__(self, state: PluginState, memory: Memory) -> None:
        self.state = state
        self.memory = memory
        # bound once: these run on every host call
        self.read, self.write, self.text = memory.read, memory.write, memory.text
        self.put_u32, self.put_u64, self.hand_back = (memory.put_u32, memory.put_u64,
                                                      memory.hand_back)

    # logging, time, ticks

    def proxy_log(self, level: int, ptr: int, size: int) -> int:
        if level > LogLevel.CRITICAL:
            return Status.BAD_ARGUMENT
        message = self.text("proxy_log", ptr, size)
        if level >= self.state.log_level:
            self.state.log(LogLevel(level), message)
        return Status.OK

    def proxy_get_log_level(self, ptr: int) -> int:
        self.put_u32("proxy_get_log_level", ptr, int(self.state.log_level))
        return Status.OK

    def proxy_get_current_time_nanoseconds(self, ptr: int) -> int:
        self.put_u64("proxy_get_current_time_nanoseconds", ptr, self.state.clock())
        return Status.OK

    def proxy_set_tick_period_milliseconds(self, period: int) -> int:
        self.state.tick_period_ms = period
        return Status.OK

    # buffers

    def _buffer(self, kind: int) -> bytes | Status:
        if kind > BufferType.PLUGIN_CONFIGURATION:
            return Status.BAD_ARGUMENT
        if kind == BufferType.VM_CONFIGURATION:
            return (self.state.vm_configuration if self.state.phase in ("vm_start", "root_create")
                    else Status.NOT_FOUND)
        if kind == BufferType.PLUGIN_CONFIGURATION:
            # Envoy holds the plugin (and its configuration) only while configuring.
            return (self.state.plugin_configuration
                    if self.state.phase in ("configure", "root_create") else Status.NOT_FOUND)
        answer = self.state.answer
        if answer is not None and kind == answer.buffer:
            return answer.body  # a callout's reply, while the callback for it runs
        if kind == BufferType.HTTP_CALL_RESPONSE_BODY:
            return Status.NOT_FOUND
        context = self.state.stream
        if context is not None and kind == BufferType.HTTP_REQUEST_BODY:
            return context.buffers["request"]
        if context is not None and kind == BufferType.HTTP_RESPONSE_BODY:
            return context.buffers["response"]
        return b""  # Envoy answers with an empty buffer

    def proxy_get_buffer_bytes(self, kind: int, start: int, length: int, ptr_ptr: int,
                               size_ptr: int) -> int:
        buffer = self._buffer(kind)
        if isinstance(buffer, Status):
            return buffer
        # The range is cut to the buffer (0xFFFFFFFF: all of it); empty is OK, nothing.
        return self.hand_back("proxy_get_buffer_bytes", buffer[start:start + length], ptr_ptr,
                              size_ptr)

    def proxy_get_buffer_status(self, kind: int, length_ptr: int, flags_ptr: int) -> int:
        buffer = self._buffer(kind)
        if isinstance(buffer, Status):
            return buffer
        self.put_u32("proxy_get_buffer_status", length_ptr, len(buffer))
        self.put_u32("proxy_get_buffer_status", flags_ptr, 0)
        return Status.OK

    def proxy_set_buffer_bytes(self, kind: int, start: int, length: int, ptr: int,
                               size: int) -> int:
        data = self.read("proxy_set_buffer_bytes", ptr, size)
        context = self.state.stream
        direction = {0: "request", 1: "response"}.get(kind)  # the two body buffers
        if context is None or direction is None:
            return Status.BAD_ARGUMENT
        buffer = context.buffers[direction]
        if start == 0:  # drop `length` bytes from the front, then prepend
            context.buffers[direction] = data + buffer[length:]
        elif start >= len(buffer):
            context.buffers[direction] = buffer + data
        else:
            return Status.BAD_ARGUMENT  # Envoy edits only at either end
        return Status.OK

    # header maps

    def _map(self, kind: int, write: bool) -> HeaderMap | Status:
        if kind > MapType.HTTP_CALL_RESPONSE_TRAILERS:
            return Status.BAD_ARGUMENT
        answer = self.state.answer
        if kind >= MapType.GRPC_RECEIVE_INITIAL_METADATA:  # a callout's reply, lent by kind
            lent = answer.maps.get(kind) if answer is not None else None
            return lent if lent is not None else Status.BAD_ARGUMENT
        context = self.state.stream
        found = context.map_for(MapType(kind), write) if context is not None else None
        if found is None:
            # Envoy's answer once it has let go of a map (or before it has one); in the
            # access-log phase a map never seen is NOT_FOUND.
            logging = context is not None and context.logging
            return Status.NOT_FOUND if logging and not write else Status.BAD_ARGUMENT
        return found

    def proxy_get_header_map_pairs(self, kind: int, ptr_ptr: int, size_ptr: int) -> int:
        found = self._map(kind, write=False)
        if isinstance(found, Status):
            if kind > MapType.HTTP_CALL_RESPONSE_TRAILERS:
                return found
            found = HeaderMap()  # a map Envoy does not hold reads as empty
        data = serialize_map(found.pairs) if found.pairs else b""
        return self.hand_back("proxy_get_header_map_pairs", data, ptr_ptr, size_ptr)

    def proxy_set_header_map_pairs(self, kind: int, ptr: int, size: int) -> int:
        data = self.read("proxy_set_header_map_pairs", ptr, size)
        found = self._map(kind, write=True)
        if isinstance(found, Status):
            return found
        try:
            pairs = deserialize_map(data)
        except ValueError:
            pairs = []  # Envoy: a malformed map clears the headers
        found.set_all(pairs)
        return Status.OK

    def proxy_get_header_map_size(self, kind: int, size_ptr: int) -> int:
        found = self._map(kind, write=False)
        if isinstance(found, Status):
            return found
        self.put_u32("proxy_get_header_map_size", size_ptr, found.byte_size())
        return Status.OK

    def proxy_get_header_map_value(self, kind: int, key_ptr: int, key_size: int, ptr_ptr: int,
                                   size_ptr: int) -> int:
        key = self.read("proxy_get_header_map_value", key_ptr, key_size)
        found = self._map(kind, write=False)
        if isinstance(found, Status):
            return found
        value = found.get(key)
        if value is None:
            return Status.NOT_FOUND
        return self.hand_back("proxy_get_header_map_value", value, ptr_ptr, size_ptr)

    def _set_value(self, function: str, kind: int, key_ptr: int, key_size: int, ptr: int,
                   size: int, apply: Callable[[HeaderMap, bytes, bytes], None]) -> int:
        key = self.read(function, key_ptr, key_size)
        value = self.read(function, ptr, size)
        found = self._map(kind, write=True)
        if isinstance(found, Status):
            return found
        apply(found, key, value)
        return Status.OK

    def proxy_add_header_map_value(self, kind: int, key_ptr: int, key_size: int, ptr: int,
                                   size: int) -> int:
        return self._set_value("proxy_add_header_map_value", kind, key_ptr, key_size, ptr,
                               size, HeaderMap.add)

    def proxy_replace_header_map_value(self, kind: int, key_ptr: int, key_size: int, ptr: int,
                                       size: int) -> int:
        return self._set_value("proxy_replace_header_map_value", kind, key_ptr, key_size, ptr,
                               size, HeaderMap.replace)

    def proxy_remove_header_map_value(self, kind: int, key_ptr: int, key_size: int) -> int:
        key = self.read("proxy_remove_header_map_value", key_ptr, key_size)
        found = self._map(kind, write=True)
        if isinstance(found, Status):
            return found
        found.remove(key)
        return Status.OK

    # properties

    def proxy_get_property(self, path_ptr: int, path_size: int, ptr_ptr: int,
                           size_ptr: int) -> int:
        path = self.read("proxy_get_property", path_ptr, path_size)
        value = lookup(self.state, tuple(path.rstrip(b"\0").split(b"\0")))
        if isinstance(value, Status):
            return value
        return self.hand_back("proxy_get_property", value, ptr_ptr, size_ptr)

    def proxy_set_property(self, path_ptr: int, path_size: int, ptr: int, size: int) -> int:
        path = self.read("proxy_set_property", path_ptr, path_size)
        value = self.read("proxy_set_property", ptr, size)
        context = self.state.stream
        if context is None:
            return Status.NOT_FOUND  # Envoy keeps filter state on streams only
        key = path.rstrip(b"\0")
        declared = self.state.declared.get(key)
        if declared is not None and declared.readonly and key in context.filter_state:
            return Status.BAD_ARGUMENT  # a read-only property is set once
        context.filter_state[key] = value
        return Status.OK

    # the stream

    def proxy_send_local_response(self, status: int, details_ptr: int, details_size: int,
                                  body_ptr: int, body_size: int, headers_ptr: int,
                                  headers_size: int, grpc_status: int) -> int:
        details = self.read("proxy_send_local_response", details_ptr, details_size)
        body = self.read("proxy_send_local_response", body_ptr, body_size)
        raw_headers = self.read("proxy_send_local_response", headers_ptr, headers_size)
        context = self.state.stream
        if context is None:
            return Status.OK  # Envoy ignores it from the root context
        try:
            headers = deserialize_map(raw_headers)
        except ValueError:
            headers = []  # Envoy sends the reply without them
        context.send_local_response(
            status, body, headers, _WHITESPACE.sub(b"_", details).decode("utf-8", "replace"),
            grpc_status if grpc_status <= 16 else None)
        return Status.OK

    def proxy_continue_stream(self, stream: int) -> int:
        context = self.state.stream
        if context is None or stream not in (StreamType.REQUEST, StreamType.RESPONSE):
            return Status.BAD_ARGUMENT
        context.continued.add("request" if stream == StreamType.REQUEST else "response")
        return Status.OK

    def proxy_close_stream(self, stream: int) -> int:
        context = self.state.stream
        if context is None:
            return Status.BAD_ARGUMENT
        context.reset = True
        return Status.OK

    # ABI 0.1.0's forms of the above

    def proxy_get_configuration(self, ptr_ptr: int, size_ptr: int) -> int:
        # Envoy lends the plugin's configuration while it holds the plugin (creating the root
        # context, configuring), the VM's otherwise
        state = self.state
        configuration = (state.plugin_configuration if state.phase in ("root_create", "configure")
                         else state.vm_configuration)
        return self.hand_back("proxy_get_configuration", configuration, ptr_ptr, size_ptr)

    def proxy_continue_request(self) -> int:
        return self.proxy_continue_stream(StreamType.REQUEST)

    def proxy_continue_response(self) -> int:
        return self.proxy_continue_stream(StreamType.RESPONSE)

    def proxy_clear_route_cache(self) -> int:
        if self.state.stream is not None:
            self.state.stream.route_cache_cleared += 1
        return Status.OK

    def proxy_set_effective_context(self, context_id: int) -> int:
        return Status.OK if self.state.set_effective_context(context_id) else Status.BAD_ARGUMENT

    def proxy_done(self) -> int:
        context = self.state.stream
        if context is None or not context.finishing:
            return Status.NOT_FOUND
        context.finishing = False
        return Status.OK

    # shared data and metrics

    def proxy_get_shared_data(self, key_ptr: int, key_size: int, ptr_ptr: int, size_ptr: int,
                              cas_ptr: int) -> int:
        key = self.read("proxy_get_shared_data", key_ptr, key_size)
        entry = self.state.shared_data.get(key)
        if entry is None:
            return Status.NOT_FOUND
        self.hand_back("proxy_get_shared_data", entry[0], ptr_ptr, size_ptr)
        self.put_u32("proxy_get_shared_data", cas_ptr, entry[1])
        return Status.OK

    def proxy_set_shared_data(self, key_ptr: int, key_size: int, ptr: int, size: int,
                              cas: int) -> int:
        key = self.read("proxy_set_shared_data", key_ptr, key_size)
        value = self.read("proxy_set_shared_data", ptr, size)
        return self.state.shared_data.set(key, value, cas)

    def proxy_define_metric(self, kind: int, name_ptr: int, name_size: int,
                            id_ptr: int) -> int:
        name = self.text("proxy_define_metric", name_ptr, name_size)
        if kind > MetricType.HISTOGRAM:
            return Status.BAD_ARGUMENT
        self.put_u32("proxy_define_metric", id_ptr,
                     self.state.metrics.define(MetricType(kind), name))
        return Status.OK

    def proxy_increment_metric(self, metric_id: int, offset: int) -> int:
        return self.state.metrics.increment(metric_id, offset)

    def proxy_record_metric(self, metric_id: int, value: int) -> int:
        return self.state.metrics.record(metric_id, value)

    def proxy_get_metric(self, metric_id: int, ptr: int) -> int:
        status, value = self.state.metrics.value_of(metric_id)
        if status == Status.OK:
            self.put_u64("proxy_get_metric", ptr, value)
        return status

    # WASI, as Envoy answers it (proxy-wasm-cpp-host): stdout and stderr are the log, and
    # nothing else exists; calls a file system would answer are refused with its errno

    def wasi_proc_exit(self, code: int) -> None:
        """Envoy returns to the module, which carries on (usually into an ``unreachable``:
        :class:`~wasm.vm.Vm` names the exit in the trap)."""

    def _writev(self, function: str, fd: int, iovs: int, iovs_len: int,
                written_ptr: int) -> int:
        if fd not in (1, 2):
            return EBADF
        data = b""
        for index in range(iovs_len):
            ptr, size = struct.unpack("<II", self.read(function, iovs + 8 * index, 8))
            data += self.read(function, ptr, size)
        if data:  # one log line per write, its trailing newline dropped: stdout info, stderr error
            message = data.decode("utf-8", "replace").removesuffix("\n")
            self.state.log(LogLevel.ERROR if fd == 2 else LogLevel.INFO, message)
        self.put_u32(function, written_ptr, len(data))
        return 0

    def wasi_fd_write(self, fd: int, iovs: int, iovs_len: int, written_ptr: int) -> int:
        return self._writev("fd_write", fd, iovs, iovs_len, written_ptr)

    def wasi_fd_pwrite(self, fd: int, iovs: int, iovs_len: int, offset: int,
                       written_ptr: int) -> int:
        return self._writev("fd_pwrite", fd, iovs, iovs_len, written_ptr)  # no offsets

    def wasi_zero_sizes(self, count_ptr: int, size_ptr: int) -> int:
        self.put_u32("environ_sizes_get", count_ptr, 0)
        self.put_u32("environ_sizes_get", size_ptr, 0)
        return 0

    def wasi_fdstat_get(self, fd: int, ptr: int) -> int:
        if fd not in (1, 2):
            return EBADF
        # filetype unknown, no flags, rights: fd_write only
        self.write("fd_fdstat_get", ptr, struct.pack("<QQQ", 0, 64, 0))
        return 0

    def wasi_clock_time_get(self, clock: int, precision: int, ptr: int) -> int:
        if clock == 0:  # realtime
            self.put_u64("clock_time_get", ptr, self.state.clock())
        elif clock == 1:  # monotonic
            self.put_u64("clock_time_get", ptr, self.state.monotonic())
        else:
            return ENOTSUP  # no process or thread clocks
        return 0

    def wasi_clock_res_get(self, clock: int, ptr: int) -> int:
        if clock not in (0, 1):
            return ENOTSUP
        self.put_u64("clock_res_get", ptr, 1)
        return 0

    def wasi_random_get(self, ptr: int, size: int) -> int:
        if size > RANDOM_GET_MAX:
            return EINVAL
        if size:
            self.write("random_get", ptr, os.urandom(size))
        return 0

    def wasi_poll_oneoff(self, subscriptions: int, events: int, count: int,
                         events_ptr: int) -> int:
        self.put_u32("poll_oneoff", events_ptr, 0)  # no events; Go's runtime needs success
        return 0

    def wasi_fd_readdir(self, fd: int, buf: int, size: int, cookie: int, read_ptr: int) -> int:
        self.put_u32("fd_readdir", read_ptr, 0)
        return ENOTDIR

    def wasi_fd_renumber(self, fd: int, to: int) -> int:
        return ENOTSUP if fd in (1, 2) and to in (1, 2) else EBADF

    def wasi_fd_tell(self, fd: int, ptr: int) -> int:
        if fd not in (1, 2):
            return EBADF
        self.put_u64("fd_tell", ptr, 0)
        return 0

    def wasi_path_readlink(self, fd: int, path: int, path_size: int, buf: int, size: int,
                           read_ptr: int) -> int:
        self.put_u32("path_readlink", read_ptr, 0)
        return ENOTSUP

    def wasi_sock_accept(self, fd: int, flags: int, fd_ptr: int) -> int:
        self.put_u64("sock_accept", fd_ptr, 0)  # Envoy writes 8 bytes there
        return ENOTSUP

    def wasi_sock_recv(self, fd: int, data: int, size: int, flags: int, read_ptr: int,
                       flags_ptr: int) -> int:
        self.put_u32("sock_recv", read_ptr, 0)
        self.write("sock_recv", flags_ptr, bytes(2))
        return ENOTSUP

    def wasi_sock_send(self, fd: int, data: int, size: int, flags: int, sent_ptr: int) -> int:
        self.put_u32("sock_send", sent_ptr, 0)
        return ENOTSUP

    def _wasi(self) -> dict[str, Callable[..., Any]]:
        """WASI name -> callable: the calls above, and those Envoy answers with a constant."""
        def answer(errno: int) -> Callable[..., int]:
            return lambda *args: errno

        def stdio_only(*args: int) -> int:  # 0 for stdout and stderr, EBADF for anything else
            return 0 if args[0] in (1, 2) else EBADF

        found: dict[str, Callable[..., Any]] = {
            "proc_exit": self.wasi_proc_exit, "fd_write": self.wasi_fd_write,
            "fd_pwrite": self.wasi_fd_pwrite, "environ_sizes_get": self.wasi_zero_sizes,
            "args_sizes_get": self.wasi_zero_sizes, "fd_fdstat_get": self.wasi_fdstat_get,
            "clock_time_get": self.wasi_clock_time_get, "clock_res_get": self.wasi_clock_res_get,
            "random_get": self.wasi_random_get, "poll_oneoff": self.wasi_poll_oneoff,
            "fd_readdir": self.wasi_fd_readdir, "fd_renumber": self.wasi_fd_renumber,
            "fd_tell": self.wasi_fd_tell, "path_readlink": self.wasi_path_readlink,
            "sock_accept": self.wasi_sock_accept, "sock_recv": self.wasi_sock_recv,
            "sock_send": self.wasi_sock_send}
        for name in ("environ_get", "args_get", "sched_yield", "fd_seek", "fd_close",
                     "fd_advise"):
            found[name] = answer(0)  # no environment, no arguments; nothing to seek or close
        for name in ("fd_allocate", "fd_datasync", "fd_fdstat_set_rights",
                     "fd_filestat_set_size", "fd_filestat_set_times", "fd_sync"):
            found[name] = stdio_only
        for name in ("fd_read", "fd_pread", "fd_fdstat_set_flags", "fd_prestat_dir_name"):
            found[name] = answer(ENOSYS)
        for name in ("fd_prestat_get", "fd_filestat_get"):
            found[name] = answer(EBADF)  # nothing preopened
        found["path_open"] = answer(ENOENT)
        for name in ("path_filestat_get", "path_create_directory", "path_filestat_set_times",
                     "path_link", "path_remove_directory", "path_rename", "path_symlink",
                     "path_unlink_file", "sock_shutdown"):
            found[name] = answer(ENOTSUP)
        return found

    def table(self, *others: object) -> dict[tuple[str, str], Callable[..., Any]]:
        """Import name -> callable: this object's functions, then those of ``others`` (the
        callout and queue functions)."""
        from .abi import ENV_EXTRAS, HOST_FUNCTIONS, WASI_MODULES

        providers = (self, *others)
        found: dict[tuple[str, str], Callable[..., Any]] = {
            ("env", name): next(getattr(p, name) for p in providers if hasattr(p, name))
            for name in HOST_FUNCTIONS}
        extras: dict[str, Callable[..., Any]] = {
            "emscripten_notify_memory_growth": lambda pages: None,
            "pthread_equal": lambda a, b: int(a == b)}
        for name in ENV_EXTRAS:
            found[("env", name)] = extras[name]
        wasi = self._wasi()
        for module in WASI_MODULES:
            for name, function in wasi.items():
                found[(module, name)] = function
        return found



def for_abi(table: dict[tuple[str, str], Callable[..., Any]], abi: str, memory: Memory
            ) -> dict[tuple[str, str], Callable[..., Any]]:
    """``table`` with the answers that differ for ``abi``: in 0.1.0 a header a map lacks (or
    a map gone in the access-log phase) reads as an empty value, OK, where later ABIs answer
    NOT_FOUND."""
    if abi != "0_1_0":
        return table
    get = table[("env", "proxy_get_header_map_value")]

    def proxy_get_header_map_value(kind: int, key_ptr: int, key_size: int, ptr_ptr: int,
                                   size_ptr: int) -> int:
        status = get(kind, key_ptr, key_size, ptr_ptr, size_ptr)
        if status != Status.NOT_FOUND:
            return int(status)
        return memory.hand_back("proxy_get_header_map_value", b"", ptr_ptr, size_ptr)

    return {**table, ("env", "proxy_get_header_map_value"): proxy_get_header_map_value}
