"""``ServerConfig``: every setting of the ext_proc server, validated in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

from .addresses import MAX_UDS_PATH, split_address
from .errors import ServeError
from .transports.known import TRANSPORTS, names

#: The gRPC service a processor serves; its health service answers for it (and for "").
SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"
LOOPS = ("auto", "uvloop", "asyncio")


@dataclass(frozen=True)
class ServerConfig:
    """How and where a Processor is served. Exactly one of ``uds`` and ``address``."""

    uds: str | None = field(default=None, metadata={
        "help": "Listen on this Unix socket (the sidecar case). With workers > 1, worker i "
                "listens on NAME-i.EXT."})
    address: str | None = field(default=None, metadata={
        "help": "Listen on TCP host:port instead. With workers > 1, worker i listens on "
                "port + i."})
    workers: int = field(default=1, metadata={
        "help": "Server processes; list every worker's address (addresses()) as endpoints of "
                "Envoy's ext_proc cluster."})
    socket_mode: int = field(default=0o660, metadata={
        "help": "File mode of the Unix socket (Envoy's user needs read/write)."})
    grace_period: float = field(default=10.0, metadata={
        "help": "Seconds in-flight requests get after SIGTERM, SIGHUP or SIGINT."})
    max_message_bytes: int = field(default=32 * 1024 * 1024, metadata={
        "help": "Largest gRPC message either way (a BUFFERED body travels in one)."})
    tls_cert: str | None = field(default=None, metadata={
        "help": "PEM certificate chain for TLS (TCP only)."})
    tls_key: str | None = field(default=None, metadata={
        "help": "PEM private key for the TLS certificate."})
    tls_client_ca: str | None = field(default=None, metadata={
        "help": "Require client (Envoy) certificates signed by this CA."})
    loop: str = field(default="auto", metadata={
        "help": "Event loop: uvloop (about 10% less CPU per request), asyncio, or auto "
                "(uvloop when installed).",
        "choices": LOOPS})
    admin: str | None = field(default=None, metadata={
        "help": "Serve /metrics (Prometheus), /healthz and /readyz over HTTP on HOST:PORT "
                "(a bare PORT means 127.0.0.1:PORT). Off by default; with workers > 1 one "
                "endpoint shows every worker."})
    stall_timeout: float = field(default=5.0, metadata={
        "help": "Seconds a serving event loop may go without turning (a hook that blocks "
                "it) before the admin endpoint's /healthz and /readyz fail."})
    transport: str = field(default="grpcio", metadata={
        "help": "grpcio: a grpc.aio server in this process. pyvoy: the same processor inside "
                "an Envoy process (pyvoy), less CPU and latency per request; needs pyvoy "
                "installed apart (docs/how-to/transports.md). Another package's transport by "
                "the name it registers (entry point group extproc.transports)."})

    def __post_init__(self) -> None:
        if (self.uds is None) == (self.address is None):
            raise ServeError.naming("give exactly one of {uds} (a Unix socket path) or {address} "
                                   "(host:port)")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ServeError.naming("{workers} must be a positive integer, got {got!r}",
                                   got=self.workers)
        if not 0 <= self.socket_mode <= 0o777:
            raise ServeError.naming("{socket_mode} must be a file mode such as 660, got {got:o}",
                                    got=self.socket_mode)
        if self.loop not in LOOPS:
            raise ServeError.naming("{loop} must be auto, uvloop or asyncio, got {got!r}",
                                   got=self.loop)
        if self.loop == "uvloop" and _uvloop() is None:
            raise ServeError.naming("{loop=uvloop} but uvloop is not installed (pip install "
                                    "uvloop)", uvloop="uvloop")
        if self.transport not in TRANSPORTS and self.transport not in names():
            raise ServeError.naming("{transport} must be one of {known}, got {got!r}",
                                    known=", ".join(names()), got=self.transport)
        if self.transport == "pyvoy":
            from .transports.pyvoy_env import check_installed

            check_installed()
        if self.grace_period < 0:
            raise ServeError.naming("{grace_period} must be >= 0 seconds")
        if not self.stall_timeout > 0:
            raise ServeError.naming("{stall_timeout} must be > 0 seconds")
        if self.max_message_bytes < 4096:
            raise ServeError.naming("{max_message_bytes} must be at least 4096")
        if self.admin is not None:
            object.__setattr__(self, "admin", admin_address(self.admin))
        if self.uds is not None:
            if self.tls_cert or self.tls_key or self.tls_client_ca:
                raise ServeError.naming("TLS ({tls_cert}, {tls_key}, {tls_client_ca}) applies "
                                        "to TCP ({address}) only; a Unix socket is protected "
                                        "by its file mode")
            for path in self.addresses():
                if len(os.fsencode(path)) > MAX_UDS_PATH:
                    raise ServeError(f"Unix socket path {path!r} is longer than {MAX_UDS_PATH} "
                                     "bytes; choose a shorter path")
        else:
            _, port = split_address(self.address or "")
            if self.workers > 1 and port == 0:
                raise ServeError.naming("{workers} > 1 needs a fixed port (worker i listens "
                                        "on port + i)")
            if port + self.workers - 1 > 65535:
                raise ServeError(f"ports {port}..{port + self.workers - 1} exceed 65535")
            if bool(self.tls_cert) != bool(self.tls_key):
                raise ServeError.naming("TLS needs both {tls_cert} and {tls_key}")
            if self.tls_client_ca and not self.tls_cert:
                raise ServeError.naming("{tls_client_ca} needs {tls_cert} and {tls_key}")
            for tls_file in (self.tls_cert, self.tls_key, self.tls_client_ca):
                if tls_file and not os.path.isfile(tls_file):
                    raise ServeError(f"TLS file {tls_file} does not exist")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A new event loop of the configured kind."""
        import asyncio

        uvloop = _uvloop() if self.loop != "asyncio" else None
        return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()

    def listen_on(self, listen: str | None = None) -> str:
        """Where one server binds: ``listen`` (default: the first of :meth:`addresses`), a
        Unix socket path made absolute."""
        chosen = listen if listen is not None else self.addresses()[0]
        return os.path.abspath(chosen) if self.uds is not None else chosen

    def addresses(self) -> list[str]:
        """Where each worker listens: Unix socket paths, or ``host:port`` strings.

        Envoy must list all of them as endpoints of the ext_proc cluster.
        """
        if self.uds is not None:
            if self.workers == 1:
                return [self.uds]
            stem, ext = os.path.splitext(self.uds)
            return [f"{stem}-{i}{ext}" for i in range(self.workers)]
        host, port = split_address(self.address or "")
        if self.workers == 1:
            return [join_address(host, port)]
        return [join_address(host, port + i) for i in range(self.workers)]


def _uvloop() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def admin_address(text: str) -> str:
    """``"9901"`` -> ``"127.0.0.1:9901"`` (loopback unless a host is given); ``host:port`` is
    checked and kept."""
    text = str(text).strip()
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    host, port = split_address(text)
    return join_address(host, port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
