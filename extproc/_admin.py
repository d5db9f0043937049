"""The admin endpoint: ``/metrics`` (Prometheus text format), ``/healthz``, ``/readyz``.

A small threaded HTTP server, so a scrape never waits for the event loop that serves Envoy.
``/readyz`` answers 200 only while the gRPC health service says SERVING, so Kubernetes HTTP
probes see what Envoy's gRPC health checks see, 503 while draining.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ._config import ServerConfig, split_address
from ._errors import ServeError
from ._metrics import (
    SERVING,
    Collector,
    Metrics,
    multiprocess_dir,
    registry,
    remove_multiprocess_dir,
    serving_workers,
    worker_file,
    worker_gone,
)
from ._record import Observer

if TYPE_CHECKING:
    from ._processor import Processor

logger = logging.getLogger("extproc.admin")


class AdminServer:
    """``start()`` binds ``address`` (host:port) and serves on a daemon thread; ``stop()``."""

    def __init__(self, address: str, registry: Any, ready: Callable[[], bool]) -> None:
        self.address = address
        self.registry = registry
        self.ready = ready
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def bind(self) -> ThreadingHTTPServer:
        host, port = split_address(self.address)
        handler = type("Handler", (_Handler,), {"admin": self})
        server_class = _V6Server if ":" in host else ThreadingHTTPServer
        try:
            httpd = server_class((host, port), handler)
        except OSError as exc:
            raise ServeError(f"cannot listen on admin address {self.address}: {exc}") from None
        httpd.daemon_threads = True
        self._httpd = httpd
        logger.info("admin endpoint on %s (/metrics, /healthz, /readyz)", self.url)
        return httpd

    def start(self) -> AdminServer:
        httpd = self.bind()
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="extproc-admin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    admin: AdminServer
    server_version = "extproc-admin"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._reply(200, generate_latest(self.admin.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            if self.admin.ready():
                self._reply(200, b"ok\n")
            else:
                self._reply(503, b"not serving\n")
        else:
            self._reply(404, b"not found: /metrics, /healthz, /readyz\n")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("admin: " + format, *args)


# -- wiring into the server (one process) and the supervisor (workers) ----------------------


def make_observer(processor: type[Processor], config: ServerConfig,
             counts: dict[str, int]) -> Observer | None:
    """What a server process records; metrics only with ``admin`` (multiprocess values when a
    supervisor runs workers, see ``_metrics``)."""
    metrics = None
    if config.admin is not None:
        metrics = Metrics(processor.__name__, worker_file() if config.workers > 1 else None)
    return Observer.create(processor.__name__, metrics, counts)


def on_serving(config: ServerConfig, observer: Observer | None,
            ready: Callable[[], bool]) -> AdminServer | None:
    """The server says SERVING: tell the metrics; serve the endpoint (``/readyz`` asks
    ``ready``) unless a supervisor does (workers > 1)."""
    if observer is not None and observer.metrics is not None:
        observer.metrics.values[SERVING] = 1
    if config.admin is None or config.workers > 1:
        return None
    assert observer is not None and observer.metrics is not None
    metrics = observer.metrics
    return AdminServer(config.admin, registry(Collector(metrics.processor, metrics)),
                       ready).start()


def on_draining(observer: Observer | None) -> None:
    if observer is not None and observer.metrics is not None:
        observer.metrics.values[SERVING] = 0


class SupervisorAdmin:
    """With workers > 1 and ``admin``: the metric files' directory, and one admin process
    (forked before the workers, so the supervisor itself never runs a thread and forks)
    serving what all workers wrote. Ready while every worker says SERVING."""

    def __init__(self, config: ServerConfig, processor: str) -> None:
        self.config = config
        self.processor = processor
        self.pid: int | None = None
        self._directory: str | None = None
        self._server: AdminServer | None = None
        self._stopping = False

    def start(self) -> None:
        config = self.config
        if config.admin is None:
            return
        self._directory = multiprocess_dir()
        collector = Collector(self.processor, directory=self._directory)
        workers = config.workers
        self._server = AdminServer(config.admin, registry(collector),
                                   lambda: serving_workers(collector) >= workers)
        self._server.bind()  # in the supervisor: an address in use fails before any fork
        self._spawn()

    def _spawn(self) -> None:
        assert self._server is not None and self._server._httpd is not None
        httpd = self._server._httpd
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the supervisor decides
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            try:
                httpd.serve_forever(poll_interval=0.2)
            finally:
                os._exit(1)
        self.pid = pid

    def reaped(self, pid: int) -> bool:
        """True when ``pid`` was the admin process (restarted unless stopping)."""
        if pid != self.pid:
            return False
        self.pid = None
        if not self._stopping:
            logger.warning("admin process exited; restarting")
            self._spawn()
        return True

    def worker_gone(self, pid: int) -> None:
        if self._directory is not None:
            worker_gone(self._directory, pid)

    def stop(self) -> None:
        self._stopping = True
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pid = None
        if self._server is not None and self._server._httpd is not None:
            self._server._httpd.server_close()
        if self._directory is not None:
            remove_multiprocess_dir(self._directory)
            self._directory = None
