"""The proxy-wasm ABI (0.2.0 / 0.2.1) as the host sees it: enumerations, the host functions
the emulator implements (with their wasm signatures), and the header-map wire format."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum


class Status(IntEnum):
    """``WasmResult``: what every host function returns."""

    OK = 0
    NOT_FOUND = 1
    BAD_ARGUMENT = 2
    SERIALIZATION_FAILURE = 3
    PARSE_FAILURE = 4
    BAD_EXPRESSION = 5
    INVALID_MEMORY_ACCESS = 6
    EMPTY = 7
    CAS_MISMATCH = 8
    RESULT_MISMATCH = 9
    INTERNAL_FAILURE = 10
    BROKEN_CONNECTION = 11
    UNIMPLEMENTED = 12


class LogLevel(IntEnum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4
    CRITICAL = 5


class MapType(IntEnum):
    REQUEST_HEADERS = 0
    REQUEST_TRAILERS = 1
    RESPONSE_HEADERS = 2
    RESPONSE_TRAILERS = 3
    GRPC_RECEIVE_INITIAL_METADATA = 4
    GRPC_RECEIVE_TRAILING_METADATA = 5
    HTTP_CALL_RESPONSE_HEADERS = 6
    HTTP_CALL_RESPONSE_TRAILERS = 7


class BufferType(IntEnum):
    HTTP_REQUEST_BODY = 0
    HTTP_RESPONSE_BODY = 1
    DOWNSTREAM_DATA = 2
    UPSTREAM_DATA = 3
    HTTP_CALL_RESPONSE_BODY = 4
    GRPC_RECEIVE_BUFFER = 5
    VM_CONFIGURATION = 6
    PLUGIN_CONFIGURATION = 7


class MetricType(IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


class StreamType(IntEnum):
    REQUEST = 0
    RESPONSE = 1
    DOWNSTREAM = 2
    UPSTREAM = 3


HEADER_ACTIONS = {0: "Continue", 1: "StopIteration", 2: "ContinueAndEndStream",
                  3: "StopAllIterationAndBuffer", 4: "StopAllIterationAndWatermark"}
BODY_ACTIONS = {0: "Continue", 1: "StopIterationAndBuffer", 2: "StopIterationAndWatermark",
                3: "StopIterationNoBuffer"}

I32, I64 = "i32", "i64"

HOST_FUNCTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (params, results); every one of them answers a Status
    "proxy_log": ((I32, I32, I32), (I32,)),
    "proxy_get_log_level": ((I32,), (I32,)),
    "proxy_get_current_time_nanoseconds": ((I32,), (I32,)),
    "proxy_set_tick_period_milliseconds": ((I32,), (I32,)),
    "proxy_get_buffer_bytes": ((I32, I32, I32, I32, I32), (I32,)),
    "proxy_get_buffer_status": ((I32, I32, I32), (I32,)),
    "proxy_set_buffer_bytes": ((I32, I32, I32, I32, I32), (I32,)),
    "proxy_get_header_map_pairs": ((I32, I32, I32), (I32,)),
    "proxy_set_header_map_pairs": ((I32, I32, I32), (I32,)),
    "proxy_get_header_map_size": ((I32, I32), (I32,)),
    "proxy_get_header_map_value": ((I32, I32, I32, I32, I32), (I32,)),
    "proxy_add_header_map_value": ((I32, I32, I32, I32, I32), (I32,)),
    "proxy_replace_header_map_value": ((I32, I32, I32, I32, I32), (I32,)),
    "proxy_remove_header_map_value": ((I32, I32, I32), (I32,)),
    "proxy_get_property": ((I32, I32, I32, I32), (I32,)),
    "proxy_set_property": ((I32, I32, I32, I32), (I32,)),
    "proxy_send_local_response": ((I32, I32, I32, I32, I32, I32, I32, I32), (I32,)),
    "proxy_continue_stream": ((I32,), (I32,)),
    "proxy_close_stream": ((I32,), (I32,)),
    "proxy_set_effective_context": ((I32,), (I32,)),
    "proxy_done": ((), (I32,)),
    "proxy_get_shared_data": ((I32, I32, I32, I32, I32), (I32,)),
    "proxy_set_shared_data": ((I32, I32, I32, I32, I32), (I32,)),
    "proxy_define_metric": ((I32, I32, I32, I32), (I32,)),
    "proxy_increment_metric": ((I32, I64), (I32,)),
    "proxy_record_metric": ((I32, I64), (I32,)),
    "proxy_get_metric": ((I32, I32), (I32,)),
    # callouts (wasm.callouts)
    "proxy_http_call": ((I32,) * 10, (I32,)),
    "proxy_grpc_call": ((I32,) * 12, (I32,)),
    "proxy_grpc_stream": ((I32,) * 9, (I32,)),
    "proxy_grpc_send": ((I32, I32, I32, I32), (I32,)),
    "proxy_grpc_cancel": ((I32,), (I32,)),
    "proxy_grpc_close": ((I32,), (I32,)),
    "proxy_get_status": ((I32, I32, I32), (I32,)),
    # shared queues and foreign functions (wasm.queues)
    "proxy_register_shared_queue": ((I32, I32, I32), (I32,)),
    "proxy_resolve_shared_queue": ((I32, I32, I32, I32, I32), (I32,)),
    "proxy_enqueue_shared_queue": ((I32, I32, I32), (I32,)),
    "proxy_dequeue_shared_queue": ((I32, I32, I32), (I32,)),
    "proxy_call_foreign_function": ((I32,) * 6, (I32,)),
}
"""The host functions the emulator implements (for ABI 0.2.0, less ``proxy_get_log_level``,
which Envoy gives 0.2.1 modules only)."""
ONLY_0_2_1 = frozenset({"proxy_get_log_level"})

WASI_FUNCTIONS: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {
    # the WASI calls Envoy gives a module (proxy-wasm-cpp-host's list, with its signatures):
    # stdout/stderr go to the log, there are no files, sockets or arguments
    ("proc_exit",): ((I32,), ()),
    ("fd_write",): ((I32, I32, I32, I32), (I32,)),
    ("fd_pwrite",): ((I32, I32, I32, I64, I32), (I32,)),
    ("environ_sizes_get", "environ_get", "args_sizes_get", "args_get"): ((I32, I32), (I32,)),
    ("clock_time_get",): ((I32, I64, I32), (I32,)),
    ("clock_res_get",): ((I32, I32), (I32,)),
    ("random_get",): ((I32, I32), (I32,)),
    ("sched_yield",): ((), (I32,)),
    ("poll_oneoff", "fd_read"): ((I32, I32, I32, I32), (I32,)),
    ("fd_seek",): ((I32, I64, I32, I32), (I32,)),
    ("fd_close", "fd_datasync", "fd_sync"): ((I32,), (I32,)),
    ("fd_fdstat_get", "fd_fdstat_set_flags", "fd_prestat_get", "fd_filestat_get", "fd_renumber",
     "fd_tell", "sock_shutdown"): ((I32, I32), (I32,)),
    ("fd_fdstat_set_rights", "fd_allocate"): ((I32, I64, I64), (I32,)),
    ("fd_advise",): ((I32, I64, I64, I32), (I32,)),
    ("fd_filestat_set_size",): ((I32, I64), (I32,)),
    ("fd_filestat_set_times",): ((I32, I64, I64, I32), (I32,)),
    ("fd_pread", "fd_readdir"): ((I32, I32, I32, I64, I32), (I32,)),
    ("fd_prestat_dir_name", "path_create_directory", "path_remove_directory",
     "path_unlink_file", "sock_accept"): ((I32, I32, I32), (I32,)),
    ("path_open",): ((I32, I32, I32, I32, I32, I64, I64, I32, I32), (I32,)),
    ("path_filestat_get", "sock_send"): ((I32,) * 5, (I32,)),
    ("path_filestat_set_times",): ((I32, I32, I32, I32, I64, I64, I32), (I32,)),
    # path_link and path_symlink as Envoy declares them: one parameter short of WASI's, so a
    # module importing WASI's path_link (7) or path_symlink (5) does not load in Envoy
    ("path_link", "path_readlink", "path_rename", "sock_recv"): ((I32,) * 6, (I32,)),
    ("path_symlink",): ((I32,) * 4, (I32,)),
}
"""The WASI calls of proxy-wasm SDKs (Go's standard toolchain imports most of them), grouped by
signature."""
WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")
CONTEXT_FREE = frozenset({
    "pthread_equal", "emscripten_notify_memory_growth", "args_get", "sched_yield",
    "fd_read", "fd_pread", "fd_advise", "fd_allocate", "fd_datasync", "fd_sync",
    "fd_fdstat_set_flags", "fd_fdstat_set_rights", "fd_filestat_set_size",
    "fd_filestat_set_times", "fd_renumber", "fd_prestat_get", "fd_prestat_dir_name",
    "fd_filestat_get", "path_open", "path_filestat_get", "path_create_directory",
    "path_filestat_set_times", "path_link", "path_remove_directory", "path_rename",
    "path_symlink", "path_unlink_file", "sock_shutdown"})
"""Host functions Envoy answers without looking at the calling context: the only ones a
module's start function can call (any other crashes Envoy, which has no context then)."""
ENV_EXTRAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # what Emscripten-built modules import
    "emscripten_notify_memory_growth": ((I32,), ()),
    "pthread_equal": ((I32, I32), (I32,)),
}


