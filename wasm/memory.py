"""The module's linear memory as the host functions see it: bounds-checked reads and writes,
and data handed back in memory the module allocates.

The store is configured so that memory never moves (:mod:`wasm.vm`), and memory never
shrinks: so the base address is read once and the length again only when a range falls
past the length last seen. The wasmtime accessors cost a foreign call each, which used to be
a good part of every host call.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable

from wasmtime import _ffi as ffi

from .abi import Status
from .errors import MemoryAccess

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class Memory:
    """One module's memory in one store; ``allocate`` is the module's allocator (set once the
    module is instantiated)."""

    def __init__(self, context: ctypes._Pointer, memory: ffi.wasmtime_memory_t) -> None:  # type: ignore[type-arg]
        self._context = context
        self._memory = memory
        self._view: tuple[int, int] | None = None
        self.allocate: Callable[[int], int] = _no_allocator

    def _current(self) -> tuple[int, int]:
        ref = ctypes.byref(self._memory)
        length = int(ffi.wasmtime_memory_data_size(self._context, ref))
        data = ffi.wasmtime_memory_data(self._context, ref)
        base = (ctypes.cast(data, ctypes.c_void_p).value or 0) if length else 0
        self._view = (base, length)
        return self._view

    def size(self) -> int:
        return self._current()[1]

    def holds(self, ptr: int, size: int) -> bool:
        view = self._view
        return (view is not None and ptr + size <= view[1]) or ptr + size <= self.size()

    def check(self, function: str, ptr: int, size: int) -> int:
        """The raw address of ``size`` bytes at ``ptr``; MemoryAccess naming the host
        function when they are not all inside the module's memory."""
        view = self._view
        if view is None or ptr + size > view[1]:
            view = self._current()  # it may have grown since
        base, length = view
        if ptr + size > length:
            raise MemoryAccess(f"{function}: the module passed {size} bytes at {ptr}, outside "
                               f"its {length}-byte memory")
        return base + ptr

    def read(self, function: str, ptr: int, size: int) -> bytes:
        address = self.check(function, ptr, size)
        return ctypes.string_at(address, size) if size else b""

    def text(self, function: str, ptr: int, size: int) -> str:
        return self.read(function, ptr, size).decode("utf-8", "replace")

    def write(self, function: str, ptr: int, data: bytes) -> None:
        address = self.check(function, ptr, len(data))
        if data:
            ctypes.memmove(address, data, len(data))

    def put_u32(self, function: str, ptr: int, value: int) -> None:
        self.write(function, ptr, _U32.pack(value & 0xFFFFFFFF))

    def put_u64(self, function: str, ptr: int, value: int) -> None:
        self.write(function, ptr, _U64.pack(value & 0xFFFFFFFFFFFFFFFF))

    def hand_back(self, function: str, data: bytes, ptr_ptr: int, size_ptr: int) -> int:
        """Copy ``data`` into memory the module allocates and write its address and size;
        nothing is allocated for empty data (address 0, size 0), as in Envoy."""
        address = self.allocate(len(data)) if data else 0
        if data:
            self.write(function, address, data)
        self.write(function, ptr_ptr, _U32.pack(address))
        self.write(function, size_ptr, _U32.pack(len(data)))
        return Status.OK


def _no_allocator(size: int) -> int:
    raise MemoryAccess("the module has no allocator the host could use")
