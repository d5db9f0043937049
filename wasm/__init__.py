"""envoy-extkit's Wasm tools: validate and inspect proxy-wasm modules, verify digests, and run
filters in a proxy-wasm host emulator (:mod:`wasm.emulator`) from tests."""

# Names are imported from their modules on first use: a digest check or an error class does
# not load wasmtime and the emulator.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .calls import Call, GrpcStream, GrpcStreamHandler, Reply
    from .digest import normalise_sha256, sha256_file, verify_file
    from .emulator import ProxyWasm
    from .errors import (
        CalloutFailure,
        CalloutReset,
        CalloutTimeout,
        DigestMismatch,
        HostError,
        InvalidModule,
        MemoryAccess,
        MissingImports,
        StartFailed,
        UnsupportedAbi,
        WasmError,
        WasmTrap,
    )
    from .exchange import HttpResult, LocalResponse
    from .module import (
        KNOWN_ABIS,
        ModuleInfo,
        inspect_bytes,
        inspect_file,
    )
    from .state import LogLine

__all__ = [
    "KNOWN_ABIS",
    "Call",
    "CalloutFailure",
    "CalloutReset",
    "CalloutTimeout",
    "DigestMismatch",
    "GrpcStream",
    "GrpcStreamHandler",
    "HostError",
    "HttpResult",
    "InvalidModule",
    "LocalResponse",
    "LogLine",
    "MemoryAccess",
    "MissingImports",
    "ModuleInfo",
    "ProxyWasm",
    "Reply",
    "StartFailed",
    "UnsupportedAbi",
    "WasmError",
    "WasmTrap",
    "inspect_bytes",
    "inspect_file",
    "normalise_sha256",
    "sha256_file",
    "verify_file",
]

_WHERE = {
    "Call": "calls",
    "CalloutFailure": "errors",
    "CalloutReset": "errors",
    "CalloutTimeout": "errors",
    "DigestMismatch": "errors",
    "GrpcStream": "calls",
    "GrpcStreamHandler": "calls",
    "HostError": "errors",
    "HttpResult": "exchange",
    "InvalidModule": "errors",
    "KNOWN_ABIS": "module",
    "LocalResponse": "exchange",
    "LogLine": "state",
    "MemoryAccess": "errors",
    "MissingImports": "errors",
    "ModuleInfo": "module",
    "ProxyWasm": "emulator",
    "Reply": "calls",
    "StartFailed": "errors",
    "UnsupportedAbi": "errors",
    "WasmError": "errors",
    "WasmTrap": "errors",
    "inspect_bytes": "module",
    "inspect_file": "module",
    "normalise_sha256": "digest",
    "sha256_file": "digest",
    "verify_file": "digest",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
