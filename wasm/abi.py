"""The proxy-wasm ABI (0.1.0, 0.2.0, 0.2.1) as the host sees it: enumerations, the host
functions the emulator implements and the callbacks it calls (with their wasm signatures, as
Envoy 1.40 declares them), and the header-map wire format."""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Mapping
from enum import IntEnum
from types import MappingProxyType


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
    # ABI 0.1.0 only: 0.2.0 replaced them with proxy_continue_stream and the configuration
    # buffers, and dropped proxy_clear_route_cache
    "proxy_get_configuration": ((I32, I32), (I32,)),
    "proxy_continue_request": ((), (I32,)),
    "proxy_continue_response": ((), (I32,)),
    "proxy_clear_route_cache": ((), (I32,)),
}
"""The host functions the emulator implements; which an ABI gets, as in Envoy: see
:func:`import_signatures`."""
ONLY_0_1_0 = frozenset({"proxy_get_configuration", "proxy_continue_request",
                        "proxy_continue_response", "proxy_clear_route_cache"})
SINCE_0_2_0 = frozenset({"proxy_continue_stream", "proxy_close_stream"})
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

SUPPORTED_ABIS = ("0_1_0", "0_2_0", "0_2_1")
"""The ABI versions the emulator (and Envoy 1.40) speak."""


def supported_abi(versions: Iterable[str]) -> str | None:
    """The first of ``versions`` (the module's exports, in order) the emulator speaks, or
    None: Envoy goes by the first ``proxy_abi_version_*`` export it knows."""
    return next((v for v in versions if v in SUPPORTED_ABIS), None)


def _offered(name: str, abi: str) -> bool:
    if name in ONLY_0_1_0:
        return abi == "0_1_0"
    if name in SINCE_0_2_0:
        return abi != "0_1_0"
    return abi == "0_2_1" or name not in ONLY_0_2_1


@functools.cache
def import_signatures(abi: str = "0_2_1") -> Mapping[tuple[str, str], Signature]:
    """(module, name) -> (params, results) of every import the emulator gives a module of
    ``abi``, as Envoy gives them (one mapping per ABI, read-only)."""
    found = {("env", n): sig for n, sig in HOST_FUNCTIONS.items() if _offered(n, abi)}
    found.update({("env", n): sig for n, sig in ENV_EXTRAS.items()})
    found.update({(m, n): sig for m in WASI_MODULES for names, sig in WASI_FUNCTIONS.items()
                  for n in names})
    return MappingProxyType(found)



_WORD = (I32,)
CALLBACKS: dict[str, Signature] = {
    "_initialize": ((), ()), "_start": ((), ()), "main": ((I32, I32), _WORD),
    "__main_void": ((), _WORD), "malloc": ((I32,), _WORD),
    "proxy_on_memory_allocate": ((I32,), _WORD),
    "proxy_validate_configuration": ((I32, I32), _WORD),
    "proxy_on_vm_start": ((I32, I32), _WORD), "proxy_on_configure": ((I32, I32), _WORD),
    "proxy_on_tick": ((I32,), ()), "proxy_on_context_create": ((I32, I32), ()),
    "proxy_on_new_connection": ((I32,), _WORD),
    "proxy_on_downstream_data": ((I32, I32, I32), _WORD),
    "proxy_on_upstream_data": ((I32, I32, I32), _WORD),
    "proxy_on_downstream_connection_close": ((I32, I32), ()),
    "proxy_on_upstream_connection_close": ((I32, I32), ()),
    "proxy_on_request_headers": ((I32, I32, I32), _WORD),
    "proxy_on_request_body": ((I32, I32, I32), _WORD),
    "proxy_on_request_trailers": ((I32, I32), _WORD),
    "proxy_on_request_metadata": ((I32, I32), _WORD),
    "proxy_on_response_headers": ((I32, I32, I32), _WORD),
    "proxy_on_response_body": ((I32, I32, I32), _WORD),
    "proxy_on_response_trailers": ((I32, I32), _WORD),
    "proxy_on_response_metadata": ((I32, I32), _WORD),
    "proxy_on_http_call_response": ((I32,) * 5, ()),
    "proxy_on_grpc_receive": ((I32, I32, I32), ()),
    "proxy_on_grpc_close": ((I32, I32, I32), ()),
    "proxy_on_grpc_receive_initial_metadata": ((I32, I32, I32), ()),
    "proxy_on_grpc_receive_trailing_metadata": ((I32, I32, I32), ()),
    "proxy_on_queue_ready": ((I32, I32), ()),
    "proxy_on_foreign_function": ((I32, I32, I32), ()),
    "proxy_on_done": ((I32,), _WORD), "proxy_on_log": ((I32,), ()),
    "proxy_on_delete": ((I32,), ()),
}
"""Every export Envoy looks for, with the signature it requires (it refuses the module when
one has another)."""
HEADERS_CALLBACKS = ("proxy_on_request_headers", "proxy_on_response_headers")
"""The callbacks ABI 0.1.0 calls without end_of_stream."""


def callback_signatures(abi: str, exported: Iterable[str]) -> dict[str, Signature]:
    """name -> signature of the exports among ``exported`` that Envoy looks for in a module of
    ``abi`` (and so checks): main or __main_void only next to _initialize, _start only without
    it, proxy_on_memory_allocate only without malloc, proxy_on_foreign_function from 0.2.0."""
    names = set(exported)
    found = {n: sig for n, sig in CALLBACKS.items() if n in names}
    if "_initialize" in names:
        found.pop("_start", None)
    else:
        found.pop("main", None)
        found.pop("__main_void", None)
    if "malloc" in names:
        found.pop("proxy_on_memory_allocate", None)
    if abi == "0_1_0":
        found.pop("proxy_on_foreign_function", None)
        for name in HEADERS_CALLBACKS:
            if name in found:
                found[name] = ((I32, I32), _WORD)
    return found
