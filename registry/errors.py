"""Errors of the OCI registry client (under ``extproc.errors.ExtkitError``, envoy-extkit's root).

    RegistryError            base; every message names the cause and what to do; ``url`` and
    │                        ``status`` carry the request and the HTTP status when there is one
    ├── InvalidReference     not oci://HOST/REPO[:TAG][@sha256:DIGEST], userinfo, a bad host,
    │                        plain HTTP to a host that is not loopback
    ├── InvalidArgument      a bad argument to a library call (also a ValueError)
    ├── AuthError            401/403, a token service that fails, a realm that is not HTTPS:
    │                        which credentials were tried
    ├── NotFound             404: repository, tag or blob
    ├── DigestMismatch       content whose sha256 (or declared size) is not the one expected
    │                        (also wasm.DigestMismatch: one class to catch for both)
    ├── UnsupportedImage     a layout Envoy Gateway does not accept, a manifest that is not one
    │   └── NotAModule       the file pushed is not a valid Wasm module (also wasm.InvalidModule)
    ├── UnsafeArchive        path traversal, links or a decompression bomb in a layer
    │   └── LimitExceeded    a body, a layer or an archive over its size or entry limit
    └── TransportError       TLS failure, connection refused, repeated 5xx, short reads,
                             deadlines, redirect loops, refused redirects, bad encodings
"""

from __future__ import annotations

from extproc.errors import ExtkitError
from wasm.errors import DigestMismatch as WasmDigestMismatch
from wasm.errors import InvalidModule


class RegistryError(ExtkitError):
    """Base class of the errors this package raises."""

    def __init__(self, message: str, *, url: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class InvalidReference(RegistryError):
    pass


class InvalidArgument(RegistryError, ValueError):
    pass


class AuthError(RegistryError):
    pass


class NotFound(RegistryError):
    pass


class DigestMismatch(RegistryError, WasmDigestMismatch):
    """Content whose digest is not the one asked for: ``expected`` and ``actual`` (sha256:...)
    when both are known, else empty."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None,
                 expected: str = "", actual: str = "") -> None:
        super().__init__(message, url=url, status=status)
        self.expected = expected
        self.actual = actual


class UnsupportedImage(RegistryError):
    pass


class NotAModule(UnsupportedImage, InvalidModule):
    pass


class UnsafeArchive(RegistryError):
    pass


class LimitExceeded(UnsafeArchive):
    pass


class TransportError(RegistryError):
    pass
