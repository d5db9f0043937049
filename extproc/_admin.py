"""The admin endpoint: ``/metrics`` (Prometheus text format), ``/healthz``, ``/readyz``.

An asyncio HTTP server on a loop of its own (a thread of the server process, or the admin
process with workers), so a scrape never waits for the loop that serves Envoy. The probes do
ask that loop, through its heartbeat (see ``_metrics``): ``/healthz`` fails when a serving
loop has not turned for ``stall_timeout`` seconds (a hook that blocks it), ``/readyz`` also
while a worker is not SERVING (starting, draining, exited), so Kubernetes probes see what
Envoy sees.

The port is reachable by whatever reaches the pod, so every connection is bounded: at most
:data:`MAX_CONNECTIONS` at once (past that the one waiting longest for its request is
closed, so a flood of half-sent requests cannot keep probes out), one request per
connection, :data:`REQUEST_DEADLINE` for reading it and writing the answer, a request head
of at most :data:`MAX_HEAD` bytes. A peer that goes away mid-answer is logged at DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._config import ServerConfig
from ._metrics import (
    HEARTBEAT,
    PID,
    SERVING,
    Collector,
    Metrics,
    SharedValues,
    Slot,
    registry,
)
from ._record import Observer, StreamRecord
from .addresses import split_address
from .errors import ServeError
from .lifecycle import HANDLED, die_with_parent

if TYPE_CHECKING:
    from ._processor import Processor

logger = logging.getLogger("extproc.admin")

MAX_CONNECTIONS = 64
REQUEST_DEADLINE = 5.0
MAX_HEAD = 8192

#: What the probes answer: (problems that fail /healthz, problems that fail /readyz).
Check = Callable[[], tuple[list[str], list[str]]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class AdminServer:
    """``start()`` binds ``address`` (host:port) and serves on a thread with its own loop;
    ``stop()``. The admin process (workers > 1) calls ``bind()`` then ``run()``."""

    def __init__(self, address: str, registry: Any, check: Check) -> None:
        self.address = address
        self.registry = registry
        self.check = check
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        # Open connections, oldest first, and whether each has read its request.
        self._connections: dict[asyncio.StreamWriter, bool] = {}
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        assert self._socket is not None
        host, port = self._socket.getsockname()[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def bind(self) -> socket.socket:
        host, port = split_address(self.address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # "::" is every address, IPv4 too (as 0.0.0.0 is for IPv4): kubelet probes the pod's
        # IPv4 address.
        dualstack = host == "::" and socket.has_dualstack_ipv6()
        try:
            sock = socket.create_server((host, port), family=family, backlog=128,
                                        dualstack_ipv6=dualstack)
        except OSError as exc:
            raise ServeError(f"cannot listen on admin address {self.address}: "
                             f"{exc.strerror or exc}") from None
        self._socket = sock
        logger.info("admin endpoint on %s (/metrics, /healthz, /readyz)", self.url)
        return sock

    def start(self) -> AdminServer:
        """Serve on a daemon thread until :meth:`stop` (binding first unless :meth:`bind`
        was called)."""
        if self._socket is None:
            self.bind()
        loop = self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.run(started.set))
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="extproc-admin", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    async def run(self, started: Callable[[], None] | None = None) -> None:
        """Serve the bound socket until :meth:`stop` (or :meth:`request_stop`)."""
        assert self._socket is not None
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self._socket,
                                            limit=MAX_HEAD)
        if started is not None:
            started()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for writer in list(self._connections):
                writer.transport.abort()
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            # Every connection's handler ends here, quietly, before the loop closes.
            await asyncio.gather(*handlers, return_exceptions=True)

    def request_stop(self) -> None:
        """From the loop's own thread (a signal handler)."""
        if self._stop is not None:
            self._stop.set()

    def close_socket(self) -> None:
        """In a process forked from the one that bound it (a worker): let go of the port, so
        that it is free once the admin process and the supervisor are gone."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self.request_stop)
            thread.join(5)
        self._loop = self._thread = None
        if self._socket is not None:
            self._socket.close()

    # -- one connection ---------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        connections = self._connections
        connections[writer] = False
        if len(connections) > MAX_CONNECTIONS:
            # Full: close the connection waiting longest for its request (else the oldest).
            victim = next((w for w, read in connections.items() if not read),
                          next(iter(connections)))
            connections.pop(victim, None)
            victim.transport.abort()
        try:
            await asyncio.wait_for(self._exchange(reader, writer), REQUEST_DEADLINE)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError,
                OSError) as exc:
            logger.debug("admin: connection ended early: %s", type(exc).__name__)
            writer.transport.abort()
        except asyncio.CancelledError:
            # Only run() cancels these, when the endpoint stops: ended, not an error (asyncio
            # would log a cancelled connection task as one).
            writer.transport.abort()
        finally:
            connections.pop(writer, None)
            writer.close()
            if task is not None:
                self._handlers.discard(task)

    async def _exchange(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        # The head, line by line (CRLF or a bare LF ends a line) up to an empty line.
        lines: list[bytes] = []
        size = 0
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                size = MAX_HEAD + 1
            else:
                size += len(line)
                lines.append(line)
            if size > MAX_HEAD:
                await self._reply(writer, 431, b"request head too large\n")
                return
            if line in (b"\r\n", b"\n"):
                break
        if writer in self._connections:
            self._connections[writer] = True
        parts = lines[0].decode("latin-1").strip().split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._reply(writer, 400, b"bad request\n")
            return
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            await self._reply(writer, 405, b"GET or HEAD only\n", allow=True)
            return
        status, body, content_type = self._answer(target.split("?", 1)[0])
        await self._reply(writer, status, body, content_type, head_only=method == "HEAD")

    def _answer(self, path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST
        if path in ("/healthz", "/readyz"):
            dead, unready = self.check()
            problems = dead if path == "/healthz" else unready
            if problems:
                return 503, "".join(f"{p}\n" for p in problems).encode(), "text/plain"
            return 200, b"ok\n", "text/plain"
        return 404, b"not found: /metrics, /healthz, /readyz\n", "text/plain"

    async def _reply(self, writer: asyncio.StreamWriter, status: int, body: bytes,
                     content_type: str = "text/plain", head_only: bool = False,
                     allow: bool = False) -> None:
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
                + ("allow: GET, HEAD\r\n" if allow else "")
                + "connection: close\r\n\r\n").encode()
        writer.write(head if head_only else head + body)
        await writer.drain()


# -- what the probes say ----------------------------------------------------------------------


def probe_check(slots: Callable[[], list[tuple[str, Any]]], stall_timeout: float) -> Check:
    """The probes over ``slots()`` (a name and a values array per serving process that
    should be there): not live when a process's heartbeat is older than ``stall_timeout``;
    not ready when one is not live, not SERVING, or not there."""

    def check() -> tuple[list[str], list[str]]:
        now = time.monotonic()
        dead: list[str] = []
        unready: list[str] = []
        for name, values in slots():
            beat = values[HEARTBEAT]
            pid = int(values[PID])
            who = f"{name} (pid {pid})" if pid else name
            if beat and now - beat > stall_timeout:
                dead.append(f"{who}: its event loop has not turned for {now - beat:.1f}s "
                            f"(stall timeout {stall_timeout:g}s): a hook blocks it")
            elif not beat or not values[SERVING]:
                unready.append(f"{who}: not serving")
        return dead, dead + unready

    return check


async def heartbeat(values: Any, interval: float,
                    parent: int | None = None) -> None:
    """Write ``time.monotonic()`` into ``values`` (a metrics array, or None) every
    ``interval`` seconds while the loop turns. With ``parent`` (a worker), also end this
    process when the supervisor is gone and the kernel did not say so (PR_SET_PDEATHSIG is
    Linux's)."""
    while True:
        if values is not None:
            values[HEARTBEAT] = time.monotonic()
        if parent is not None and os.getppid() != parent:
            logger.warning("the supervisor (pid %d) is gone; stopping", parent)
            os.kill(os.getpid(), signal.SIGTERM)
            parent = None
        await asyncio.sleep(interval)


# How the supervisor stops the admin process (signals the operator sends are ignored there).
_STOP = signal.SIGUSR1


def heartbeat_interval(config: ServerConfig) -> float:
    return min(0.5, config.stall_timeout / 4)


# -- wiring into the server (one process) and the supervisor (workers) ----------------------


def make_observer(processor: type[Processor], config: ServerConfig,
                  counts: dict[str, int], slot: Any = None,
                  view: Callable[[StreamRecord], None] | None = None) -> Observer | None:
    """What a server process records; metrics only with ``admin`` (in ``slot`` of the
    supervisor's shared values when it runs workers); ``view`` told about every stream."""
    metrics = None
    if config.admin is not None:
        metrics = Metrics(processor.__name__, slot)
    return Observer.create(processor.__name__, metrics, counts, view)


def bind_admin(config: ServerConfig, observer: Observer | None) -> AdminServer | None:
    """The endpoint of a server that serves it itself (not with workers > 1, where the
    supervisor's admin process does), its address taken, not yet serving: an address in use
    fails before the processor's ``on_startup`` runs."""
    if config.admin is None or config.workers > 1:
        return None
    assert observer is not None and observer.metrics is not None
    metrics = observer.metrics
    check = probe_check(lambda: [("server", metrics.values)], config.stall_timeout)
    admin = AdminServer(config.admin, registry(Collector(metrics.processor, metrics)), check)
    admin.bind()
    return admin


def on_serving(observer: Observer | None) -> None:
    """The server says SERVING: tell the metrics (what /readyz reads)."""
    if observer is not None and observer.metrics is not None:
        observer.metrics.values[SERVING] = 1


def on_draining(observer: Observer | None) -> None:
    if observer is not None and observer.metrics is not None:
        observer.metrics.values[SERVING] = 0


class SupervisorAdmin:
    """With workers > 1 and ``admin``: the shared values (:class:`SharedValues`), and one
    admin process (forked before the workers, so the supervisor itself never runs a thread
    and forks) serving what all workers record. Ready while every worker is live and
    SERVING."""

    def __init__(self, config: ServerConfig, processor: str) -> None:
        self.config = config
        self.processor = processor
        self.pid: int | None = None
        self.shared: SharedValues | None = None
        self._server: AdminServer | None = None
        self._stopping = False

    def start(self) -> None:
        config = self.config
        if config.admin is None:
            return
        shared = self.shared = SharedValues(config.workers)
        check = probe_check(lambda: [(f"worker {i}", shared.slot(i).values)
                                     for i in range(config.workers)], config.stall_timeout)
        self._server = AdminServer(config.admin, registry(Collector(self.processor,
                                                                    shared=shared)), check)
        self._server.bind()  # in the supervisor: an address in use fails before any fork
        self._spawn()

    def slot(self, worker: int) -> Slot | None:
        return self.shared.slot(worker) if self.shared is not None else None

    def _spawn(self) -> None:
        assert self._server is not None
        server = self._server
        supervisor = os.getpid()
        # Blocked across the fork: until the child's own handlers are in place, a signal must
        # not run the supervisor's handler there (it would signal the workers).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, (*HANDLED, _STOP))
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    die_with_parent(supervisor, _STOP)
                    # What the operator sends, to the supervisor or the whole group, is the
                    # supervisor's to act on: the endpoint answers (503 from /readyz) through
                    # the drain, until the supervisor stops it with _STOP.
                    for sig in HANDLED:
                        signal.signal(sig, signal.SIG_IGN)
                    signal.signal(_STOP, signal.SIG_DFL)

                    async def main() -> None:
                        asyncio.get_running_loop().add_signal_handler(_STOP, server.request_stop)
                        signal.pthread_sigmask(signal.SIG_UNBLOCK, (*HANDLED, _STOP))
                        await server.run()

                    asyncio.run(main())
                    code = 0
                finally:
                    logging.shutdown()
                    os._exit(code)
            self.pid = pid
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def reaped(self, pid: int) -> bool:
        """True when ``pid`` was the admin process (restarted unless stopping)."""
        if pid != self.pid:
            return False
        self.pid = None
        if not self._stopping:
            logger.warning("admin process exited; restarting")
            self._spawn()
        return True

    def in_worker(self) -> None:
        """In a worker just forked: the admin port is not the worker's to hold."""
        if self._server is not None:
            self._server.close_socket()

    def worker_gone(self, worker: int) -> None:
        if self.shared is not None:
            self.shared.retire(worker)

    def stop(self) -> None:
        self._stopping = True
        if self.pid is not None:
            try:
                os.kill(self.pid, _STOP)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pid = None
        if self._server is not None:
            self._server.stop()
        if self.shared is not None:
            self.shared.close()
            self.shared = None

