"""envoy-extkit's OCI client for Wasm images: push and pull in the layouts Envoy Gateway accepts."""

# Names are imported from their modules on first use, so that importing one light module of
# this package (its errors, say) does not load everything the package can do.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import Credentials, from_docker_config, from_secret_file
    from .cache import PULL_POLICIES, Cache
    from .check import CheckResult, check_file, check_image
    from .client import RegistryClient
    from .errors import (
        AuthError,
        DigestMismatch,
        InvalidArgument,
        InvalidReference,
        LimitExceeded,
        NotAModule,
        NotFound,
        RegistryError,
        TransportError,
        UnsafeArchive,
        UnsupportedImage,
    )
    from .http_source import pull_http
    from .layout import LAYOUTS, build_image
    from .reference import Reference, is_loopback, parse_reference
    from .transfer import Connection, PullResult, PushResult, pull, push

__all__ = [
    "LAYOUTS",
    "PULL_POLICIES",
    "AuthError",
    "Cache",
    "CheckResult",
    "Connection",
    "Credentials",
    "DigestMismatch",
    "InvalidArgument",
    "InvalidReference",
    "LimitExceeded",
    "NotAModule",
    "NotFound",
    "PullResult",
    "PushResult",
    "Reference",
    "RegistryClient",
    "RegistryError",
    "TransportError",
    "UnsafeArchive",
    "UnsupportedImage",
    "build_image",
    "check_file",
    "check_image",
    "from_docker_config",
    "from_secret_file",
    "is_loopback",
    "parse_reference",
    "pull",
    "pull_http",
    "push",
]

_WHERE = {
    "AuthError": "errors",
    "Cache": "cache",
    "CheckResult": "check",
    "Connection": "transfer",
    "Credentials": "auth",
    "DigestMismatch": "errors",
    "InvalidArgument": "errors",
    "InvalidReference": "errors",
    "LAYOUTS": "layout",
    "LimitExceeded": "errors",
    "NotAModule": "errors",
    "NotFound": "errors",
    "PULL_POLICIES": "cache",
    "PullResult": "transfer",
    "PushResult": "transfer",
    "Reference": "reference",
    "RegistryClient": "client",
    "RegistryError": "errors",
    "TransportError": "errors",
    "UnsafeArchive": "errors",
    "UnsupportedImage": "errors",
    "build_image": "layout",
    "check_file": "check",
    "check_image": "check",
    "from_docker_config": "auth",
    "from_secret_file": "auth",
    "is_loopback": "reference",
    "parse_reference": "reference",
    "pull": "transfer",
    "pull_http": "http_source",
    "push": "transfer",
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
