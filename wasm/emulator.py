"""A proxy-wasm host on wasmtime: run a filter's callbacks from Python, no Envoy needed.

    from wasm.emulator import ProxyWasm

    def test_tags_responses():
        with ProxyWasm("build/filter.wasm", plugin_configuration="tagged") as plugin:
            result = plugin.request(path="/", headers={"x-user": "ada"})
        assert result.response_header("x-filter") == "tagged"

Any module speaking ABI 0.2.0 or 0.2.1 (Rust, Go, C++, AssemblyScript, WAT) loads; its imports
are checked at load time, so one the emulator does not provide is named then, not trapped on
later. Each callback runs with a fuel budget (a loop fails the call instead of hanging the
test) and the store has a memory limit. HTTP exchanges follow Envoy's order: request headers,
body chunks (buffered while the filter asks), trailers, the upstream's answer, response
phases; a local response is sent back through the filter's own response callbacks, as
Envoy's local replies are.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime

from .abi import (
    BODY_ACTIONS,
    HEADER_ACTIONS,
    LogLevel,
    MapType,
    MetricType,
    Status,
    serialize_map,
)
from .errors import HostError, MissingImports, UnsupportedAbi, WasmTrap
from .imports import HostFunctions
from .module import ABI_PREFIX

__all__ = ["Action", "HttpContext", "HttpResult", "LocalResponse", "LogLine", "ProxyWasm"]

SUPPORTED_ABIS = ("0_2_0", "0_2_1")
DEFAULT_FUEL = 500_000_000
"""Wasm instructions one callback may run (roughly a second of work)."""
DEFAULT_MEMORY_LIMIT = 256 * 1024 * 1024
ROOT_CONTEXT_ID = 1

Pairs = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True)
class LogLine:
    level: LogLevel
    message: str
    context_id: int


@dataclass(frozen=True)
class Action:
    """What a callback answered: the raw value and its name for that phase."""

    value: int
    name: str

    @property
    def continues(self) -> bool:
        return self.value == 0


@dataclass
class LocalResponse:
    status: int
    body: bytes
    headers: list[tuple[str, str]]
    details: str
    grpc_status: int | None = None


def _pairs(values: Pairs | None) -> list[tuple[bytes, bytes]]:
    items = values.items() if isinstance(values, Mapping) else (values or ())
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in items]


def _text(pairs: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in pairs]


@dataclass
class HttpResult:
    """One request through the filter, as the upstream and the client saw it."""

    request_headers: list[tuple[str, str]]
    """What the upstream received (empty when the filter answered first)."""
    request_body: bytes
    response_headers: list[tuple[str, str]]
    """What the client received (the local response's, after the filter's response callback)."""
    response_body: bytes
    request_trailers: list[tuple[str, str]] | None = None
    response_trailers: list[tuple[str, str]] | None = None
    local_response: LocalResponse | None = None
    upstream_reached: bool = False
    actions: list[tuple[str, Action]] = field(default_factory=list)
    """Each callback and what it answered, in order."""
    paused: str | None = None
    """The phase where the filter paused without continuing (Envoy would wait there)."""
    logs: list[LogLine] = field(default_factory=list)
    """Log lines of this request's context."""

    @property
    def status(self) -> int:
        return int(self.response_header(":status") or 0)

    def request_header(self, name: str) -> str | None:
        return _first(self.request_headers, name)

    def response_header(self, name: str) -> str | None:
        return _first(self.response_headers, name)


def _first(pairs: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in pairs if k == name.lower()), None)


