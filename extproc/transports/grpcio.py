"""The grpcio transport (the default): a grpc.aio server in this process, on a Unix socket
(bound privately, moved into place with its mode) or TCP (TLS optional), with the gRPC health
service, the admin endpoint when asked, and large bodies in wire form (``extproc._wire``)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .._admin import (
    AdminServer,
    bind_admin,
    heartbeat,
    heartbeat_interval,
    make_observer,
    on_draining,
    on_serving,
)
from .._config import SERVICE_NAME, ServerConfig
from .._frames import describe, user_frames
from .._processor import Processor
from .._record import Observer
from .._stream import ProcessorFailed, _contained, answer_stream
from .._wire import Encoded, parse_request
from ..addresses import split_address
from ..errors import ProtocolError, ServeError
from ..sockets import PrivateBind, claim_socket, remove_own
from . import BaseServer, View

logger = logging.getLogger("extproc.server")


class Server(BaseServer):
    """One grpc.aio server: ``await start()``, ``await stop()``.

    ``listen`` is one entry of ``config.addresses()`` (a Unix socket path or host:port).
    A supervisor's worker also gives its ``slot`` of the shared metric values and its own
    pid as ``supervisor``; ``view`` is told about every stream answered. Message counts are
    always kept (``counts`` is for the transports where they cost).
    """

    def __init__(self, processor: type[Processor], config: ServerConfig,
                 listen: str | None = None, *, counts: bool = True, view: View | None = None,
                 slot: Any = None, supervisor: int | None = None) -> None:
        super().__init__(processor, config, listen, counts=True, view=view, slot=slot,
                         supervisor=supervisor)
        self._stopped = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self._stopping = False
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

    async def start(self) -> None:
        config = self.config
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # Without this a second server could silently share the port.
            ("grpc.so_reuseport", 0),
        ])
        self.observer = observer = make_observer(self.processor, config, self.message_counts,
                                                 self.slot, self.view)
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
            # Said once, by whoever reports the ServeError (extctl: its error line, with
            # the user's frames under it).
            error = ServeError(f"{self.processor.__name__}.on_startup failed: {describe(exc)}")
            error.where = user_frames(exc)
            raise error from exc
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
        if metrics is not None or self.supervisor is not None:
            self._heartbeat = asyncio.ensure_future(heartbeat(
                metrics.values if metrics is not None else None, heartbeat_interval(config),
                self.supervisor))
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
            except RuntimeError:
                raise ServeError(f"cannot listen on {self.listen}: "
                                 f"{_bind_failure(self.listen) or 'gRPC could not bind it'}"
                                 ) from None
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
            except RuntimeError:
                raise ServeError(f"cannot listen on {self.listen}: "
                                 f"{_bind_failure(bind.path) or 'gRPC could not bind it'}"
                                 ) from None
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
                    self._stopped.set()

    async def wait(self) -> str:
        """Until the server has stopped: it never ends on its own (gRPC's own
        ``wait_for_termination`` is not used: cancelling it cancels a drain under way)."""
        await self._stopped.wait()
        return "the gRPC server stopped"

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


def _bind_failure(listen: str) -> str | None:
    """Why ``listen`` (``host:port``, or a socket path) cannot be bound (gRPC only says that
    it could not, and to set GRPC_VERBOSITY), or None. A socket path is the private one of
    :class:`PrivateBind`, whose directory goes with whatever the probe leaves."""
    import socket

    try:
        address: str | tuple[str, int]
        if listen.startswith("/"):
            family, address = socket.AF_UNIX, listen
        else:
            host, port = split_address(listen)
            family, address = socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port)
        with socket.socket(family) as probe:
            probe.bind(address)
    except (OSError, ServeError) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    return None
