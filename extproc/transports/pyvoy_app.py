"""The ext_proc ``Process`` RPC and ``grpc.health.v1`` as an ASGI app.

For servers that speak HTTP/2 with trailers; pyvoy runs it inside an Envoy process (see
``pyvoy.py``). gRPC's framing is done here: each message is one flag byte (0: not compressed),
a 4-byte big-endian length, then the message. The answers come from the same message loop as
the grpc.aio transport (``answer_stream``).

The server process reads its settings from the ``EXTPROC_ASGI`` environment variable (JSON:
``processor`` as ``module:Class``, ``max_message_bytes``, ``drain_fd``, ``error_file``,
``log_level``, ``log_format``, ``counts_token``, ``metrics``); ``app`` is built from them on
import.

Observing is the grpcio transport's (``extproc._record``): every stream's record, the
metrics, spans (``OTEL_*``, read in this process) and access lines. ``metrics`` (``fd``,
``offset``, ``heartbeat``) is where the metric values go: a slot of the serving process's
shared values (``extproc._metrics.SharedValues``), whose admin endpoint reads them; this
process writes its pid and the heartbeat of its loop there, and clears whether it serves
when it drains (the serving process sets it once its socket is in place). A slot whose pid is
no longer this process's was given to the Envoy of a worker started since (this one outlived
its worker): from then on this process writes into values of its own.

Draining is told through a pipe (``drain_fd``, inherited from the process that started
Envoy): the loop watches it, so health ``Watch`` streams wait on an event instead of polling,
and a host that dies closes it, which drains too.

``/extproc.Debug/MessageCounts`` (the messages received per phase, what the test helpers
read) is served only when the host asked for it with a random ``counts_token``, and only to
calls that carry that token: on a production listener it is an unknown method like any other.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from .._config import SERVICE_NAME
from .._frames import describe, user_frames
from .._metrics import HEARTBEAT, PID, SERVING, Metrics, map_slot, private_values
from .._processor import Processor
from .._record import Observer, StreamRecord
from .._stream import ProcessorFailed, _contained, answer_stream
from ..errors import ProtocolError

logger = logging.getLogger("extproc.server")

PROCESS_PATH = f"/{SERVICE_NAME}/Process"
HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
HEALTH_WATCH_PATH = "/grpc.health.v1.Health/Watch"
#: Messages received per phase, as JSON in one message (what ``Server.message_counts`` holds).
COUNTS_PATH = "/extproc.Debug/MessageCounts"
#: The metadata key that carries the counts token.
COUNTS_TOKEN_HEADER = "x-extproc-counts-token"

# gRPC status codes used here.
OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED = 0, 3, 5, 8
UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 12, 13, 14

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_START = {"type": "http.response.start", "status": 200, "trailers": True,
          "headers": [(b"content-type", b"application/grpc")]}
# ASGI wants the body ended before trailers follow.
_END_BODY = {"type": "http.response.body", "body": b"", "more_body": False}
_OK_TRAILERS = {"type": "http.response.trailers", "more_trailers": False,
                "headers": [(b"grpc-status", b"0")]}
_SERVING: int = health_pb2.HealthCheckResponse.SERVING
_DISCONNECT_POLL = 1.0
_NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


class _Status(Exception):
    """End the call with this gRPC status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Disconnected(Exception):
    """The client reset the stream: nothing more can be sent."""


_CODE_NAMES = {OK: "OK", INVALID_ARGUMENT: "INVALID_ARGUMENT", NOT_FOUND: "NOT_FOUND",
               RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED", UNIMPLEMENTED: "UNIMPLEMENTED",
               INTERNAL: "INTERNAL", UNAVAILABLE: "UNAVAILABLE"}


class _Call:
    """What a stream's record reads of its call (grpcio's ServicerContext has the same)."""

    __slots__ = ("headers",)

    def __init__(self, headers: Any) -> None:
        self.headers = headers

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return grpc_metadata(self.headers)


def frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


