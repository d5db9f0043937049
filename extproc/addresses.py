"""Where a processor listens: Unix socket paths and host:port addresses (public: the config
generators check addresses the way the server does)."""

from __future__ import annotations

from .errors import ServeError

#: The longest Unix socket path Linux takes (sun_path holds 108 bytes with the final NUL).
MAX_UDS_PATH = 107


def split_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9000"`` / ``"[::1]:9000"`` -> (host, port); ServeError when malformed."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ServeError(f"address {address!r} is not host:port (e.g. 127.0.0.1:9000)")
    port = int(port_text)
    if port > 65535:
        raise ServeError(f"port {port} is out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def dial_target(listen: str, is_uds: bool, port: int | None) -> str:
    """The gRPC target a client dials for a server bound at ``listen`` (``unix:/path``, or
    ``host:port`` with the port it got; an IPv6 host in brackets)."""
    if is_uds:
        return "unix:" + listen
    host, _ = split_address(listen)
    return f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
