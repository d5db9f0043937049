"""The module's linear memory as the host functions see it: bounds-checked reads and writes,
and data handed back in memory the module allocates.

The store is configured so that memory never moves (:mod:`wasm.vm`), and memory never
shrinks: so the view over it is made again only when a range falls past the length last
seen. The wasmtime accessors cost a foreign call each, which used to be
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
    module is instantiated). Reads and writes go through a memoryview over the memory, made
    again only when the memory has grown."""

    def __init__(self, context: ctypes._Pointer, memory: ffi.wasmtime_memory_t) -> None:  # type: ignore[type-arg]
        self._context = context
        self._memory = memory
        self._data = memoryview(b"")
        self._length = 0
        self.allocate: Callable[[int], int] = _no_allocator

    def _refresh(self) -> int:
        ref = ctypes.byref(self._memory)
        length = int(ffi.wasmtime_memory_data_size(self._context, ref))
        if length != self._length:
            data = ffi.wasmtime_memory_data(self._context, ref)
            base = ctypes.cast(data, ctypes.c_void_p).value or 0
            self._data = memoryview((ctypes.c_char * length).from_address(base)).cast("B")
            self._length = length
        return length

    def size(self) -> int:
        return self._refresh()

    def holds(self, ptr: int, size: int) -> bool:
        return ptr + size <= self._length or ptr + size <= self._refresh()

    def check(self, function: str, ptr: int, size: int) -> None:
        """MemoryAccess naming the host function unless ``size`` bytes at ``ptr`` are all
        inside the module's memory."""
        if ptr + size > self._length and ptr + size > self._refresh():
            raise MemoryAccess(f"{function}: the module passed {size} bytes at {ptr}, outside "
                               f"its {self._length}-byte memory")

    def read(self, function: str, ptr: int, size: int) -> bytes:
        if ptr + size > self._length:
            self.check(function, ptr, size)
        return self._data[ptr:ptr + size].tobytes()

    def text(self, function: str, ptr: int, size: int) -> str:
        return self.read(function, ptr, size).decode("utf-8", "replace")

    def write(self, function: str, ptr: int, data: bytes) -> None:
        if ptr + len(data) > self._length:
            self.check(function, ptr, len(data))
        self._data[ptr:ptr + len(data)] = data

    def put_u32(self, function: str, ptr: int, value: int) -> None:
        if ptr + 4 > self._length:
            self.check(function, ptr, 4)
        _U32.pack_into(self._data, ptr, value & 0xFFFFFFFF)

    def put_u64(self, function: str, ptr: int, value: int) -> None:
        if ptr + 8 > self._length:
            self.check(function, ptr, 8)
        _U64.pack_into(self._data, ptr, value & 0xFFFFFFFFFFFFFFFF)

    def hand_back(self, function: str, data: bytes, ptr_ptr: int, size_ptr: int) -> int:
        """Copy ``data`` into memory the module allocates and write its address and size;
        nothing is allocated for empty data (address 0, size 0), as in Envoy."""
        address = self.allocate(len(data)) if data else 0
        if data:
            self.write(function, address, data)
        self.put_u32(function, ptr_ptr, address)
        self.put_u32(function, size_ptr, len(data))
        return Status.OK


def _no_allocator(size: int) -> int:
    raise MemoryAccess("the module has no allocator the host could use")
