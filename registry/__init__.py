"""envoy-extkit's OCI client for Wasm images: push and pull in the layouts Envoy Gateway accepts."""

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
