"""Addresses as both generators read them: host:port, Unix socket paths, CIDRs."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence

from extproc import ServeError
from extproc._config import MAX_UDS_PATH, join_address, split_address

from .errors import ConfigError

__all__ = ["MAX_UDS_PATH", "host_port", "is_ip", "is_socket_path", "join_address",
           "parse_cidrs", "socket_path"]


def is_socket_path(address: str) -> bool:
    """A Unix socket path rather than host:port."""
    return ":" not in address or address.startswith(("/", "."))


def socket_path(path: str) -> str:
    """``path`` when the kernel can bind it (AF_UNIX paths are limited in bytes)."""
    if len(os.fsencode(path)) > MAX_UDS_PATH:
        raise ConfigError(f"Unix socket path {path!r} is longer than {MAX_UDS_PATH} bytes; "
                          "choose a shorter path")
    return path


def host_port(address: str, what: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) -> (host, port); ConfigError naming ``what``."""
    try:
        return split_address(address)
    except ServeError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_cidrs(values: Sequence[str]) -> tuple[str, ...]:
    """Canonical CIDRs; ConfigError for anything that is not one (host bits set included)."""
    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_network(value, strict=True)))
        except ValueError:
            raise ConfigError(f"{value!r} is not a CIDR such as 10.0.0.0/8") from None
    return tuple(out)
