"""Local ports: one another process listens on is refused (Envoy's listeners would share it),
and a free one for a child to bind."""

from __future__ import annotations

import errno
import socket

from extproc.addresses import split_address

from ..errors import PortInUse

__all__ = ["free_port", "require_free"]


def require_free(address: str, what: str, hint: str = "another extctl dev?") -> None:
    """Refuse ``address`` (host:port; port 0 is always free) when another process listens there.

    Envoy's listeners set SO_REUSEPORT, so a second Envoy binds a port in use too and the
    kernel splits the connections between both. A bind without SO_REUSEPORT fails on a port
    someone listens on; SO_REUSEADDR keeps an earlier run's connections in TIME_WAIT from
    counting. Other bind errors are left to the real start, which names them.
    """
    host, port = split_address(address)
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"{address} ({what}) is already in use: another process "
                                f"listens there ({hint}); stop it or choose another port",
                                address) from None


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now (for a process started next to bind)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
