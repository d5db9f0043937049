"""A proxy-wasm host on wasmtime: run a filter's callbacks from Python, no Envoy needed.

    from wasm import ProxyWasm

    def test_tags_responses():
        with ProxyWasm("build/filter.wasm", plugin_configuration="tagged") as plugin:
            result = plugin.request(path="/", headers={"x-user": "ada"})
        assert result.response_header("x-filter") == "tagged"

Any module speaking ABI 0.2.0 or 0.2.1 (Rust, Go, C++, AssemblyScript, WAT) loads; its imports
are checked at load time (names and signatures), so one the emulator does not provide is named
then, not trapped on later. Each callback runs with a fuel budget (a loop fails the call
instead of hanging the test) and the store has a memory limit. The host answers as Envoy's
does (proxy-wasm-cpp-host and Envoy's wasm context): which maps and buffers exist in which
callback, header-map rules, statuses; see :mod:`wasm.imports` for the one deliberate
difference.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from .abi import (
    BODY_ACTIONS,
    HEADER_ACTIONS,
    SUPPORTED_ABIS,
    LogLevel,
    MapType,
    import_signatures,
    serialize_map,
    supported_abi,
)
from .errors import (
    HostError,
    InvalidModule,
    MemoryAccess,
    MissingImports,
    StartFailed,
    UnsupportedAbi,
    WasmTrap,
)
from .exchange import (
    HttpResult,
    LocalResponse,
    Pairs,
    Request,
    Upstream,
    chunks_of,
    pairs_of,
    run,
)
from .headers import HeaderMap
from .imports import HostFunctions
from .module import ABI_PREFIX, import_problems
from .state import Metrics, SharedData

__all__ = ["Action", "HttpContext", "LogLine", "ProxyWasm"]

DEFAULT_FUEL = 500_000_000
"""Wasm instructions one callback may run (roughly a second of work)."""
DEFAULT_MEMORY_LIMIT = 256 * 1024 * 1024
ROOT_CONTEXT_ID = 1


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
    continues: bool


def _encode(pairs: Sequence[tuple[str, str | bytes]]) -> list[tuple[bytes, bytes]]:
    """Values as ``str`` (latin-1, or UTF-8 beyond it) or ``bytes``."""
    return [(k.encode("latin-1"), v if isinstance(v, bytes) else _text_bytes(v))
            for k, v in pairs]


def _text_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


class HttpContext:
    """One HTTP stream inside the filter. Envoy lends the filter a header map only during the
    callback for it (and, read-only, during ``proxy_on_log``); so does the emulator."""

    def __init__(self, host: ProxyWasm, context_id: int) -> None:
        self.host = host
        self.context_id = context_id
        self.maps: dict[MapType, HeaderMap] = {}
        self.live: set[MapType] = set()
        self.logging = False
        self.buffers = {"request": b"", "response": b""}
        self.held = {"request": b"", "response": b""}
        self.local_response: LocalResponse | None = None
        self.continued: set[str] = set()
        self.reset = False
        self.finishing = False
        self.response_started = False
        self.response_code: int | None = None
        self.filter_state: dict[bytes, bytes] = {}
        self.actions: list[tuple[str, Action]] = []

    def map_for(self, kind: MapType, write: bool) -> HeaderMap | None:
        if kind in self.live or (self.logging and not write):
            return self.maps.get(kind)
        return None

    def send_local_response(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                            details: str, grpc_status: int | None) -> None:
        self.local_response = LocalResponse(status, body, HeaderMap(headers).text(), details,
                                            grpc_status)

    def _call(self, callback: str, lends: MapType | None, *args: int) -> Action:
        if lends is not None:
            self.live.add(lends)
        try:
            value = self.host.call(callback, self.context_id, *args)
        finally:
            self.live.clear()
        value = 0 if value is None else value
        body = callback.endswith("_body")
        # Envoy takes a headers answer of 2 (ContinueAndEndStream) as Continue.
        continues = value == 0 or (not body and value == 2)
        action = Action(value, (BODY_ACTIONS if body else HEADER_ACTIONS).get(value, "Unknown"),
                        continues)
        self.actions.append((callback.removeprefix("proxy_on_"), action))
        return action

    def _map_phase(self, callback: str, kind: MapType, pairs: Pairs, *flags: bool) -> Action:
        """A headers or trailers callback: the map is lent to the filter while it runs."""
        self.maps[kind] = HeaderMap(_encode(pairs_of(pairs)))
        return self._call(callback, kind, len(self.maps[kind].pairs), *map(int, flags))

    def _body_phase(self, direction: str, chunk: bytes, end_of_stream: bool) -> Action:
        self.buffers[direction] += chunk
        return self._call(f"proxy_on_{direction}_body", None, len(self.buffers[direction]),
                          int(end_of_stream))

    def on_request_headers(self, headers: Pairs, end_of_stream: bool = True) -> Action:
        return self._map_phase("proxy_on_request_headers", MapType.REQUEST_HEADERS, headers,
                               end_of_stream)

    def on_request_body(self, chunk: bytes, end_of_stream: bool) -> Action:
        return self._body_phase("request", chunk, end_of_stream)

    def on_request_trailers(self, trailers: Pairs) -> Action:
        return self._map_phase("proxy_on_request_trailers", MapType.REQUEST_TRAILERS, trailers)

    def on_response_headers(self, headers: Pairs, end_of_stream: bool = True) -> Action:
        self.response_started = True
        pairs = pairs_of(headers)  # once: ``headers`` may be an iterator
        status = dict(pairs).get(":status")
        self.response_code = int(status) if status and status.isdigit() else None
        return self._map_phase("proxy_on_response_headers", MapType.RESPONSE_HEADERS, pairs,
                               end_of_stream)

    def on_response_body(self, chunk: bytes, end_of_stream: bool) -> Action:
        return self._body_phase("response", chunk, end_of_stream)

    def on_response_trailers(self, trailers: Pairs) -> Action:
        return self._map_phase("proxy_on_response_trailers", MapType.RESPONSE_TRAILERS,
                               trailers)

    def take_body(self, direction: str) -> bytes:
        """What the filter lets through: data held back, then the buffer (both emptied)."""
        data = self.held[direction] + self.buffers[direction]
        self.held[direction] = self.buffers[direction] = b""
        return data

    def hold(self, direction: str) -> None:
        """A stop other than StopIterationAndBuffer: Envoy keeps the data, but the next call
        sees only the chunk that comes next."""
        self.held[direction] += self.buffers[direction]
        self.buffers[direction] = b""

    def headers(self, kind: MapType) -> list[tuple[str, str]]:
        found = self.maps.get(kind)
        return found.text() if found is not None else []

    def finish(self) -> None:
        """The stream is over: ``proxy_on_log`` (the maps readable), then ``proxy_on_done``
        and ``proxy_on_delete``, in Envoy's order."""
        self.logging = True
        try:
            self.host.call("proxy_on_log", self.context_id)
        finally:
            self.logging = False
        done = self.host.call("proxy_on_done", self.context_id)
        self.finishing = done == 0  # the filter will call proxy_done itself
        self.host.call("proxy_on_delete", self.context_id)


