"""Validate and inspect a Wasm module (wasmtime): proxy-wasm ABI, exports, imports, sha256."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import wasmtime

from .errors import DigestMismatch, InvalidModule

WASM_MAGIC = b"\x00asm"
ABI_PREFIX = "proxy_abi_version_"
KNOWN_ABIS = ("0_1_0", "0_2_0", "0_2_1")


@dataclass(frozen=True)
class ModuleInfo:
    """What ``inspect`` finds in a module."""

    size: int
    sha256: str
    abi_versions: tuple[str, ...]
    """proxy-wasm ABI versions the module exports, e.g. ``("0_2_1",)``; empty: not proxy-wasm."""
    callbacks: tuple[str, ...]
    """Exported ``proxy_on_*`` functions."""
    exports: tuple[str, ...] = field(default=())
    imports: tuple[tuple[str, str], ...] = field(default=())
    """``(module, name)`` of each import, e.g. ``("env", "proxy_log")``."""
    import_problems: tuple[tuple[str, str], ...] = field(default=())
    """``(module.name, "missing" | "signature")`` for each import the proxy-wasm emulator
    (and Envoy) would not give the module (see :func:`import_problems`)."""

    @property
    def is_proxy_wasm(self) -> bool:
        return bool(self.abi_versions)

    @property
    def emulator_missing(self) -> tuple[str, ...]:
        """Why the proxy-wasm emulator (:mod:`wasm.emulator`) would refuse the module: its ABI,
        imports it does not provide, imports declared with another signature."""
        from .abi import SUPPORTED_ABIS, supported_abi

        if supported_abi(self.abi_versions) is None:
            versions = ", ".join(self.abi_versions) or "none"
            return (f"proxy-wasm ABI {versions} (the emulator speaks "
                    f"{', '.join(SUPPORTED_ABIS)})",)
        return tuple(name if why == "missing" else f"{name} (signature)"
                     for name, why in self.import_problems)

    @property
    def emulator_stubbed(self) -> tuple[str, ...]:
        """Imports the emulator provides only as stubs answering UNIMPLEMENTED."""
        from .abi import provided_imports, supported_abi

        provided = provided_imports(supported_abi(self.abi_versions) or "0_2_1")
        return tuple(f"{m}.{n}" for m, n in self.imports if provided.get((m, n)) == "stub")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["imports"] = [f"{m}.{n}" for m, n in self.imports]
        data["proxy_wasm"] = self.is_proxy_wasm
        data["emulator"] = {"missing": list(self.emulator_missing),
                            "stubbed": list(self.emulator_stubbed)}
        return data


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inspect_bytes(data: bytes) -> ModuleInfo:
    """Validate ``data`` with wasmtime and describe it; InvalidModule when it is not Wasm."""
    if not data.startswith(WASM_MAGIC):
        raise InvalidModule(f"not a WebAssembly module: starts with {data[:4]!r}, "
                            "expected b'\\x00asm'")
    engine = wasmtime.Engine()
    try:
        module = wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "rejected"
        raise InvalidModule(f"invalid WebAssembly module: {first}") from None
    exports = tuple(e.name for e in module.exports)
    abis = tuple(name[len(ABI_PREFIX):] for name in exports if name.startswith(ABI_PREFIX))
    from .abi import supported_abi

    return ModuleInfo(
        import_problems=import_problems(module, supported_abi(abis) or "0_2_1"),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        abi_versions=abis,
        callbacks=tuple(n for n in exports if n.startswith("proxy_on_")),
        exports=exports,
        imports=tuple((i.module, i.name or "") for i in module.imports),
    )


def inspect_file(path: str | os.PathLike[str]) -> ModuleInfo:
    """:func:`inspect_bytes` of a file; an InvalidModule names the file."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return inspect_bytes(data)
    except InvalidModule as exc:
        raise InvalidModule(f"{os.fspath(path)}: {exc}") from None


def normalise_sha256(value: str) -> str:
    """``sha256:HEX`` or ``HEX`` -> lower-case HEX; ValueError when it is not 64 hex digits."""
    text = value.strip().lower()
    text = text.removeprefix("sha256:")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"{value!r} is not a sha256 (64 hex digits, optionally 'sha256:')")
    return text


def verify_file(path: str | os.PathLike[str], expected: str) -> str:
    """Check the file's sha256; returns it, raises DigestMismatch otherwise."""
    want = normalise_sha256(expected)
    actual = sha256_file(path)
    if actual != want:
        raise DigestMismatch(f"{os.fspath(path)}: sha256 is {actual}, expected {want}",
                             expected=want, actual=actual)
    return actual


def import_problems(module: wasmtime.Module, abi: str) -> tuple[tuple[str, str], ...]:
    """``(module.name, "missing" | "signature")`` for each import of ``module`` that the
    emulator does not give a module of ``abi``, or declared with another signature."""
    from .abi import import_signatures

    signatures = import_signatures(abi)
    found = []
    for item in module.imports:
        label = f"{item.module}.{item.name}"
        expected = signatures.get((item.module, item.name or ""))
        if expected is None or not isinstance(item.type, wasmtime.FuncType):
            found.append((label, "missing"))
        elif (tuple(str(t) for t in item.type.params),
              tuple(str(t) for t in item.type.results)) != expected:
            found.append((label, "signature"))
    return tuple(found)
