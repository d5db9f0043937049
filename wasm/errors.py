"""Errors of the Wasm tools (under ``extproc.errors.ExtkitError``, envoy-extkit's root).

    WasmError            base
    ├── InvalidModule    not a WebAssembly module (or one wasmtime rejects)
    ├── DigestMismatch   a file's sha256 is not the one expected
    └── HostError        the proxy-wasm emulator cannot run the module as Envoy would
        ├── UnsupportedAbi   no proxy-wasm ABI Envoy speaks, a callback of another signature
        ├── MissingImports   imports the emulator does not provide (all named)
        ├── WasmTrap         the module trapped, ran out of fuel or exited (callback named)
        ├── StartFailed      proxy_on_vm_start or proxy_on_configure answered false
        └── MemoryAccess     the module handed the host memory it does not have
    └── CalloutFailure   raised by a scripted upstream (wasm.calls) to fail a callout
        ├── CalloutTimeout   the callout times out (Envoy's async client answers 504)
        └── CalloutReset     the upstream resets the call (the filter sees no reply)

``registry``'s DigestMismatch is this one too (``except wasm.DigestMismatch`` catches a
module's and an image's).

A scripted upstream or foreign function that raises anything else becomes a HostError naming
the cluster or function.
"""

from __future__ import annotations

from typing import Any

from extproc.errors import ExtkitError


class WasmError(ExtkitError):
    """Base class of the errors this package raises."""


class InvalidModule(WasmError):
    """The bytes are not a valid WebAssembly module."""


class DigestMismatch(WasmError):
    """The sha256 of a file differs from the expected one."""

    def __init__(self, message: str, expected: str = "", actual: str = "") -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class HostError(WasmError):
    """The emulator could not run the module the way Envoy would."""


class UnsupportedAbi(HostError):
    """The module exports no proxy-wasm ABI version the emulator (and Envoy 1.40) speaks (0.1.0,
    0.2.0, 0.2.1), exports a callback with another signature than Envoy calls it with, or
    has no memory Envoy could hand data in."""


class MissingImports(HostError):
    """The module imports functions the emulator does not provide; ``names`` lists them."""

    def __init__(self, message: str, names: tuple[str, ...]) -> None:
        super().__init__(message)
        self.names = names


class WasmTrap(HostError):
    """A callback trapped (or used up its fuel, or exited); the plugin cannot be used after."""

    def __init__(self, message: str, callback: str, fuel_exhausted: bool = False) -> None:
        super().__init__(message)
        self.callback = callback
        self.fuel_exhausted = fuel_exhausted
        self.result: Any = None
        """From ``ProxyWasm.request``: the ``HttpResult`` as far as the request got."""


class StartFailed(HostError):
    """The module refused to start or its configuration, as Envoy would report the plugin
    failing to load."""


class MemoryAccess(HostError):
    """A pointer and size from the module fall outside its memory (or allocation failed)."""


class CalloutFailure(WasmError):
    """Raised by a scripted upstream handler to make a callout fail."""


class CalloutTimeout(CalloutFailure):
    """The callout times out: Envoy's async client answers 504 "upstream request timeout"
    (gRPC: DEADLINE_EXCEEDED)."""


class CalloutReset(CalloutFailure):
    """The upstream resets the callout: the filter's callback gets no headers or body and
    ``proxy_get_status`` reports BROKEN_CONNECTION "reset" (gRPC: UNAVAILABLE)."""