class _Metrics:
    def __init__(self) -> None:
        self.kinds: dict[int, MetricType] = {}
        self.names: dict[str, int] = {}
        self.values: dict[int, int] = {}
        self.samples: dict[int, list[int]] = {}

    def define(self, kind: MetricType, name: str) -> int:
        if name not in self.names:
            metric_id = len(self.names) + 1
            self.names[name], self.kinds[metric_id] = metric_id, kind
            self.values[metric_id], self.samples[metric_id] = 0, []
        return self.names[name]

    def increment(self, metric_id: int, offset: int) -> int:
        kind = self.kinds.get(metric_id)
        if kind is None:
            return Status.NOT_FOUND
        if kind == MetricType.HISTOGRAM or (kind == MetricType.COUNTER and offset < 0):
            return Status.BAD_ARGUMENT
        self.values[metric_id] += offset
        return Status.OK

    def record(self, metric_id: int, value: int) -> int:
        kind = self.kinds.get(metric_id)
        if kind is None:
            return Status.NOT_FOUND
        if kind == MetricType.HISTOGRAM:
            self.samples[metric_id].append(value)
        else:
            self.values[metric_id] = value
        return Status.OK

    def value_of(self, metric_id: int) -> int | None:
        if metric_id not in self.kinds:
            return None
        if self.kinds[metric_id] == MetricType.HISTOGRAM:
            return None  # Envoy keeps no single value for a histogram
        return self.values[metric_id]

    def snapshot(self) -> dict[str, int | list[int]]:
        return {name: (self.samples[i] if self.kinds[i] == MetricType.HISTOGRAM
                       else self.values[i]) for name, i in self.names.items()}


class HttpContext:
    """One HTTP stream inside the filter; call the phases in order, or use
    :meth:`ProxyWasm.request` for a whole exchange."""

    def __init__(self, host: ProxyWasm, context_id: int) -> None:
        self.host = host
        self.context_id = context_id
        self.maps: dict[MapType, list[tuple[bytes, bytes]]] = {}
        self.buffers: dict[str, bytes] = {}
        self.local_response: LocalResponse | None = None
        self.continued: set[str] = set()
        self.closed = False
        self.route_cache_cleared = False
        self.properties: dict[str, bytes] = {}
        self.actions: list[tuple[str, Action]] = []

    def send_local_response(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                            details: str, grpc_status: int | None) -> None:
        self.local_response = LocalResponse(status, body, _text(headers), details, grpc_status)

    def _call(self, callback: str, *args: int, body: bool = False) -> Action:
        value = self.host.call(callback, self.context_id, *args)
        value = 0 if value is None else value
        action = Action(value, (BODY_ACTIONS if body else HEADER_ACTIONS).get(value, "Unknown"))
        self.actions.append((callback.removeprefix("proxy_on_"), action))
        return action

    def on_request_headers(self, headers: Pairs, end_of_stream: bool = True) -> Action:
        self.maps[MapType.REQUEST_HEADERS] = _pairs(headers)
        return self._call("proxy_on_request_headers", len(self.maps[MapType.REQUEST_HEADERS]),
                          int(end_of_stream))

    def on_request_body(self, chunk: bytes, end_of_stream: bool) -> Action:
        self.buffers["request"] = self.buffers.get("request", b"") + chunk
        return self._call("proxy_on_request_body", len(self.buffers["request"]),
                          int(end_of_stream), body=True)

    def on_request_trailers(self, trailers: Pairs) -> Action:
        self.maps[MapType.REQUEST_TRAILERS] = _pairs(trailers)
        return self._call("proxy_on_request_trailers",
                          len(self.maps[MapType.REQUEST_TRAILERS]))

    def on_response_headers(self, headers: Pairs, end_of_stream: bool = True) -> Action:
        self.maps[MapType.RESPONSE_HEADERS] = _pairs(headers)
        return self._call("proxy_on_response_headers",
                          len(self.maps[MapType.RESPONSE_HEADERS]), int(end_of_stream))

    def on_response_body(self, chunk: bytes, end_of_stream: bool) -> Action:
        self.buffers["response"] = self.buffers.get("response", b"") + chunk
        return self._call("proxy_on_response_body", len(self.buffers["response"]),
                          int(end_of_stream), body=True)

    def on_response_trailers(self, trailers: Pairs) -> Action:
        self.maps[MapType.RESPONSE_TRAILERS] = _pairs(trailers)
        return self._call("proxy_on_response_trailers",
                          len(self.maps[MapType.RESPONSE_TRAILERS]))

    def take_body(self, direction: str) -> bytes:
        """What the filter lets through of the buffered body (and empties the buffer)."""
        return self.buffers.pop(direction, b"")

    def headers(self, kind: MapType) -> list[tuple[str, str]]:
        return _text(self.maps.get(kind, []))

    def finish(self) -> None:
        """``proxy_on_done``, ``proxy_on_log``, ``proxy_on_delete``: the stream is over."""
        for callback in ("proxy_on_done", "proxy_on_log", "proxy_on_delete"):
            if self.host.has(callback):
                self.host.call(callback, self.context_id)


