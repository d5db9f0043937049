"""envoy-extkit's Wasm tools: validate and inspect proxy-wasm modules, verify digests, and run
filters in a proxy-wasm host emulator (:mod:`wasm.emulator`) from tests."""

from .calls import Call, Reply
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
    normalise_sha256,
    sha256_file,
    verify_file,
)
from .state import LogLine

__all__ = [
    "KNOWN_ABIS",
    "Call",
    "CalloutFailure",
    "CalloutReset",
    "CalloutTimeout",
    "DigestMismatch",
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