def serialize_map(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Header pairs in the ABI's form: count, each name and value size, then each name and
    value followed by a NUL (sizes are little-endian u32 and exclude the NUL)."""
    items = list(pairs)
    sizes = b"".join(struct.pack("<II", len(k), len(v)) for k, v in items)
    data = b"".join(k + b"\0" + v + b"\0" for k, v in items)
    return struct.pack("<I", len(items)) + sizes + data


def deserialize_map(data: bytes) -> list[tuple[bytes, bytes]]:
    """The inverse of :func:`serialize_map`, as strict as Envoy: every name and value ends
    with a NUL and the sizes add up to the whole buffer; ValueError otherwise."""
    if len(data) < 4:
        if data:
            raise ValueError("a header map shorter than its count")
        return []
    (count,) = struct.unpack_from("<I", data)
    at = 4 + 8 * count
    if at > len(data):
        raise ValueError(f"a header map of {count} pairs has no room for their sizes")
    pairs = []
    for index in range(count):
        key_size, value_size = struct.unpack_from("<II", data, 4 + 8 * index)
        end = at + key_size + 1 + value_size + 1
        if end > len(data):
            raise ValueError("a header map's pairs run past its end")
        if data[at + key_size] != 0 or data[end - 1] != 0:
            raise ValueError("a header map's name or value does not end with a NUL")
        pairs.append((data[at:at + key_size], data[at + key_size + 1:end - 1]))
        at = end
    if at != len(data):
        raise ValueError("a header map has bytes past its last pair")
    return pairs


Signature = tuple[tuple[str, ...], tuple[str, ...]]

SUPPORTED_ABIS = ("0_2_0", "0_2_1")
"""The ABI versions the emulator (and Envoy) speak."""


def supported_abi(versions: Iterable[str]) -> str | None:
    """The newest of ``versions`` the emulator speaks, or None."""
    found = [v for v in versions if v in SUPPORTED_ABIS]
    return found[-1] if found else None


def import_signatures(abi: str = "0_2_1") -> dict[tuple[str, str], Signature]:
    """(module, name) -> (params, results) of every import the emulator gives a module of
    ``abi``, as Envoy gives them."""
    found = {("env", n): sig for n, sig in HOST_FUNCTIONS.items()
             if abi == "0_2_1" or n not in ONLY_0_2_1}
    found.update({("env", n): sig for n, sig in ENV_EXTRAS.items()})
    found.update({(m, n): sig for m in WASI_MODULES for names, sig in WASI_FUNCTIONS.items()
                  for n in names})
    return found