class _Messages:
    """gRPC messages out of an ASGI request body, one ``next()`` at a time.

    A message may come in many body events (HTTP/2 DATA frames of 16 KiB: 64 for a 1 MiB
    body chunk): they are kept as they come and joined once the message is whole, one copy
    per message whatever the number of events."""

    __slots__ = ("before_wait", "chunks", "limit", "more", "receive", "size")

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.chunks: deque[bytes] = deque()
        self.size = 0  # bytes in chunks
        self.more = True
        #: called before waiting for Envoy (what was answered goes out first)
        self.before_wait: Callable[[], None] | None = None

    async def next(self) -> bytes | None:
        """The next message, or None once the client half-closed its side."""
        while True:
            if self.size >= 5:
                head = self._peek(5)
                if head[0]:
                    raise _Status(UNIMPLEMENTED, "compressed messages are not supported")
                length = int.from_bytes(head[1:5], "big")
                if length > self.limit:
                    raise _Status(RESOURCE_EXHAUSTED, f"message of {length} bytes exceeds "
                                  f"max_message_bytes ({self.limit})")
                end = 5 + length
                if self.size >= end:
                    first = self.chunks[0]
                    if len(first) >= end:  # the common case: the whole frame in one piece
                        self.size -= end
                        if len(first) == end:
                            self.chunks.popleft()
                        else:
                            self.chunks[0] = first[end:]
                        return first[5:end]
                    self._take(5)
                    return self._take(length)
            if not self.more:
                if self.size:
                    raise _Status(INTERNAL, "the request ended inside a message")
                return None
            if self.before_wait is not None:
                self.before_wait()
            event = await self.receive()
            if event["type"] == "http.disconnect":
                raise _Disconnected
            body = event.get("body", b"")
            if body:
                self.chunks.append(body)
                self.size += len(body)
            self.more = event.get("more_body", False)

    def has_message(self) -> bool:
        """Whether a whole message is here already (next() returns without waiting)."""
        return self.size >= 5 and self.size >= 5 + int.from_bytes(self._peek(5)[1:5], "big")

    def _peek(self, n: int) -> bytes:
        first = self.chunks[0]
        if len(first) >= n:
            return first[:n]
        head = b""
        for chunk in self.chunks:  # only as many as hold the first n bytes
            head += chunk[:n - len(head)]
            if len(head) == n:
                break
        return head

    def _take(self, n: int) -> bytes:
        """The next ``n`` bytes (``n`` <= ``size``), copied once at most."""
        if not n:
            return b""
        chunks = self.chunks
        self.size -= n
        first = chunks[0]
        if len(first) == n:
            return chunks.popleft()
        if len(first) > n:
            chunks[0] = first[n:]
            return first[:n]
        parts = []
        while n:
            first = chunks[0]
            if len(first) <= n:
                parts.append(chunks.popleft())
                n -= len(first)
            else:
                parts.append(first[:n])
                chunks[0] = first[n:]
                n = 0
        return b"".join(parts)


#: Answers sent and not yet acknowledged by Envoy before the next one waits: enough that the
#: acknowledgement is not waited for on the way, few enough to bound what is queued when
#: Envoy's downstream is above its buffer limit (pyvoy acknowledges only below it).
_UNACKED = 2


