"""envoy-extkit's Wasm tools: validate and inspect proxy-wasm modules, verify digests."""

from .errors import DigestMismatch, InvalidModule, WasmError
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
    "InvalidModule",
    "ModuleInfo",
    "WasmError",
    "inspect_bytes",
    "inspect_file",
    "normalise_sha256",
    "sha256_file",
    "verify_file",
]
