"""A proxy-wasm host on wasmtime: run a filter's callbacks from Python, no Envoy needed.

    from wasm import ProxyWasm

    def test_tags_responses():
        with ProxyWasm("build/filter.wasm", plugin_configuration="tagged") as plugin:
            result = plugin.request(path="/", headers={"x-user": "ada"})
        assert result.response_header("x-filter") == "tagged"

Any module Envoy 1.40 loads (ABI 0.1.0, 0.2.0 or 0.2.1; Rust, Go, C++, AssemblyScript, WAT)
loads, linked as Envoy links it (:mod:`wasm.vm`), compiled once (:mod:`wasm.compiled`); its
imports are checked at load time (names and signatures), so one the emulator does not provide
is named then, not trapped on later. Each callback runs with a fuel budget (a loop fails the call
instead of hanging the test) and the store has a memory limit. The host answers as Envoy's
does (proxy-wasm-cpp-host and Envoy's wasm context): which maps and buffers exist in which
callback, header-map rules, statuses; see :mod:`wasm.imports` for the one deliberate
difference.

Dependencies point one way: this module -> :mod:`wasm.exchange` (one request) ->
:mod:`wasm.context` (callbacks, callout replies, queue wake-ups) -> :mod:`wasm.vm` (the
instance) -> the host functions (:mod:`wasm.imports`, :mod:`wasm.callouts`,
:mod:`wasm.queues`) -> :mod:`wasm.state` and :mod:`wasm.memory`.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import wasmtime

from .abi import SUPPORTED_ABIS, LogLevel, supported_abi
from .callouts import CalloutFunctions
from .calls import Call, GrpcStream, ScriptedUpstream
from .configured import Given, split
from .configured import Path as PropertyPath
from .context import HttpContext, deliver, run_callback
from .errors import InvalidModule, StartFailed, UnsupportedAbi, WasmTrap
from .exchange import FRAMINGS, HttpResult, Pairs, Request, Upstream, chunks_of, run
from .imports import HostFunctions
from .memory import Memory
from .module import ABI_PREFIX
from .properties import encode
from .queues import QueueFunctions
from .state import (
    ROOT_CONTEXT_ID,
    ForeignFunction,
    Metrics,
    PluginState,
    SharedData,
    SharedQueues,
    StreamState,
)
from .vm import Vm

__all__ = ["ProxyWasm"]

DEFAULT_FUEL = 500_000_000
"""Wasm instructions one callback may run (roughly a second of work)."""
DEFAULT_MEMORY_LIMIT = 256 * 1024 * 1024


class ProxyWasm:
    """A loaded filter: its VM, root context and plugin configuration, ready for requests.

    ``upstreams``: cluster name -> handler answering the filter's HTTP and gRPC callouts
    and gRPC streams (:mod:`wasm.calls`); ``foreign_functions``: name -> function for
    ``proxy_call_foreign_function``; ``framing``: ``"http1"`` (Envoy's HTTP/1.1 codec, the
    default) or ``"http2"``, how bodies are cut into callbacks (:mod:`wasm.exchange`);
    ``upstream(request) -> answer``: what the upstream answers every request that does not
    bring its own (as ``extproc.testing.Client`` and ``extctl.testing.EnvoyClient`` take it);
    ``properties``: path -> value, what Envoy's configuration sets placed where Envoy keeps it
    (:mod:`wasm.configured`), any other path given as it is.
    """

    def __init__(self, module: bytes | bytearray | str | os.PathLike[str], *,
                 plugin_configuration: bytes | str = b"", vm_configuration: bytes | str = b"",
                 root_id: str = "", plugin_name: str = "plugin", vm_id: str = "",
                 properties: Mapping[PropertyPath, Given] | None = None,
                 upstreams: Mapping[str, ScriptedUpstream] | None = None,
                 foreign_functions: Mapping[str, ForeignFunction] | None = None,
                 framing: str = "http1",
                 upstream: Upstream | None = None,
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
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, not {framing!r}")
        self.framing = framing
        self.upstream = upstream
        configured, rest = split(properties)
        self.state = PluginState(
            plugin_configuration=_bytes(plugin_configuration),
            vm_configuration=_bytes(vm_configuration), root_id=root_id,
            plugin_name=plugin_name, vm_id=vm_id,
            properties={tuple(part.encode() for part in path): encode(value)
                        for path, value in rest.items()},
            configured=configured,
            log_level=log_level, clock=clock, monotonic=monotonic,
            upstreams=dict(upstreams or {}), foreign_functions=dict(foreign_functions or {}))
        self._ids = itertools.count(ROOT_CONTEXT_ID + 1)
        self.vm = Vm(data, _abi_of, self.state, self._host_functions, fuel, memory_limit)
        self.abi = self.vm.abi
        self.state.drain = lambda: deliver(self.vm, self.state)
        if start:
            self.start()

    def _host_functions(self, memory: Memory) -> dict[tuple[str, str], Callable[..., Any]]:
        core = HostFunctions(self.state, memory)
        return core.table(CalloutFunctions(self.state, memory),
                          QueueFunctions(self.state, memory))

    # what tests read

    @property
    def logs(self) -> list[Any]:
        return self.state.logs

    @property
    def shared_data(self) -> SharedData:
        return self.state.shared_data

    @property
    def metrics(self) -> Metrics:
        return self.state.metrics

    @property
    def queues(self) -> SharedQueues:
        return self.state.queues

    @property
    def calls(self) -> list[Call]:
        """Every callout the filter made, in order, with the upstream's reply."""
        return self.state.calls

    @property
    def grpc_streams(self) -> list[GrpcStream]:
        """Every gRPC stream the filter opened, in order: what it sent, and the upstream's end
        (a test may send on one at any time between callbacks)."""
        return list(self.state.grpc_streams.values())

    @property
    def tick_period_ms(self) -> int:
        return self.state.tick_period_ms

    @property
    def plugin_configuration(self) -> bytes:
        return self.state.plugin_configuration

    # lifecycle

    def start(self) -> None:
        """What Envoy does when it loads a plugin: ``_initialize`` (then ``main``), or
        ``_start``; the root context; ``proxy_on_vm_start`` and ``proxy_on_configure`` with
        the configurations. StartFailed when the module answers false to either."""
        vm, state = self.vm, self.state
        if vm.has_export("_initialize"):
            vm.call("_initialize")
            if vm.has_export("main"):
                vm.call("main", 0, 0)
            elif vm.has_export("__main_void"):
                vm.call("__main_void")
        elif vm.has_export("_start"):
            vm.call("_start")
        state.phase = "root_create"
        try:
            vm.call("proxy_on_context_create", ROOT_CONTEXT_ID, 0)
            state.phase = "vm_start"
            if vm.call("proxy_on_vm_start", ROOT_CONTEXT_ID,
                       len(state.vm_configuration)) == 0:
                raise StartFailed("proxy_on_vm_start answered false: Envoy would not load "
                                  "the plugin")
            state.phase = "configure"
            if vm.call("proxy_on_configure", ROOT_CONTEXT_ID,
                       len(state.plugin_configuration)) == 0:
                raise StartFailed("proxy_on_configure answered false: the plugin refuses its "
                                  f"configuration ({state.plugin_configuration[:80]!r})")
        finally:
            state.phase = ""
        deliver(vm, state)

    def close(self) -> None:
        if self.vm.broken is None:
            self.vm.call("proxy_on_done", ROOT_CONTEXT_ID)

    def __enter__(self) -> ProxyWasm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            self.close()

    def tick(self) -> None:
        """Fire the timer the filter set with ``proxy_set_tick_period_milliseconds``, then
        deliver what it caused (callout replies, queue wake-ups)."""
        run_callback(self.vm, "proxy_on_tick", ROOT_CONTEXT_ID)

    def call(self, name: str, *args: int) -> int | None:
        """Call an export of the module directly (see :meth:`wasm.vm.Vm.call`)."""
        return run_callback(self.vm, name, *args)

    # HTTP

    def http_context(self) -> HttpContext:
        """A new HTTP stream (``proxy_on_context_create`` with the root as parent)."""
        context_id = next(self._ids)
        stream = StreamState(context_id)
        self.state.streams[context_id] = stream
        run_callback(self.vm, "proxy_on_context_create", context_id, ROOT_CONTEXT_ID)
        return HttpContext(self.vm, stream)

    def request(self, method: str = "GET", path: str = "/", *, authority: str = "example.com",
                headers: Pairs | None = None, body: bytes | Sequence[bytes] = b"",
                trailers: Pairs | None = None, upstream: Upstream | None = None,
                status: int = 200, response_headers: Pairs | None = None,
                response_body: bytes | Sequence[bytes] = b"",
                response_trailers: Pairs | None = None,
                framing: str | None = None) -> HttpResult:
        """One whole exchange through the filter, in Envoy's order.

        The upstream answers ``status``/``response_headers``/``response_body`` (chunks: a list),
        or ``upstream(request) -> answer`` decides from the Message it got (the callback every
        test double takes, :mod:`extproc.exchange`). ``body`` and ``response_body`` chunks
        reach the filter as the framing cuts them (:mod:`wasm.exchange`).
        """
        framing = framing or self.framing
        upstream = upstream or self.upstream
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, not {framing!r}")
        context = self.http_context()
        first_log, first_call = len(self.state.logs), len(self.state.calls)
        first_stream = len(self.state.grpc_streams)
        result = HttpResult([], b"", [], b"")
        try:
            run(context, Request(
                method, path, authority, headers, chunks_of(body), trailers, upstream, status,
                response_headers, chunks_of(response_body), response_trailers, framing),
                result)
        except WasmTrap as trap:
            trap.result = result
            raise
        finally:
            try:
                if self.vm.broken is None:
                    context.finish()  # proxy_on_log, proxy_on_done, proxy_on_delete
            except WasmTrap as trap:
                trap.result = result  # the exchange itself was over
                raise
            finally:
                self.state.streams.pop(context.context_id, None)
        result.actions = context.actions
        result.route_cache_cleared = context.stream.route_cache_cleared
        result.logs = [line for line in self.state.logs[first_log:]
                       if line.context_id == context.context_id]
        result.calls = self.state.calls[first_call:]
        result.grpc_streams = list(self.state.grpc_streams.values())[first_stream:]
        return result

    def get(self, path: str = "/", **kwargs: Any) -> HttpResult:
        """A GET through the filter (the keyword arguments of :meth:`request`)."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str = "/", **kwargs: Any) -> HttpResult:
        """A POST through the filter (the keyword arguments of :meth:`request`)."""
        return self.request("POST", path, **kwargs)


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


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
