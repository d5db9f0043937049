"""Errors of the OCI registry client.

    RegistryError            base; every message names the cause and what to do
    ├── InvalidReference     not oci://HOST/REPO[:TAG][@sha256:DIGEST]
    ├── AuthError            401/403: which credentials were tried
    ├── NotFound             404: repository, tag or blob
    ├── DigestMismatch       content whose sha256 is not the one expected (nothing is kept)
    ├── UnsupportedImage     a layout Envoy Gateway does not accept (what was found)
    ├── UnsafeArchive        path traversal, links or a decompression bomb in a layer
    └── TransportError       TLS failure, connection refused, repeated 5xx
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of the errors this package raises."""


class InvalidReference(RegistryError):
    pass


class AuthError(RegistryError):
    pass


class NotFound(RegistryError):
    pass


class DigestMismatch(RegistryError):
    pass


class UnsupportedImage(RegistryError):
    pass


class UnsafeArchive(RegistryError):
    pass


class TransportError(RegistryError):
    pass
