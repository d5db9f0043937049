"""envoy-extkit's Wasm tools: validate and inspect proxy-wasm modules, verify digests, and run
filters in a proxy-wasm host emulator (:mod:`wasm.emulator`) from tests."""

from .emulator import LogLine, ProxyWasm
from .errors import (
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

__all__ = [
    "KNOWN_ABIS",
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
