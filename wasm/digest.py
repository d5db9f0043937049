"""Digests of modules, as Envoy and Envoy Gateway check them; nothing here loads wasmtime."""

from __future__ import annotations

import hashlib
import os

from .errors import DigestMismatch

WASM_MAGIC = b"\x00asm"


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