Upstream = Callable[[list[tuple[str, str]], bytes],
                    tuple[int, Pairs, "bytes | Sequence[bytes]"]]


class ProxyWasm:
    """A loaded filter: its VM, root context and plugin configuration, ready for requests."""

    def __init__(self, module: bytes | bytearray | str | os.PathLike[str], *,
                 plugin_configuration: bytes | str = b"", vm_configuration: bytes | str = b"",
                 root_id: str = "", plugin_name: str = "plugin", vm_id: str = "",
                 properties: Mapping[str, str | int | bytes] | None = None,
                 fuel: int | None = DEFAULT_FUEL,
                 memory_limit: int = DEFAULT_MEMORY_LIMIT,
                 log_level: LogLevel = LogLevel.TRACE,
                 clock: Callable[[], int] = time.time_ns,
                 start: bool = True) -> None:
        data = (bytes(module) if isinstance(module, (bytes, bytearray))
                else Path(module).read_bytes())
        self.plugin_configuration = (plugin_configuration.encode()
                                     if isinstance(plugin_configuration, str)
                                     else plugin_configuration)
        self.vm_configuration = (vm_configuration.encode() if isinstance(vm_configuration, str)
                                 else vm_configuration)
        self.root_id, self.plugin_name, self.vm_id = root_id, plugin_name, vm_id
        self.properties = {k: _encode_property(v) for k, v in (properties or {}).items()}
        self.fuel, self.log_level, self.clock = fuel, log_level, clock
        self.logs: list[LogLine] = []
        self.shared_data: dict[bytes, tuple[bytes, int]] = {}
        self.metrics = _Metrics()
        self.tick_period_ms = 0
        self.http: HttpContext | None = None
        self.current_callback = ""
        self._context_id = ROOT_CONTEXT_ID
        self._ids = itertools.count(ROOT_CONTEXT_ID + 1)
        self._contexts: dict[int, HttpContext] = {}
        self._broken: str | None = None

        config = wasmtime.Config()
        config.consume_fuel = fuel is not None
        self._engine = wasmtime.Engine(config)
        try:
            self._module = wasmtime.Module(self._engine, data)
        except wasmtime.WasmtimeError as exc:
            from .errors import InvalidModule

            raise InvalidModule(f"wasmtime rejects the module: {exc}") from None
        self.abi = _abi_of(self._module)
        self._store = wasmtime.Store(self._engine)
        self._store.set_limits(memory_size=memory_limit)
        self._set_fuel()
        linker = wasmtime.Linker(self._engine)
        functions = HostFunctions(self).table()
        missing = []
        for item in self._module.imports:
            key = (item.module, item.name or "")
            if not isinstance(item.type, wasmtime.FuncType) or key not in functions:
                missing.append(f"{item.module}.{item.name}")
                continue
            linker.define_func(item.module, item.name or "", item.type,
                               _guard(self, functions[key], key[1]))
        if missing:
            raise MissingImports(f"the module imports what the emulator does not provide: "
                                 f"{', '.join(missing)}", tuple(missing))
        try:
            self._instance = linker.instantiate(self._store, self._module)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise WasmTrap(f"instantiating the module failed: {_first_line(exc)}",
                           "instantiate") from None
        self._exports = self._instance.exports(self._store)
        self._functions = {name: item for name, item in self._exports.items()
                           if isinstance(item, wasmtime.Func)}
        self._view: tuple[int, int] | None = None
        memory = self._exports.get("memory") if "memory" in self._exports else None
        if not isinstance(memory, wasmtime.Memory):
            raise UnsupportedAbi("the module exports no memory named 'memory'")
        self._memory = memory
        self._allocator = next((n for n in ("proxy_on_memory_allocate", "malloc")
                                if self.has(n)), None)
        if start:
            self.start()

    # lifecycle

    def start(self) -> bool:
        """``_initialize``/``_start``, the root context, ``proxy_on_vm_start`` and
        ``proxy_on_configure``; False when the module refuses its configuration."""
        for name in ("_initialize", "_start"):
            if self.has(name):
                self.call(name)
                break
        self.call("proxy_on_context_create", ROOT_CONTEXT_ID, 0)
        started = self.call("proxy_on_vm_start", ROOT_CONTEXT_ID, len(self.vm_configuration))
        configured = self.call("proxy_on_configure", ROOT_CONTEXT_ID,
                               len(self.plugin_configuration))
        return bool(started) and bool(configured)

    def close(self) -> None:
        if self.has("proxy_on_done") and self._broken is None:
            self.call("proxy_on_done", ROOT_CONTEXT_ID)

    def __enter__(self) -> ProxyWasm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            self.close()

    def tick(self) -> None:
        """Fire the timer the filter set with ``proxy_set_tick_period_milliseconds``."""
        self.call("proxy_on_tick", ROOT_CONTEXT_ID)

    # calling into the module

    def has(self, name: str) -> bool:
        return name in self._functions

    def call(self, name: str, *args: int) -> int | None:
        """Call an export; a top-level call gets the fuel budget (calls the host makes while it
        runs, such as allocations, spend from it). A trap becomes a WasmTrap naming it."""
        if self._broken is not None:
            raise WasmTrap(f"the plugin is unusable after {self._broken} trapped", name)
        function = self._functions.get(name)
        if function is None:
            return None
        outer, self.current_callback = self.current_callback, name
        try:
            if outer:  # the host calling in (an allocation) while a callback runs: its
                # budget and its trap, reported for the callback
                result = function(self._store, *args)
            else:
                self._set_fuel()
                result = self._top_level(name, function, args)
        finally:
            self.current_callback = outer
            self._view = None  # the module ran: its memory may have grown or moved
        return int(result) if isinstance(result, int) else None

    def _top_level(self, name: str, function: wasmtime.Func, args: tuple[int, ...]) -> Any:
        try:
            return function(self._store, *args)
        except HostError:
            self._broken = name
            raise
        except wasmtime.Trap as exc:
            self._broken = name
            exhausted = "all fuel consumed" in str(exc)
            reason = (f"ran out of fuel after {self.fuel} instructions (a loop?); raise "
                      "fuel= if it needs more" if exhausted else _first_line(exc))
            raise WasmTrap(f"{name} trapped: {reason}", name, exhausted) from None

    def _set_fuel(self) -> None:
        if self.fuel is not None:
            self._store.set_fuel(self.fuel)

    # memory, for the host functions (through one raw view per host call: the wasmtime
    # accessors cost a foreign call each)

    def _memory_view(self) -> tuple[int, int]:
        if self._view is None:
            length = int(self._memory.data_len(self._store))
            base = ctypes.addressof(self._memory.data_ptr(self._store).contents) if length else 0
            self._view = (base, length)
        return self._view

    def memory_size(self) -> int:
        return self._memory_view()[1]

    def memory_read(self, ptr: int, size: int) -> bytes:
        """``size`` bytes at ``ptr``; the caller has checked the bounds."""
        return ctypes.string_at(self._memory_view()[0] + ptr, size)

    def memory_write(self, ptr: int, data: bytes) -> None:
        """``data`` at ``ptr``; the caller has checked the bounds."""
        ctypes.memmove(self._memory_view()[0] + ptr, data, len(data))

    def host_call_starts(self) -> None:
        self._view = None  # the module ran since the last host call

    def allocate(self, size: int) -> int:
        from .errors import MemoryAccess

        if self._allocator is None:
            raise MemoryAccess("the module exports neither proxy_on_memory_allocate nor "
                               "malloc: the host cannot hand it any data")
        address = self.call(self._allocator, size) or 0
        if address == 0 or address + size > self.memory_size():
            raise MemoryAccess(f"{self._allocator}({size}) returned {address}, not memory "
                               f"the module has ({self.memory_size()} bytes)")
        return address

    # state the host functions use

    def log(self, level: LogLevel, message: str) -> None:
        self.logs.append(LogLine(level, message, self._context_id))

    def set_effective_context(self, context_id: int) -> bool:
        if context_id != ROOT_CONTEXT_ID and context_id not in self._contexts:
            return False
        self._context_id = context_id
        self.http = self._contexts.get(context_id)
        return True

    def property(self, path: str) -> bytes | None:
        context = self.http
        if context is not None and path in context.properties:
            return context.properties[path]
        if path in self.properties:
            return self.properties[path]
        fixed = {"plugin_root_id": self.root_id, "plugin_name": self.plugin_name,
                 "plugin_vm_id": self.vm_id}
        if path in fixed:
            return fixed[path].encode()
        if context is None:
            return None
        request = dict(context.headers(MapType.REQUEST_HEADERS))
        response = dict(context.headers(MapType.RESPONSE_HEADERS))
        derived: dict[str, Any] = {
            "request.path": request.get(":path"),
            "request.url_path": (request.get(":path") or "").split("?")[0] or None,
            "request.host": request.get(":authority"),
            "request.scheme": request.get(":scheme"),
            "request.method": request.get(":method"),
            "request.id": request.get("x-request-id"),
            "request.protocol": "HTTP/1.1",
            "request.headers": serialize_map(context.maps.get(MapType.REQUEST_HEADERS, [])),
            "response.code": int(response[":status"]) if ":status" in response else None,
            "response.headers": (serialize_map(context.maps[MapType.RESPONSE_HEADERS])
                                 if MapType.RESPONSE_HEADERS in context.maps else None),
            "source.address": "127.0.0.1:40000", "source.port": 40000,
            "destination.address": "127.0.0.1:10000", "destination.port": 10000,
        }
        value = derived.get(path)
        return None if value is None else _encode_property(value)

    def set_property(self, path: str, value: bytes) -> None:
        if self.http is not None:
            self.http.properties[path] = value
        else:
            self.properties[path] = value

    # HTTP

    def http_context(self) -> HttpContext:
        """A new HTTP stream (``proxy_on_context_create``), made the current context."""
        context_id = next(self._ids)
        context = HttpContext(self, context_id)
        self._contexts[context_id] = context
        self.set_effective_context(ROOT_CONTEXT_ID)
        self.call("proxy_on_context_create", context_id, ROOT_CONTEXT_ID)
        self.set_effective_context(context_id)
        return context

    def request(self, *, method: str = "GET", path: str = "/", authority: str = "example.com",
                headers: Pairs | None = None, body: bytes | Sequence[bytes] = b"",
                trailers: Pairs | None = None, upstream: Upstream | None = None,
                status: int = 200, response_headers: Pairs | None = None,
                response_body: bytes | Sequence[bytes] = b"",
                response_trailers: Pairs | None = None) -> HttpResult:
        """One whole exchange through the filter, in Envoy's order.

        The upstream answers ``status``/``response_headers``/``response_body`` (chunks: a list),
        or ``upstream(headers, body) -> (status, headers, body)`` decides from what it got.
        """
        context = self.http_context()
        first = len(self.logs)
        try:
            result = self._exchange(context, method, path, authority, headers,
                                    _chunks(body), trailers, upstream, status,
                                    response_headers, _chunks(response_body),
                                    response_trailers)
        finally:
            if self._broken is None:
                context.finish()
            self.set_effective_context(ROOT_CONTEXT_ID)
            self._contexts.pop(context.context_id, None)
        result.actions = context.actions
        result.logs = [line for line in self.logs[first:]
                       if line.context_id == context.context_id]
        return result

    def _exchange(self, context: HttpContext, method: str, path: str, authority: str,
                  headers: Pairs | None, chunks: list[bytes], trailers: Pairs | None,
                  upstream: Upstream | None, status: int, response_headers: Pairs | None,
                  response_chunks: list[bytes], response_trailers: Pairs | None) -> HttpResult:
        request = [(":authority", authority), (":path", path), (":method", method),
                   (":scheme", "http"), *(_text(_pairs(headers)))]
        result = HttpResult([], b"", [], b"")
        # request
        action = context.on_request_headers(request, not chunks and trailers is None)
        if context.local_response is not None:
            return self._local_reply(context, result)
        if not action.continues and "request" not in context.continued:
            result.paused = "request_headers"
            return result
        sent, paused = self._body(context, "request", chunks, trailers is None)
        if context.local_response is not None:
            return self._local_reply(context, result)
        if paused:
            result.paused = "request_body"
            return result
        if trailers is not None:
            context.on_request_trailers(trailers)
            result.request_trailers = context.headers(MapType.REQUEST_TRAILERS)
            if context.local_response is not None:
                return self._local_reply(context, result)
        result.request_headers = context.headers(MapType.REQUEST_HEADERS)
        result.request_body = sent
        result.upstream_reached = True
        # the upstream
        if upstream is not None:
            status, response_headers, answer = upstream(result.request_headers, sent)
            response_chunks = _chunks(answer)
        response = [(":status", str(status)), *(_text(_pairs(response_headers)))]
        # response
        action = context.on_response_headers(response,
                                             not response_chunks and response_trailers is None)
        if context.local_response is not None:
            return self._local_reply(context, result, run_filter=False)
        if not action.continues and "response" not in context.continued:
            result.paused = "response_headers"
            return result
        received, paused = self._body(context, "response", response_chunks,
                                      response_trailers is None)
        if context.local_response is not None:
            return self._local_reply(context, result, run_filter=False)
        if paused:
            result.paused = "response_body"
            return result
        if response_trailers is not None:
            context.on_response_trailers(response_trailers)
            result.response_trailers = context.headers(MapType.RESPONSE_TRAILERS)
        result.response_headers = context.headers(MapType.RESPONSE_HEADERS)
        result.response_body = received
        return result

    def _body(self, context: HttpContext, direction: str, chunks: list[bytes],
              ends: bool) -> tuple[bytes, bool]:
        """Send body chunks; a stop buffers them for the next call, as Envoy does."""
        on_body = (context.on_request_body if direction == "request"
                   else context.on_response_body)
        passed = b""
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1 and ends
            action = on_body(chunk, last)
            if context.local_response is not None:
                return passed, False
            if action.continues or direction in context.continued:
                passed += context.take_body(direction)
            elif last:
                return passed, True
        if not chunks:
            return b"", False
        return passed + context.take_body(direction), False

    def _local_reply(self, context: HttpContext, result: HttpResult,
                     run_filter: bool = True) -> HttpResult:
        local = context.local_response
        assert local is not None
        result.local_response = local
        headers = [(":status", str(local.status)), *local.headers]
        if local.body:
            headers += [("content-length", str(len(local.body))),
                        ("content-type", "text/plain")]
        if run_filter:  # Envoy sends its local replies through the filter's response path
            context.local_response = None
            context.on_response_headers(headers, not local.body)
            if local.body:
                context.on_response_body(local.body, True)
                body = context.take_body("response")
            else:
                body = b""
            context.local_response = local
            result.response_headers = context.headers(MapType.RESPONSE_HEADERS)
            result.response_body = body
        else:
            result.response_headers, result.response_body = headers, local.body
        return result


def _chunks(body: bytes | Sequence[bytes]) -> list[bytes]:
    if isinstance(body, bytes):
        return [body] if body else []
    return [c for c in body]


def _encode_property(value: str | int | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        return str(value).encode()
    return struct.pack("<q", value)


def _abi_of(module: wasmtime.Module) -> str:
    versions = [e.name.removeprefix(ABI_PREFIX) for e in module.exports
                if e.name.startswith(ABI_PREFIX)]
    supported = [v for v in versions if v in SUPPORTED_ABIS]
    if supported:
        return supported[-1]
    if versions:
        raise UnsupportedAbi(f"proxy-wasm ABI {', '.join(versions)} is not supported; the "
                             f"emulator speaks {', '.join(SUPPORTED_ABIS)} (Envoy too)")
    raise UnsupportedAbi("not a proxy-wasm module: it exports no proxy_abi_version_* function")


def _guard(host: ProxyWasm, function: Callable[..., Any], name: str) -> Callable[..., Any]:
    """Host functions get plain ints; results are ints (or nothing)."""
    def call(*args: Any) -> Any:
        host.host_call_starts()
        result = function(*args)
        return int(result) if result is not None else None
    call.__name__ = name
    return call


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    caused = text.split("Caused by:")[-1].strip() if "Caused by:" in text else text
    return caused.splitlines()[0] if caused else type(exc).__name__