class _Answers:
    """A Process stream's answers, sent as pyvoy takes them.

    pyvoy sends when ``send()`` is called; what the future it returns waits for is Envoy's
    word that the data went on, one more thread hand-off back. So answers are not sent one by
    one, each waiting for the last one's word. An answer goes at once, unless another message
    of Envoy's is already here (STREAMED bodies: Envoy sends chunks without waiting for
    answers): then it goes with that message's answer, or when the loop next yields (a
    callback scheduled then, so a hook that awaits I/O never holds earlier answers back). And
    at most :data:`_UNACKED` sends wait for their word before the next answer waits."""

    __slots__ = ("acks", "broken", "outbox", "scheduled", "send", "started")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.outbox: list[bytes] = []
        self.acks: deque[Any] = deque()  # the futures of sends not yet acknowledged
        self.scheduled = False
        self.started = False
        self.broken = False

    def add(self, answer: Any, more: bool) -> None:
        """``answer`` to send; ``more``: another message of Envoy's is already here, so it
        may wait to go with that one's answer (at the latest when the loop next yields)."""
        self.outbox.append(frame(answer.SerializeToString()))
        if not more:
            self.flush()
        elif not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send what was answered (pyvoy: now; no await needed)."""
        self.scheduled = False
        outbox = self.outbox
        if not outbox or self.broken:
            return
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        try:
            if not self.started:
                self.started = True
                self.send(_START)  # pyvoy keeps it and sends it with the first body
            self.acks.append(self.send({"type": "http.response.body", "body": data,
                                        "more_body": True}))
        except OSError:  # an ASGI server that raises at once (pyvoy does not)
            self.broken = True  # the client went: the loop hears it at the next settle

    async def settle(self, keep: int) -> None:
        """Wait until at most ``keep`` sends are unacknowledged; _Disconnected or OSError when
        the client has gone."""
        if self.broken:
            raise _Disconnected
        acks = self.acks
        # a Future is Envoy's word to come; anything else pyvoy returns (an EmptyAwaitable,
        # or once the client has gone an awaitable that raises) answers at once
        while acks and (len(acks) > keep or not isinstance(acks[0], asyncio.Future)
                        or acks[0].done()):
            await acks.popleft()

    def close(self) -> None:
        self.outbox.clear()
        while self.acks:
            _settle(self.acks.popleft())


def _settle(awaitable: Awaitable[Any]) -> None:
    """Let what a send returned end unwatched: a future pyvoy completes, its exception taken;
    a coroutine (another ASGI server's send) closed; pyvoy's other awaitables hold nothing."""
    if isinstance(awaitable, asyncio.Future):
        awaitable.add_done_callback(_taken)
    elif asyncio.iscoroutine(awaitable):
        awaitable.close()


def _taken(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _finish(send: Send, trailers: dict[str, Any]) -> None:
    await send(_END_BODY)
    await send(trailers)


def _trailers(code: int, message: str) -> dict[str, Any]:
    headers = [(b"grpc-status", str(code).encode())]
    if message:
        # grpc-message is percent-encoded; keep it to printable ASCII.
        text = "".join(c if " " <= c <= "~" and c != "%" else f"%{ord(c):02X}"
                       for c in message.encode("ascii", "replace").decode())
        headers.append((b"grpc-message", text.encode()))
    return {"type": "http.response.trailers", "headers": headers, "more_trailers": False}


class GrpcApp:
    """ASGI app serving ``processor`` over gRPC: ``Process``, health ``Check``/``Watch``."""

    def __init__(self, processor: type[Processor], max_message_bytes: int,
                 drain_fd: int | None = None, error_file: str | None = None,
                 counts_token: str | None = None, metrics: Any = None,
                 heartbeat: float = 0.5) -> None:
        self.processor = processor
        self.max_message_bytes = max_message_bytes
        self.drain_fd = drain_fd
        self.error_file = error_file
        self.counts_token = counts_token.encode() if counts_token else None
        self.message_counts: dict[str, int] | None = {} if counts_token else None
        #: metrics: the values of extproc._metrics (a slot of the host's shared values)
        self.metrics = None if metrics is None else Metrics(processor.__name__, metrics)
        self.observer = Observer.create(processor.__name__, self.metrics,
                                        {} if self.message_counts is None
                                        else self.message_counts)
        self.heartbeat = heartbeat
        self._beating: asyncio.Future[None] | None = None
        self._draining = False
        self._drained: asyncio.Event | None = None

    def draining(self) -> bool:
        return self._draining

    def _own_slot(self, metrics: Metrics) -> bool:
        """Whether the slot is still this process's; when not, let go of it."""
        if metrics.values[PID] == os.getpid():
            return True
        metrics.values = private_values()
        return False

    async def _beat(self, metrics: Metrics) -> None:
        """The loop's heartbeat, for the admin endpoint's probes, while the slot is ours."""
        while self._own_slot(metrics):
            metrics.values[HEARTBEAT] = time.monotonic()
            await asyncio.sleep(self.heartbeat)

    def _not_serving(self) -> None:
        if self.metrics is not None and self._own_slot(self.metrics):
            self.metrics.values[SERVING] = 0

    def _watch_drain(self) -> None:
        """On the serving loop: drain once the host writes to (or closes) the pipe."""
        self._drained = asyncio.Event()
        if self.drain_fd is None:
            return
        loop = asyncio.get_running_loop()
        fd = self.drain_fd

        def readable() -> None:
            loop.remove_reader(fd)
            self._draining = True
            self._not_serving()
            assert self._drained is not None
            self._drained.set()

        loop.add_reader(fd, readable)

    def _counts_allowed(self, scope: Scope) -> bool:
        token = self.counts_token
        if token is None:
            return False
        for key, value in scope["headers"]:
            if key.lower() == COUNTS_TOKEN_HEADER.encode():
                return hmac.compare_digest(value, token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        path = scope["path"]
        try:
            if path == PROCESS_PATH:
                await self._process(scope, receive, send)
            elif path == HEALTH_CHECK_PATH:
                await self._health_check(receive, send)
            elif path == HEALTH_WATCH_PATH:
                await self._health_watch(receive, send)
            elif path == COUNTS_PATH and self._counts_allowed(scope):
                await send(_START)
                counts = json.dumps(self.message_counts).encode()
                await send({"type": "http.response.body", "body": frame(counts),
                            "more_body": True})
                await _finish(send, _OK_TRAILERS)
            else:
                await send(_START)
                await _finish(send, _trailers(UNIMPLEMENTED, f"unknown method {path}"))
        except _Disconnected:
            pass

    async def _process(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.draining():
            await send(_START)
            await _finish(send, _trailers(UNAVAILABLE, "the server is shutting down"))
            return
        observer = self.observer
        record = None if observer is None else StreamRecord(observer, _Call(scope["headers"]))
        counts = self.message_counts if record is None else record.messages
        code = "CANCELLED"
        try:
            code = await self._answer(scope, receive, send, counts, record)
        finally:
            if record is not None:
                record.finish(code)

    async def _answer(self, scope: Scope, receive: Receive, send: Send,
                      counts: dict[str, int] | None, record: StreamRecord | None) -> str:
        """Answer one Process stream; the gRPC status it ended with, by name."""
        messages = _Messages(receive, self.max_message_bytes)
        parse = pb.ProcessingRequest.FromString

        async def requests() -> AsyncIterator[Any]:
            while (data := await messages.next()) is not None:
                try:
                    yield parse(data)
                except DecodeError:
                    raise _Status(INTERNAL, "cannot parse a ProcessingRequest") from None

        answers = _Answers(send)
        messages.before_wait = answers.flush
        end = _OK_TRAILERS

        async def write(answer: Any) -> None:
            answers.add(answer, messages.has_message())
            await answers.settle(_UNACKED)

        async def write_now(answer: Any) -> None:
            """What a hook sends while it runs (a timeout extension): at once."""
            answers.add(answer, False)
            await answers.settle(_UNACKED)

        def metadata() -> list[tuple[str, str]]:
            return grpc_metadata(scope["headers"])

        code = OK
        gone = False
        try:
            # ``write`` also serves answers a hook sends while it runs (a timeout extension).
            async for answer in answer_stream(self.processor, requests(), counts,
                                              early=write_now, metadata=metadata,
                                              record=record):
                await write(answer)
            answers.flush()
            await answers.settle(0)
        except (_Disconnected, OSError):
            gone = True
            return "CANCELLED"  # the client reset the stream (pyvoy raises OSError on send)
        except ProtocolError as exc:
            logger.warning("ext_proc protocol error: %s", exc)
            code, end = INVALID_ARGUMENT, _trailers(INVALID_ARGUMENT, str(exc))
        except ProcessorFailed as exc:
            # Envoy refuses an ImmediateResponse here: an error status makes it answer
            # status_on_error (as on grpcio).
            code, end = UNAVAILABLE, _trailers(UNAVAILABLE, str(exc))
        except _Status as exc:
            code, end = exc.code, _trailers(exc.code, str(exc))
        except Exception:
            logger.exception("internal error in the ext_proc message loop")
            code, end = INTERNAL, _trailers(INTERNAL, "internal processor error")
        finally:
            if not gone:
                answers.flush()  # what was answered goes before the error, as on grpcio
            answers.close()
        if not answers.started:
            await send(_START)
        await _finish(send, end)
        return _CODE_NAMES.get(code, "UNKNOWN")

    def _health_status(self, service: str) -> int:
        if service not in ("", SERVICE_NAME):
            raise _Status(NOT_FOUND, f"unknown service {service!r}")
        return _NOT_SERVING if self.draining() else _SERVING

    async def _health_request(self, receive: Receive) -> str:
        data = await _Messages(receive, 4096).next()
        try:
            request = health_pb2.HealthCheckRequest.FromString(data or b"")
        except DecodeError:
            raise _Status(INTERNAL, "cannot parse a HealthCheckRequest") from None
        return str(request.service)

    async def _health_check(self, receive: Receive, send: Send) -> None:
        await send(_START)
        try:
            status = self._health_status(await self._health_request(receive))
        except _Status as exc:
            await _finish(send, _trailers(exc.code, str(exc)))
            return
        answer = health_pb2.HealthCheckResponse(status=status).SerializeToString()
        await send({"type": "http.response.body", "body": frame(answer), "more_body": True})
        await _finish(send, _OK_TRAILERS)

    async def _health_watch(self, receive: Receive, send: Send) -> None:
        await send(_START)
        try:
            service = await self._health_request(receive)
            self._health_status(service)
        except _Status as exc:
            await _finish(send, _trailers(exc.code, str(exc)))
            return

        async def disconnected() -> None:
            # Once the request has ended, pyvoy answers receive() at once until the stream is
            # gone (then with http.disconnect) instead of waiting for it: asked once a second,
            # not in a busy loop.
            while (await receive())["type"] != "http.disconnect":  # noqa: ASYNC110
                await asyncio.sleep(_DISCONNECT_POLL)

        gone = asyncio.ensure_future(disconnected())
        drained = (asyncio.ensure_future(self._drained.wait()) if self._drained is not None
                   else None)
        try:
            answer = health_pb2.HealthCheckResponse(status=self._health_status(service))
            await send({"type": "http.response.body", "body": frame(answer.SerializeToString()),
                        "more_body": True})
            if answer.status == _SERVING:
                # Nothing to do until the drain starts or the client goes: no polling.
                await asyncio.wait({gone} | ({drained} if drained else set()),
                                   return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    return
                answer = health_pb2.HealthCheckResponse(status=_NOT_SERVING)
                await send({"type": "http.response.body",
                            "body": frame(answer.SerializeToString()), "more_body": True})
            # Draining: the status cannot change back; the stream must not hold the drain up.
            await _finish(send, _OK_TRAILERS)
        finally:
            gone.cancel()
            if drained is not None:
                drained.cancel()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                self._watch_drain()
                try:
                    await self.processor.on_startup()
                except BaseException as exc:
                    if not _contained(exc):
                        raise
                    message = f"{self.processor.__name__}.on_startup failed: {describe(exc)}"
                    if self.error_file is not None:
                        # serve says it, with the user's frames (said here too, it would be
                        # said twice)
                        _write(self.error_file, json.dumps({"message": message,
                                                            "where": user_frames(exc)}))
                    else:
                        logger.error("%s", message, exc_info=exc)
                    await send({"type": "lifespan.startup.failed", "message": message})
                    return
                if self.metrics is not None:
                    self._beating = asyncio.ensure_future(self._beat(self.metrics))
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                try:
                    await self.processor.on_shutdown()
                except BaseException as exc:
                    if not _contained(exc):
                        raise
                    logger.error("%s.on_shutdown failed", self.processor.__name__,
                                 exc_info=exc)
                if self._beating is not None:
                    self._beating.cancel()
                self._not_serving()
                if self.observer is not None:
                    self.observer.close()  # the spans still buffered
                await send({"type": "lifespan.shutdown.complete"})
                return


# What gRPC itself uses, which grpcio leaves out of a call's metadata: the same stays out here.
_TRANSPORT_HEADERS = frozenset({"host", "content-type", "te", "user-agent", "grpc-timeout",
                                "grpc-encoding", "grpc-accept-encoding"})


def grpc_metadata(headers: Any) -> list[tuple[str, str]]:
    """A stream's gRPC metadata from its HTTP/2 request headers, as grpcio hands it over."""
    found = []
    for raw_key, raw_value in headers:
        key = raw_key.decode("latin-1").lower()
        if not key.startswith(":") and key not in _TRANSPORT_HEADERS:
            found.append((key, raw_value.decode("latin-1")))
    return found


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _from_environment() -> GrpcApp | None:
    settings = os.environ.get("EXTPROC_ASGI")
    if settings is None:
        return None
    from .._importer import import_processor

    options = json.loads(settings)
    from ..logs import setup

    # As the serving command logs: under --log-format json, every line JSON here too.
    setup(options.get("log_level", "WARNING"), options.get("log_format", "text"))
    metrics = options.get("metrics")
    return GrpcApp(import_processor(options["processor"]), options["max_message_bytes"],
                   options.get("drain_fd"), options.get("error_file"),
                   options.get("counts_token"),
                   map_slot(metrics["fd"], metrics["offset"]) if metrics else None,
                   metrics["heartbeat"] if metrics else 0.5)


#: What pyvoy serves (``extproc.transports.pyvoy_app:app``), built from ``EXTPROC_ASGI``.
app = _from_environment()
