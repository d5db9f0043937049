"""Errors of the Wasm tools.

    WasmError            base
    ├── InvalidModule    not a WebAssembly module (or one wasmtime rejects)
    └── DigestMismatch   a file's sha256 is not the one expected
"""

from __future__ import annotations


class WasmError(Exception):
    """Base class of the errors this package raises."""


class InvalidModule(WasmError):
    """The bytes are not a valid WebAssembly module."""


class DigestMismatch(WasmError):
    """The sha256 of a file differs from the expected one."""

    def __init__(self, message: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual
