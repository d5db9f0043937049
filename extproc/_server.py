"""The grpc.aio server: Unix socket or TCP, health service, drain on signals, workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ._admin import (
    AdminServer,
    SupervisorAdmin,
    bind_admin,
    heartbeat,
    heartbeat_interval,
    make_observer,
    on_draining,
    on_serving,
)
from ._config import SERVICE_NAME, ServerConfig, dial_target, split_address
from ._errors import ProtocolError, ServeError
from ._lifecycle import DRAIN, FORCE, HANDLED, INTERRUPT, Stop, die_with_parent
from ._processor import Processor, require_processor
from ._record import Observer
from ._stream import ProcessorFailed, _contained, answer_stream
from ._unix import PrivateBind, claim_socket, remove_own
from ._wire import Encoded, parse_request

if TYPE_CHECKING:
    from ._pyvoy import PyvoyServer

logger = logging.getLogger("extproc.server")


# What serve() returns; a server that cannot start raises ServeError instead.
DRAINED = 0  # in-flight streams finished after the signal
FORCED = 1  # a second SIGINT or a SIGQUIT cut in-flight streams short
# A worker process tells its supervisor it could not start with this exit status.
_WORKER_DID_NOT_START = 3


class Server:
    """One server process: ``await start()``, ``await stop()``.

    ``listen`` is one entry of ``config.addresses()`` (a Unix socket path or host:port).
    A supervisor's worker also gives its ``slot`` of the shared metric values and its own
    pid as ``supervisor``.
    """

    def __init__(self, processor: type[Processor], config: ServerConfig,
                 listen: str | None = None, *, slot: Any = None,
                 supervisor: int | None = None) -> None:
        require_processor(processor)
        self.processor = processor
        self.config = config
        self.listen = config.listen_on(listen)
        self.is_uds = config.uds is not None
        self.bound_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self._stopping = False
        self._slot = slot
        self._supervisor = supervisor
        self._socket_id: tuple[int, int] | None = None
        self._heartbeat: asyncio.Future[None] | None = None
        #: Messages received per phase since start (e.g. ``{"request_headers": 3}``).
        self.message_counts: dict[str, int] = {}
        self.observer: Observer | None = None
        self.admin: AdminServer | None = None

    @property
    def serving(self) -> bool:
        """What the gRPC health service says: started and not draining."""
        return self._server is not None and not self._stopping

    @property
    def target(self) -> str:
        """The gRPC target a client dials (``unix:/path`` or ``host:port``)."""
        return dial_target(self.listen, self.is_uds, self.bound_port)

    async def start(self) -> None:
        config = self.config
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # Without this a second server could silently share the port.
            ("grpc.so_reuseport", 0),
        ])
        self.observer = observer = make_observer(self.processor, config, self.message_counts,
                                                 self._slot)
        # Large bodies are parsed and answered in wire form (extproc._wire): one copy of the
        # body each way instead of upb's arena copies.
        handler = grpc.stream_stream_rpc_method_handler(
            _Servicer(self.processor, self.message_counts, observer).Process,
            request_deserializer=parse_request,
            response_serializer=_serialize,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Process": handler}),))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if self.is_uds:
            claim_socket(self.listen)
        self.admin = bind_admin(config, observer)
        try:
            await self.processor.on_startup()
        except BaseException as exc:
            self._close_admin()
            if not _contained(exc):
                raise
            logger.error("%s.on_startup failed", self.processor.__name__, exc_info=exc)
            raise ServeError(f"{self.processor.__name__}.on_startup failed: {exc!r}") from exc
        try:
            await self._listen(server)
        except BaseException:
            self._close_admin()
            await self._shutdown_hook()
            raise
        self._server = server
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        metrics = observer.metrics if observer is not None else None
        if metrics is not None or self._supervisor is not None:
            self._heartbeat = asyncio.ensure_future(heartbeat(
                metrics.values if metrics is not None else None, heartbeat_interval(config),
                self._supervisor))
        on_serving(observer)
        if self.admin is not None:
            self.admin.start()
        logger.info("serving %s on %s (pid %d)", self.processor.__name__, self.target,
                    os.getpid())

    async def _listen(self, server: grpc.aio.Server) -> None:
        config = self.config
        if not self.is_uds:
            try:
                if config.tls:
                    self.bound_port = server.add_secure_port(self.listen, _credentials(config))
                else:
                    self.bound_port = server.add_insecure_port(self.listen)
                await server.start()
            except RuntimeError as exc:
                raise ServeError(f"cannot listen on {self.listen}: "
                                 f"{_bind_failure(self.listen) or exc}") from None
            return
        # gRPC removes whatever is at the path it binds, and again when it stops, by path: a
        # server started meanwhile (e.g. after a killed supervisor, while this one drains as
        # an orphan) would lose its socket. So gRPC binds a private path and the socket is
        # moved into place with its mode (PrivateBind); gRPC's removals reach nothing.
        bind = PrivateBind(self.listen)
        try:
            try:
                server.add_insecure_port("unix:" + bind.path)
                await server.start()
            except RuntimeError as exc:
                raise ServeError(f"cannot listen on {self.listen}: {exc}") from None
            try:
                self._socket_id = bind.publish(config.socket_mode)
            except BaseException:
                await server.stop(0)
                raise
        finally:
            bind.close()

    def _close_admin(self) -> None:
        if self.admin is not None:
            self.admin.stop()
            self.admin = None

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new streams, let in-flight ones finish within ``grace``."""
        server = self._server
        if server is None:
            return
        grace = self.config.grace_period if grace is None else grace
        if not self._stopping:
            self._stopping = True
            await self._health.enter_graceful_shutdown()
            on_draining(self.observer)
            logger.info("draining (grace %.1fs)", grace)
        try:
            await server.stop(grace)
        finally:
            if self._server is not None:
                self._server = None
                if self.is_uds:
                    remove_own(self.listen, self._socket_id)
                try:
                    await self._shutdown_hook()
                finally:
                    # The loop turns while on_shutdown awaits: the heartbeat goes on until
                    # then, so the probes do not take an awaiting hook for a blocked loop.
                    if self._heartbeat is not None:
                        self._heartbeat.cancel()
                        self._heartbeat = None
                    self._close_admin()
                    if self.observer is not None:
                        self.observer.close()

    async def _shutdown_hook(self) -> None:
        bound = max(self.config.grace_period, 1.0)
        try:
            await asyncio.wait_for(self.processor.on_shutdown(), bound)
        except asyncio.TimeoutError:
            logger.error("%s.on_shutdown did not finish within %gs (the grace period)",
                         self.processor.__name__, bound)
        except BaseException as exc:
            if not _contained(exc):
                raise
            logger.error("%s.on_shutdown failed", self.processor.__name__, exc_info=exc)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(0)


class _Servicer:
    __slots__ = ("counts", "observer", "processor")

    def __init__(self, processor: type[Processor], counts: dict[str, int],
                 observer: Observer | None = None) -> None:
        self.processor = processor
        self.counts = counts
        self.observer = observer

    async def Process(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        observer = self.observer
        record = None if observer is None else observer.stream(context)
        counts = self.counts if record is None else record.messages
        try:
            async for answer in answer_stream(self.processor, request_iterator, counts,
                                              context.write, context.invocation_metadata,
                                              record, encode=True):
                yield answer
        except ProtocolError as exc:
            logger.warning("ext_proc protocol error: %s", exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ProcessorFailed as exc:
            # Envoy refuses an ImmediateResponse here: an error status makes it answer
            # status_on_error.
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except grpc.aio.UsageError:
            pass  # Envoy went away mid-write: nothing left to answer
        except Exception:
            logger.exception("internal error in the ext_proc message loop")
            await context.abort(grpc.StatusCode.INTERNAL, "internal processor error")


def _serialize(answer: Any) -> bytes:
    """The response serializer: answers the loop encoded itself, or upb messages."""
    if answer.__class__ is Encoded:
        return answer.take()
    return answer.SerializeToString()  # type: ignore[no-any-return]


def _credentials(config: ServerConfig) -> grpc.ServerCredentials:
    def read(path: str | None) -> bytes:
        assert path is not None
        with open(path, "rb") as f:
            return f.read()

    client_ca = read(config.tls_client_ca) if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(read(config.tls_key), read(config.tls_cert))],
        root_certificates=client_ca, require_client_auth=client_ca is not None)


# -- running until a signal ------------------------------------------------------------------


def make_server(processor: type[Processor], config: ServerConfig, listen: str | None = None,
                *, counts: bool = False, **worker: Any) -> Server | PyvoyServer:
    """The server of ``config.transport``: grpc.aio here, or an Envoy process running pyvoy.
    ``counts``: keep ``message_counts`` (test helpers; grpcio always does, in process).
    ``worker``: what a supervisor's worker adds (``slot``, ``supervisor``; grpcio only)."""
    if config.transport == "pyvoy":
        from ._pyvoy import PyvoyServer

        return PyvoyServer(processor, config, listen, counts=counts)
    return Server(processor, config, listen, **worker)


async def serve_async(processor: type[Processor], config: ServerConfig,
                      listen: str | None = None, stop_signals: tuple[int, ...] = HANDLED,
                      **worker: Any) -> int:
    """Serve until a signal of ``stop_signals`` stops it (``_lifecycle`` says which signal
    drains and which cuts in-flight streams); DRAINED or FORCED."""
    server = make_server(processor, config, listen, **worker)
    loop = asyncio.get_running_loop()
    stop = Stop()
    changed = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.receive(signum):
            changed.set()
        else:
            logger.info("%s again: the drain goes on", signal.Signals(signum).name)

    # Handlers first: a signal while the server starts drains it once it has started.
    previous = {sig: signal.getsignal(sig) for sig in stop_signals}
    for sig in stop_signals:
        loop.add_signal_handler(sig, on_signal, sig)
    # A supervisor forks its workers with these blocked, so that none arrives before the
    # worker's handlers are in place (it would kill the worker outright).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    try:
        # Starting: a forcing signal cuts a hung on_startup.
        start = asyncio.ensure_future(server.start())
        if not await _unless_forced(start, stop, changed):
            logger.warning("stopped while starting")
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError, ServeError):
                await start
            return FORCED
        await start
        # Serving, until a signal (or the pyvoy transport's Envoy exits).
        if not stop.drain:
            signalled = asyncio.ensure_future(changed.wait())
            exited = (asyncio.ensure_future(server.wait()) if not isinstance(server, Server)
                      else None)
            await asyncio.wait({signalled} | ({exited} if exited else set()),
                               return_when=asyncio.FIRST_COMPLETED)
            signalled.cancel()
            if exited is not None:
                if exited.done():
                    raise ServeError(f"the Envoy process serving with pyvoy exited with "
                                     f"{exited.result()}")
                exited.cancel()
        # Draining: a forcing signal cuts in-flight streams, then a hung on_shutdown.
        drain = asyncio.ensure_future(server.stop(0 if stop.force else None))
        if not await _unless_forced(drain, stop, changed):
            logger.warning("cutting in-flight streams")
            await server.stop(0)
            await asyncio.wait({drain}, timeout=1.0)
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
        else:
            await drain
        return FORCED if stop.force else DRAINED
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)
        await server.stop(0)