class ProxyWasm:
    """A loaded filter: its VM, root context and plugin configuration, ready for requests."""

    def __init__(self, module: bytes | bytearray | str | os.PathLike[str], *,
                 plugin_configuration: bytes | str = b"", vm_configuration: bytes | str = b"",
                 root_id: str = "", plugin_name: str = "plugin", vm_id: str = "",
                 properties: Mapping[str, str | int | bool | bytes] | None = None,
                 fuel: int | None = DEFAULT_FUEL,
                 memory_limit: int = DEFAULT_MEMORY_LIMIT,
                 log_level: LogLevel = LogLevel.INFO,
                 clock: Callable[[], int] = time.time_ns,
                 monotonic: Callable[[], int] = time.monotonic_ns,
                 start: bool = True) -> None:
        data = (bytes(module) if isinstance(module, (bytes, bytearray))
                else Path(module).read_bytes())
        if not data.startswith(b"\x00asm") and not data.lstrip().startswith((b"(", b";;")):
            raise InvalidModule(f"not a WebAssembly module (binary or text): starts with "
                                f"{data[:4]!r}")
        if fuel is not None and fuel < 1:
            raise ValueError("fuel must be a positive number of instructions, or None")
        self.plugin_configuration = _bytes(plugin_configuration)
        self.vm_configuration = _bytes(vm_configuration)
        self.root_id, self.plugin_name, self.vm_id = root_id, plugin_name, vm_id
        self.properties = {tuple(k.encode().split(b".")): _encode_property(v)
                           for k, v in (properties or {}).items()}
        self.fuel, self.log_level = fuel, log_level
        self.clock, self.monotonic = clock, monotonic
        self.logs: list[LogLine] = []
        self.shared_data = SharedData()
        self.metrics = Metrics()
        self.tick_period_ms = 0
        self.http: HttpContext | None = None
        self.phase = ""
        self.current_callback = ""
        self._context_id = ROOT_CONTEXT_ID
        self._ids = itertools.count(ROOT_CONTEXT_ID + 1)
        self._contexts: dict[int, HttpContext] = {}
        self._broken: str | None = None
        self._view: tuple[int, int] | None = None

        config = wasmtime.Config()
        config.consume_fuel = fuel is not None
        self._engine = wasmtime.Engine(config)
        try:
            self._module = wasmtime.Module(self._engine, data)
        except wasmtime.WasmtimeError as exc:
            raise InvalidModule(f"wasmtime rejects the module: {exc}") from None
        self.abi = _abi_of(self._module)
        self._store = wasmtime.Store(self._engine)
        self._store.set_limits(memory_size=memory_limit)
        self._set_fuel()  # a start function runs while instantiating
        self._instance = self._link()
        exports = self._instance.exports(self._store)
        self._functions = {name: item for name, item in exports.items()
                           if isinstance(item, wasmtime.Func)}
        memory = exports.get("memory") if "memory" in exports else None
        if not isinstance(memory, wasmtime.Memory):
            raise UnsupportedAbi("the module exports no memory named 'memory'")
        self._memory = memory
        # Envoy's preference: malloc, then proxy_on_memory_allocate.
        self._allocator = next((n for n in ("malloc", "proxy_on_memory_allocate")
                                if n in self._functions), None)
        if self._allocator is None:
            raise UnsupportedAbi("the module exports neither malloc nor "
                                 "proxy_on_memory_allocate: the host could not hand it data")
        if start:
            self.start()

    def _link(self) -> wasmtime.Instance:
        problems = import_problems(self._module, self.abi)
        if problems:
            described = [name if why == "missing"
                         else f"{name} (declared with another signature than the ABI's)"
                         for name, why in problems]
            raise MissingImports("the module imports what the emulator (and Envoy) does not "
                                 f"provide: {', '.join(described)}",
                                 tuple(name for name, _ in problems))
        linker = wasmtime.Linker(self._engine)
        functions = HostFunctions(self).table()
        signatures = import_signatures(self.abi)
        for item in self._module.imports:  # every one checked above: the ABI's signature
            key = (item.module, item.name or "")
            assert isinstance(item.type, wasmtime.FuncType)
            linker.define_func(item.module, item.name or "", item.type,
                               _guard(self, functions[key], signatures[key][0]))
        try:
            return linker.instantiate(self._store, self._module)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise WasmTrap(f"instantiating the module failed: {_first_line(exc)}",
                           "instantiate") from None

    # lifecycle

    def start(self) -> None:
        """What Envoy does when it loads a plugin: ``_initialize`` (then ``main``), or
        ``_start``; the root context; ``proxy_on_vm_start`` and ``proxy_on_configure`` with
        the configurations. StartFailed when the module answers false to either."""
        if "_initialize" in self._functions:
            self.call("_initialize")
            if "main" in self._functions:
                self.call("main", 0, 0)
            elif "__main_void" in self._functions:
                self.call("__main_void")
        elif "_start" in self._functions:
            self.call("_start")
        self.phase = "root_create"
        try:
            self.call("proxy_on_context_create", ROOT_CONTEXT_ID, 0)
            self.phase = "vm_start"
            if self.call("proxy_on_vm_start", ROOT_CONTEXT_ID, len(self.vm_configuration)) == 0:
                raise StartFailed("proxy_on_vm_start answered false: Envoy would not load "
                                  "the plugin")
            self.phase = "configure"
            if self.call("proxy_on_configure", ROOT_CONTEXT_ID,
                         len(self.plugin_configuration)) == 0:
                raise StartFailed("proxy_on_configure answered false: the plugin refuses its "
                                  f"configuration ({self.plugin_configuration[:80]!r})")
        finally:
            self.phase = ""

    def close(self) -> None:
        if self._broken is None:
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

    def call(self, name: str, *args: int) -> int | None:
        """Call an export; a top-level call gets the fuel budget (calls the host makes while it
        runs, such as allocations, spend from it) and the context it names as the effective
        one. A trap becomes a WasmTrap naming the callback."""
        if self._broken is not None:
            raise WasmTrap(f"the plugin is unusable after {self._broken} trapped", name)
        function = self._functions.get(name)
        if function is None:
            return None
        outer, self.current_callback = self.current_callback, name
        try:
            if outer:  # the host calling in (an allocation) while a callback runs
                result = function(self._store, *args)
            else:
                saved = self._context_id, self.http
                if name.startswith("proxy_on_") and args:
                    self.set_effective_context(args[0])
                self._set_fuel()
                try:
                    result = self._top_level(name, function, args)
                finally:
                    self._context_id, self.http = saved
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
        assert self._allocator is not None
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

    def property(self, path: tuple[bytes, ...]) -> bytes | None:
        """A property by its path segments: the ones given to the emulator (so a test can set
        ``source.address``), then Envoy's built-in attributes, then what the filter set on the
        stream."""
        context = self.http
        value = self.properties.get(path)
        if value is None:
            value = self._builtin(path, context)
        if value is None and context is not None:
            value = context.filter_state.get(b"\0".join(path))
        return value

    def _builtin(self, path: tuple[bytes, ...], context: HttpContext | None) -> bytes | None:
        name = ".".join(p.decode("utf-8", "replace") for p in path)
        fixed = {"plugin_root_id": self.root_id, "plugin_name": self.plugin_name,
                 "plugin_vm_id": self.vm_id}
        if len(path) == 1:
            return fixed[name].encode() if name in fixed else None
        if context is None:
            return None
        request = context.map_for(MapType.REQUEST_HEADERS, write=False)
        response = context.map_for(MapType.RESPONSE_HEADERS, write=False)
        values: dict[str, Any] = {
            "source.address": "127.0.0.1:40000", "source.port": 40000,
            "destination.address": "127.0.0.1:10000", "destination.port": 10000,
            "request.protocol": "HTTP/1.1", "response.code": context.response_code,
        }
        if request is not None:  # Envoy reads these from the headers it still lends
            path_value = (request.get(b":path") or b"").decode("latin-1")
            values.update({
                "request.path": path_value or None,
                "request.url_path": path_value.split("?")[0] or None,
                "request.query": path_value.partition("?")[2] or None,
                "request.host": request.get(b":authority"),
                "request.scheme": request.get(b":scheme"),
                "request.method": request.get(b":method"),
                "request.id": request.get(b"x-request-id"),
                "request.useragent": request.get(b"user-agent"),
                "request.referer": request.get(b"referer"),
                "request.headers": _map_value(request),
            })
        if response is not None:
            values["response.headers"] = _map_value(response)
        value = values.get(name)
        return None if value is None else _encode_property(value)

    # HTTP

    def http_context(self) -> HttpContext:
        """A new HTTP stream (``proxy_on_context_create`` with the root as parent)."""
        context_id = next(self._ids)
        context = HttpContext(self, context_id)
        self._contexts[context_id] = context
        self.call("proxy_on_context_create", context_id, ROOT_CONTEXT_ID)
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
            result = run(context, Request(
                method, path, authority, headers, chunks_of(body), trailers, upstream, status,
                response_headers, chunks_of(response_body), response_trailers))
        finally:
            if self._broken is None:
                context.finish()
            self._contexts.pop(context.context_id, None)
        result.actions = context.actions
        result.logs = [line for line in self.logs[first:]
                       if line.context_id == context.context_id]
        return result


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _map_value(headers: HeaderMap) -> bytes:
    return serialize_map(headers.joined())


