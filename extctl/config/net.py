"""Addresses as both generators read them: host:port, Unix socket paths, CIDRs."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from extproc import ServeError
from extproc.addresses import MAX_UDS_PATH, split_address

from .errors import ConfigError

__all__ = ["MAX_UDS_PATH", "host_port", "is_ip", "is_socket_path", "parse_cidrs"]


def is_socket_path(address: str) -> bool:
    """A Unix socket path rather than host:port."""
    return ":" not in address or address.startswith(("/", "."))


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