async def _unless_forced(task: asyncio.Future[Any], stop: Stop, changed: asyncio.Event) -> bool:
    """Wait for ``task``; False as soon as a signal asks to force instead."""
    while not task.done():
        if stop.force:
            return False
        changed.clear()
        waiter = asyncio.ensure_future(changed.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
    return True


def serve(processor: type[Processor], config: ServerConfig | None = None, *,
          uds: str | None = None, address: str | None = None, workers: int = 1,
          **options: Any) -> int:
    """Serve ``processor`` until a signal stops it and return the exit code: 0 when in-flight
    streams drained (SIGTERM, SIGHUP, SIGINT), 1 when they were cut (SIGQUIT, a second
    SIGINT). Raises ServeError when it cannot start.

    Give a ready :class:`ServerConfig`, or its fields: ``uds``/``address``, ``workers`` and
    ``options`` (socket_mode, grace_period, max_message_bytes, tls_cert, tls_key,
    tls_client_ca, loop, admin, stall_timeout, transport).
    """
    if config is None:
        config = ServerConfig(uds=uds, address=address, workers=workers, **options)
    elif uds is not None or address is not None or workers != 1 or options:
        raise ServeError("give a ServerConfig or its fields, not both")
    return run(processor, config)


def run(processor: type[Processor], config: ServerConfig) -> int:
    """Serve with a ready-made config: one process, or a supervisor forking ``workers``."""
    if config.workers == 1:
        return _run_loop(config, serve_async(processor, config))
    return _supervise(processor, config)


def _run_loop(config: ServerConfig, main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run`` on the configured loop kind (asyncio.Runner needs Python 3.11)."""
    loop = config.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        task = loop.create_task(main)
        while True:
            try:
                return loop.run_until_complete(task)
            except (SystemExit, KeyboardInterrupt) as exc:
                # asyncio lets these out of any task; from a task the processor started (the
                # server's signals never raise them: its handlers are installed) they must not
                # end the server.
                if task.done():
                    raise
                logger.error("a task raised %r; serving on", exc)
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


# What a worker handles: group-wide signals reach it directly, the supervisor forwards the
# rest (SIGTERM to drain, SIGQUIT to force). Ctrl-C reaches the whole group, and the
# supervisor counts it: a worker that counted it too would take the supervisor's forwarded
# SIGTERM as a second signal.
_WORKER_SIGNALS = (*DRAIN, FORCE)


def _worker_main(processor: type[Processor], config: ServerConfig, listen: str,
                 slot: Any, supervisor: int) -> int:
    die_with_parent(supervisor)
    for sig in _WORKER_SIGNALS:  # not the supervisor's handler, copied by fork
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(INTERRUPT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (INTERRUPT,))
    try:
        return _run_loop(config, serve_async(processor, config, listen, _WORKER_SIGNALS,
                                             slot=slot, supervisor=supervisor))
    except ServeError as exc:
        logger.error("worker on %s: %s", listen, exc)
        return _WORKER_DID_NOT_START
    except Exception:
        logger.exception("worker on %s crashed", listen)
        return 1


def _supervise(processor: type[Processor], config: ServerConfig) -> int:
    """Fork one worker per address; forward signals; restart a worker that dies."""
    if config.uds is not None:
        for path in config.addresses():
            claim_socket(path)  # fail before forking, with the path in the message
    addresses = config.addresses()
    children: dict[int, tuple[int, float]] = {}  # pid -> (worker index, start time)
    stop = Stop()
    supervisor = os.getpid()
    admin = SupervisorAdmin(config, processor.__name__)

    def spawn(index: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across the fork: the child unblocks them once its handlers are in place,
        # and a signal here runs after the child is in ``children``.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    admin.in_worker()
                    code = _worker_main(processor, config, addresses[index],
                                        admin.slot(index), supervisor)
                finally:
                    logging.shutdown()
                    os._exit(code)
            children[pid] = (index, time.monotonic())
            if stop.drain:  # asked to stop while it was being forked
                os.kill(pid, signal.SIGQUIT if stop.force else signal.SIGTERM)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def on_signal(signum: int, frame: object) -> None:
        if not stop.receive(signum):
            return  # the same drain, asked again (e.g. the whole group got SIGTERM)
        forward = signal.SIGQUIT if stop.force else signal.SIGTERM
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, forward)

    previous = {sig: signal.signal(sig, on_signal) for sig in HANDLED}
    exit_code = DRAINED
    did_not_start: str | None = None
    try:
        admin.start()
        for index in range(len(addresses)):
            if stop.drain:
                break
            spawn(index)
        logger.info("supervisor %d: %d workers on %s", supervisor, config.workers,
                    ", ".join(addresses))
        while children:
            pid, status = os.wait()
            if admin.reaped(pid) or pid not in children:
                continue
            index, started = children.pop(pid)
            admin.worker_gone(index)
            code = os.waitstatus_to_exitcode(status)
            if stop.drain:
                # a worker killed by a signal while draining cut its streams
                exit_code = max(exit_code, code if code >= 0 else FORCED)
                continue
            if code == _WORKER_DID_NOT_START:
                logger.error("worker on %s could not start; stopping", addresses[index])
                on_signal(signal.SIGTERM, None)
                did_not_start = addresses[index]
                continue
            logger.warning("worker on %s exited with %d; restarting", addresses[index], code)
            if time.monotonic() - started < 1.0:
                time.sleep(1.0)  # a worker that dies at once must not spin the supervisor
            if not stop.drain:
                spawn(index)
    finally:
        admin.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if did_not_start is not None:
        raise ServeError(f"the worker on {did_not_start} could not start (its error is "
                         "logged above)")
    return FORCED if stop.force else exit_code


def _bind_failure(listen: str) -> str | None:
    """Why ``host:port`` cannot be bound (gRPC only says that it could not), or None."""
    import socket

    try:
        host, port = split_address(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.bind((host, port))
    except (OSError, ServeError) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    return None
