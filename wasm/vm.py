"""The module instantiated on wasmtime: its imports linked to the host functions, its exports
called with a fuel budget, traps and host errors turned into :class:`~wasm.errors.WasmTrap`
naming the callback.

Calls in both directions go through wasmtime's unchecked C entry points (raw 64-bit value
slots) rather than the typed ``wasmtime.Func`` wrappers: the signatures are checked once, at
link time (:func:`wasm.module.import_problems`), and the wrappers' per-call type lookups and
value boxing were most of the emulator's time per request.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _bindings
from wasmtime import _ffi as ffi
from wasmtime._extern import wrap_extern

from .abi import (
    CONTEXT_FREE,
    HEADERS_CALLBACKS,
    Signature,
    callback_signatures,
    import_signatures,
)
from .compiled import load
from .digest import WASM_MAGIC
from .errors import (
    HostError,
    InvalidModule,
    MemoryAccess,
    MissingImports,
    UnsupportedAbi,
    WasmTrap,
)
from .imports import for_abi
from .memory import Memory
from .module import has_start, import_problems
from .state import PluginState

_Raw = ffi.wasmtime_val_raw_t
_SLOT = ctypes.sizeof(_Raw)
_CALLBACK = ffi.wasmtime_func_unchecked_callback_t
# The same C signature with plain addresses: ctypes builds no pointer objects per call.
_RAW_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_size_t)
_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_NO_FINALIZER = _FINALIZER(lambda env: None)


# The same library, called without releasing the GIL: a call into the module comes back into
# Python (host functions) on this thread, and releasing and taking the GIL again around every
# crossing cost more than the crossing itself.
_HOLDING_GIL = ctypes.PyDLL(_bindings.dll._name,  # type: ignore[attr-defined]
                            handle=_bindings.dll._handle)  # type: ignore[attr-defined]


def _raw_function(name: str, restype: Any, *argtypes: Any) -> Any:
    """A C entry point of wasmtime taking plain addresses: ctypes converts ints without the
    type checks wasmtime's own prototypes make on every call (a fresh function object, so
    those prototypes are left as they are)."""
    function = _HOLDING_GIL[name]
    function.restype = restype
    function.argtypes = argtypes
    return function


_call_unchecked = _raw_function("wasmtime_func_call_unchecked", ctypes.c_void_p,
                                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_size_t, ctypes.c_void_p)
_set_fuel = _raw_function("wasmtime_context_set_fuel", ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_uint64)
_RESULT = struct.Struct("<I")


def _slots(kinds: tuple[str, ...] | list[str]) -> struct.Struct:
    """The layout of raw value slots: an i32 read unsigned (as the ABI means it), an i64
    signed; each slot is 16 bytes."""
    pad = f"{_SLOT - 4}x"
    return struct.Struct("<" + "".join(f"q{_SLOT - 8}x" if k == "i64" else f"I{pad}"
                                        for k in kinds))


class _Leading:
    """A parameter layout packing the first ``count`` of the arguments it is given."""

    def __init__(self, layout: struct.Struct, count: int) -> None:
        self.layout, self.count = layout, count

    def pack_into(self, buffer: Any, offset: int, *args: int) -> None:
        self.layout.pack_into(buffer, offset, *args[:self.count])


class _Export:
    """An export ready to call: its function, a value buffer, its parameter layout."""

    def __init__(self, func: Any, params: list[str], results: int,
                 arguments: int | None = None) -> None:
        """``arguments``: how many of the arguments a call passes the export takes (all when
        None)."""
        slots = max(len(params), results, 1)
        self.values = (_Raw * slots)()
        self.slots = slots
        self.keep = func  # the address below points into it
        self.func = ctypes.addressof(func)
        layout = _slots(params)
        self.params = layout if arguments is None else _Leading(layout, arguments)
        self.address = ctypes.addressof(self.values)
        self.results = results


class Vm:
    """One instance of a module in its own store."""

    def __init__(self, data: bytes, abi_of: Callable[[wasmtime.Module], str], state: PluginState,
                 functions: Callable[[Memory], dict[tuple[str, str], Callable[..., Any]]],
                 fuel: int | None, memory_limit: int) -> None:
        self.state = state
        self.fuel = fuel
        self.broken: str | None = None
        self._top = ""  # the callback a trap is reported against, even one in an allocation
        self._raised: BaseException | None = None
        self._starting = False  # the start function is running (while instantiating)
        self.exit_code: int | None = None
        """What the module last passed to WASI's ``proc_exit``."""
        # origin: where the compiled module came from, "compiled" or a cache ("memory",
        # "disk"; wasm.compiled)
        try:
            if not data.startswith(WASM_MAGIC):
                data = bytes(wasmtime.wat2wasm(data.decode("utf-8", "replace")))
            self._engine, self._module, self.origin = load(data, fuel is not None)
        except wasmtime.WasmtimeError as exc:
            raise InvalidModule(f"wasmtime rejects the module: {exc}") from None
        self._has_start = has_start(data)
        self.abi = abi_of(self._module)
        self._store = wasmtime.Store(self._engine)
        self._store.set_limits(memory_size=memory_limit)
        self._context = self._store._context()
        self._context_address = ctypes.cast(self._context, ctypes.c_void_p).value
        self._callbacks: list[Any] = []  # ctypes thunks must outlive the instance
        self.memory = Memory(self._context, ffi.wasmtime_memory_t())
        table = for_abi(functions(self.memory), self.abi, self.memory)
        self._refuel()  # a start function runs while instantiating
        instance, memory = self._link(table)
        self._instance = instance
        # Exports are looked up by name when first called: listing them all costs wasmtime
        # time quadratic in their number (seconds for a module exporting thousands).
        exported = self._module.exports
        self._exported = {e.name: e.type for e in exported
                          if isinstance(e.type, wasmtime.FuncType)}
        self._functions: dict[str, _Export] = {}
        self._check_callbacks()
        # The memory Envoy hands data in: the last one the module exports, whatever its
        # name, else the one it imports (proxy-wasm-cpp-host on V8).
        last = next((e.name for e in reversed(exported)
                     if isinstance(e.type, wasmtime.MemoryType)), None)
        if last is not None:
            memory = self._export(last)
        if not isinstance(memory, wasmtime.Memory):
            raise UnsupportedAbi("the module neither exports nor imports a memory: Envoy 1.40 "
                                 "would have none to hand it data in (it crashes on the "
                                 "first host call)")
        self.memory._memory = memory._memory
        self._trap = ctypes.c_void_p()
        self._trap_address = ctypes.addressof(self._trap)
        # Envoy's preference: malloc, then proxy_on_memory_allocate.
        allocator = next((n for n in ("malloc", "proxy_on_memory_allocate")
                          if n in self._exported), None)
        if allocator is None:
            raise UnsupportedAbi("the module exports neither malloc nor "
                                 "proxy_on_memory_allocate: the host could not hand it data")
        self.allocator = allocator
        self.memory.allocate = self.allocate

    def _check_callbacks(self) -> None:
        """UnsupportedAbi, with Envoy's reason, when an export Envoy calls has another
        signature than the one Envoy calls it with."""
        for name, (params, results) in callback_signatures(self.abi, self._exported).items():
            kind = self._exported[name]
            found = (tuple(str(t) for t in kind.params), tuple(str(t) for t in kind.results))
            if found != (params, results):
                def shown(types: tuple[str, ...]) -> str:
                    return " ".join(types) or "void"
                raise UnsupportedAbi(
                    f"Envoy refuses the module (ABI {self.abi}): Bad function signature for: "
                    f"{name}, want: {shown(params)} -> {shown(results)}, but the module "
                    f"exports: {shown(found[0])} -> {shown(found[1])}")

    def has_export(self, name: str) -> bool:
        """Whether the module exports a function ``name``."""
        return name in self._exported

    def _export(self, name: str) -> Any:
        """The export ``name`` of the instance (a wasmtime Func, Memory, ...), or None."""
        item = ffi.wasmtime_extern_t()
        encoded = name.encode()
        if not ffi.wasmtime_instance_export_get(self._context,
                                                ctypes.byref(self._instance._instance),
                                                encoded, len(encoded), ctypes.byref(item)):
            return None
        return wrap_extern(item)

    def _function(self, name: str) -> _Export | None:
        """The exported function ``name``, ready to call (made on its first call)."""
        kind = self._exported.get(name)
        if kind is None:
            return None
        func = self._export(name)
        # ABI 0.1.0's headers callbacks take no end_of_stream
        arguments = 2 if self.abi == "0_1_0" and name in HEADERS_CALLBACKS else None
        found = self._functions[name] = _Export(func._func, [str(p) for p in kind.params],
                                                len(kind.results), arguments)
        return found

    def _link(self, table: dict[tuple[str, str], Callable[..., Any]]
              ) -> tuple[wasmtime.Instance, wasmtime.Memory | None]:
        """Instantiate the module with an extern for each of its imports, in its order, as
        Envoy links it (:func:`wasm.module.import_problems` says what Envoy refuses): a host
        function by name, the same function for each import of a name; a new memory or table
        of the import's type. The instance, and the memory it imports (if any)."""
        problems = import_problems(self._module, self.abi)
        if problems:
            described = [name if why == "missing"
                         else f"{name} (declared with another signature than the ABI's)"
                         if why == "signature" else f"{name} ({why})"
                         for name, why in problems]
            raise MissingImports("the module imports what the emulator (and Envoy) does not "
                                 f"provide: {', '.join(described)}",
                                 tuple(name for name, _ in problems))
        signatures = import_signatures(self.abi)
        functions: dict[tuple[str, str], wasmtime.Func] = {}
        externs: list[wasmtime.Func | wasmtime.Memory | wasmtime.Table] = []
        memory = None
        for item in self._module.imports:
            key = (item.module, item.name or "")
            kind = item.type
            if isinstance(kind, wasmtime.FuncType):
                if key not in functions:
                    functions[key] = self._define(key, kind, table[key], signatures[key])
                externs.append(functions[key])
            elif isinstance(kind, wasmtime.MemoryType):
                memory = wasmtime.Memory(self._store, kind)
                externs.append(memory)
            else:  # import_problems lets nothing else through
                assert isinstance(kind, wasmtime.TableType)
                externs.append(wasmtime.Table(self._store, kind, None))
        self._starting = True
        try:
            return wasmtime.Instance(self._store, self._module, externs), memory
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raised, self._raised = self._raised, None
            if raised is not None:
                raise raised from None
            raise WasmTrap(f"instantiating the module failed: {first_line(exc)}",
                           "instantiate") from None
        finally:
            self._starting = False

    def _define(self, key: tuple[str, str], kind: wasmtime.FuncType,
                function: Callable[..., Any], signature: Signature) -> wasmtime.Func:
        """The host function ``function`` as a wasmtime function of this store."""
        params, results = signature
        raw = _RAW_CALLBACK(self._host_function(key, function, params, bool(results)))
        callback = ctypes.cast(raw, _CALLBACK)
        self._callbacks.append((raw, callback))
        func = ffi.wasmtime_func_t()
        ffi.wasmtime_func_new_unchecked(self._context, kind.ptr(), callback, None,
                                        _NO_FINALIZER, ctypes.byref(func))
        return wasmtime.Func._from_raw(func)

    def _host_function(self, key: tuple[str, str], function: Callable[..., Any],
                       params: tuple[str, ...], has_result: bool) -> Callable[..., int]:
        """The C callback for one host function: its arguments unpacked from the raw slots
        in one go; a Python exception becomes a trap, re-raised by ``call``."""
        layout = _slots(params)
        unpack, size = layout.unpack, layout.size
        string_at, result_at = ctypes.string_at, ctypes.c_uint32.from_address
        # refused while the module's start function runs: Envoy has no context then, and the
        # host functions that use one crash it
        guarded = self._has_start and key[1] not in CONTEXT_FREE
        if key[1] == "proc_exit":
            function = self._noting_exit(function)

        def callback(env: Any, caller: Any, values: int, slots: int) -> int:
            try:
                if guarded and self._starting:
                    raise WasmTrap(
                        f"the module's start function called {key[0]}.{key[1]}: Envoy 1.40 "
                        "crashes (SIGSEGV) on a host call before the VM has a context; make "
                        "the call from _initialize or proxy_on_vm_start", "start")
                result = function(*unpack(string_at(values, size))) if size else function()
                if has_result:
                    result_at(values).value = int(result) & 0xFFFFFFFF
                return 0
            except BaseException as exc:  # carried across the C frames, raised by call()
                self._raised = exc
                message = b"host function raised"
                return ctypes.cast(ffi.wasmtime_trap_new(message, len(message)),
                                   ctypes.c_void_p).value or 0
        return callback

    def _noting_exit(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def proc_exit(code: int) -> Any:
            self.exit_code = code
            return function(code)
        return proc_exit

    def call(self, name: str, *args: int) -> int | None:
        """Call an export (None when the module does not export it). A top-level call gets
        the fuel budget (calls the host makes while it runs, such as allocations, spend from
        it) and the context it names as the effective one; a trap becomes a WasmTrap naming
        the callback, after which the plugin is unusable, as in Envoy."""
        if self.broken is not None:
            raise WasmTrap(f"the plugin is unusable after {self.broken} trapped", name)
        found = self._functions.get(name) or self._function(name)
        if found is None:
            return None
        state = self.state
        outer = state.current_callback
        state.current_callback = name
        try:
            if outer:  # the host calling in (an allocation) while a callback runs
                return self._invoke(name, found, args)
            saved = state.context_id, state.stream
            if args and name.startswith("proxy_on_"):
                state.set_effective_context(args[0])
            self._refuel()
            self._top = name
            try:
                return self._invoke(name, found, args)
            except HostError:
                self.broken = name
                raise
            finally:
                state.context_id, state.stream = saved
                self._top = ""
        finally:
            state.current_callback = outer

    def _invoke(self, name: str, found: _Export, args: tuple[int, ...]) -> int | None:
        # Each export has its own buffer: the only call made while another runs is the
        # allocator, which never runs inside itself.
        if args:
            found.params.pack_into(found.values, 0, *args)
        error = _call_unchecked(self._context_address, found.func, found.address, found.slots,
                                self._trap_address)
        if error or self._trap.value:
            self._failed(name, error)
        return _RESULT.unpack_from(found.values)[0] if found.results else None

    def _failed(self, name: str, error: Any) -> None:
        raised, self._raised = self._raised, None
        trap, self._trap.value = self._trap.value, None
        # wasmtime's own objects take ownership of the error or trap (and free it)
        problem: Exception
        if error:
            problem = wasmtime.WasmtimeError._from_ptr(
                ctypes.cast(error, ctypes.POINTER(ffi.wasmtime_error_t)))
        else:
            problem = wasmtime.Trap._from_ptr(
                ctypes.cast(trap, ctypes.POINTER(ffi.wasm_trap_t)))  # type: ignore[arg-type]
        if raised is not None:
            raise raised
        exhausted = "all fuel consumed" in str(problem)
        reason = (f"ran out of fuel after {self.fuel} instructions (a loop?); raise fuel= if "
                  "it needs more" if exhausted else first_line(problem))
        if self.exit_code is not None:  # the usual way out of a WASI program's exit
            reason += f" (after proc_exit({self.exit_code}), which Envoy returns from)"
        name = self._top or name
        raise WasmTrap(f"{name} trapped: {reason}", name, exhausted)

    def allocate(self, size: int) -> int:
        address = self.call(self.allocator, size) or 0
        if address == 0 or not self.memory.holds(address, size):
            raise MemoryAccess(f"{self.allocator}({size}) returned {address}, not memory "
                               f"the module has ({self.memory.size()} bytes)")
        return address

    def _refuel(self) -> None:
        if self.fuel is not None:
            _set_fuel(self._context_address, self.fuel)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    caused = text.split("Caused by:")[-1].strip() if "Caused by:" in text else text
    return caused.splitlines()[0] if caused else type(exc).__name__