def _encode_property(value: str | int | bool | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return bytes([value])
    if isinstance(value, int):
        return struct.pack("<q", value)
    return str(value).encode()


def _abi_of(module: wasmtime.Module) -> str:
    versions = [e.name.removeprefix(ABI_PREFIX) for e in module.exports
                if e.name.startswith(ABI_PREFIX)]
    supported = supported_abi(versions)
    if supported is not None:
        return supported
    if versions:
        raise UnsupportedAbi(f"proxy-wasm ABI {', '.join(versions)} is not supported; the "
                             f"emulator speaks {', '.join(SUPPORTED_ABIS)} (Envoy too)")
    raise UnsupportedAbi("not a proxy-wasm module: it exports no proxy_abi_version_* function")


def _guard(host: ProxyWasm, function: Callable[..., Any],
           params: tuple[str, ...]) -> Callable[..., Any]:
    """The ABI's 32-bit values are unsigned (wasmtime hands them over signed); results are
    plain ints, or nothing."""
    masks = tuple(0xFFFFFFFF if t == "i32" else None for t in params)

    def call(*args: int) -> Any:
        host.host_call_starts()
        values = [a & m if m is not None else a for a, m in zip(args, masks, strict=True)]
        result = function(*values)
        return int(result) if result is not None else None
    return call


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    caused = text.split("Caused by:")[-1].strip() if "Caused by:" in text else text
    return caused.splitlines()[0] if caused else type(exc).__name__
