"""Drive a Processor in-process, as Envoy would, with no sockets: for users' unit tests.

    from extproc.testing import run

    async def test_adds_header():
        result = await run(AddHeader, path="/hello")
        assert result.request.headers["x-hello"] == "world"   # what the upstream saw

Envoy's side is emulated: only the phases of the processing mode are sent (the class's own,
or ``mode=``), body chunks travel as the body mode says, answers are applied as Envoy applies
them (removals before sets, content-length rules, mode overrides). Every message is encoded
and decoded on the way, so what passes here is also what goes on the wire.

Where a message ends follows its headers, as in Envoy: a request with no body and no trailers
(or ``content-length: 0``) ends at its headers and no body phase runs; with
``transfer-encoding: chunked`` a body follows even when it is empty (``body=b""``: one empty
chunk with end of stream, as Envoy sends for a chunked message with nothing in it), as it does
for ``body=[b""]`` (an HTTP/2 client's empty DATA frame). Request hooks never see that header,
which Envoy's HTTP/1 codec takes out of requests (a response's stays). A response to HEAD, a
204 or a 304 has no body. A body given without a framing header gets a ``content-length``.
A local answer after the response headers went on to the client (a STREAMED or
FULL_DUPLEX_STREAMED response-body hook, a response-trailers hook) cannot reach the client:
Envoy resets the stream, and the result says so (``reset``; ``response`` is what the client
got before the reset). Likewise a local answer after the request headers went upstream: the
upstream's request is cut off (``request.complete`` is False).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import json_format, struct_pb2

from ._mode import BodyMode, ProcessingMode
from ._processor import EXT_PROC_NAMESPACE, Processor
from ._stream import _PASS, HOLDS_HEADERS, ProcessorFailed, _Exchange, _Stop
from ._thread import ServerThread
from .errors import ProtocolError
from .exchange import (
    BodyInput,
    HeaderInput,
    HeaderView,
    LocalReply,
    Message,
    Upstream,
    answer_of,
    bodiless,
    call_upstream,
    chunked,
    chunks_of,
    pairs_of,
)

__all__ = ["Client", "HeaderView", "LocalReply", "Message", "Result", "ServerThread",
           "Upstream", "lifespan", "run", "run_sync"]


T = TypeVar("T")
_HVO = base_pb2.HeaderValueOption
_FULL_DUPLEX = BodyMode.FULL_DUPLEX_STREAMED
_DROPS_LENGTH = (BodyMode.STREAMED, BodyMode.BUFFERED_PARTIAL, _FULL_DUPLEX)


@dataclass
class Result:
    """What came out of one request through the processor (the shape of
    :mod:`extproc.exchange`, with what only an in-process run can tell)."""

    request: Message | None
    """What the upstream received; None when the processor answered before it. A local answer
    after the headers went upstream (from a STREAMED or FULL_DUPLEX_STREAMED request-body
    hook, or a request-trailers hook) leaves what went before, ``complete=False``: Envoy
    resets the upstream request."""
    response: Message
    """What the client received (an immediate response included)."""
    immediate: bool = False
    """True when a hook ended the request with an ImmediateResponse (or failed closed)."""
    details: str = ""
    """The immediate response's ``details`` (``extproc_processor_error`` after a hook failure)."""
    sent: list[str] = field(default_factory=list)
    """Phases sent to the processor, in order, one entry per message."""
    dynamic_metadata: dict[str, Any] = field(default_factory=dict)
    route_cache_cleared: bool = False
    mode: ProcessingMode | None = None
    """The processing mode in force at the end (after any override)."""
    timeout_extensions: list[float] = field(default_factory=list)
    """Seconds of each ``extend_timeout`` Envoy received, in order."""
    reset: bool = False
    """True when Envoy reset the stream: a local answer (an ImmediateResponse, a hook failing
    closed, a timeout) came after the response headers had gone on to the client, who got
    ``response`` (headers and the body so far, no trailers) and then the reset (HTTP/2
    RST_STREAM; HTTP/1.1 closes the connection)."""
    local_reply: LocalReply | None = None
    """The local answer (an ImmediateResponse, a hook failing closed, Envoy's own 504 or 500
    for the processor), as it was given; None when the upstream's answer went through."""

    @property
    def status(self) -> int:
        return self.response.status or 0

    @property
    def upstream_reached(self) -> bool:
        return self.request is not None




async def run(
    processor: type[Processor],
    *,
    method: str = "GET",
    path: str = "/",
    authority: str = "example.com",
    headers: HeaderInput = None,
    body: BodyInput = b"",
    trailers: HeaderInput = None,
    status: int = 200,
    response_headers: HeaderInput = None,
    response_body: BodyInput = b"",
    response_trailers: HeaderInput = None,
    upstream: Upstream | None = None,
    attributes: Mapping[str, Any] | None = None,
    response_attributes: Mapping[str, Any] | None = None,
    metadata_context: Mapping[str, Mapping[str, Any]] | None = None,
    typed_metadata_context: Mapping[str, Any] | None = None,
    mode: ProcessingMode | None = None,
    grpc_metadata: Mapping[str, str] | None = None,
) -> Result:
    """Send one request (and the upstream's response) through ``processor``.

    Bodies are ``bytes`` (one chunk) or a list of chunks. ``upstream``, when given, receives
    the processed request and returns the response (a Message or ``(status, headers, body)``).
    ``metadata_context`` / ``typed_metadata_context`` (namespace -> protobuf message) are what
    Envoy forwards (``forwarding_namespaces`` / ``typed_forwarding_namespaces``).
    ``grpc_metadata`` is added to the class's ``grpc_initial_metadata`` on the stream (trace
    context, say). Each answer must come within the class's ``message_timeout`` (or the
    extension it asked for), else the client gets Envoy's 504.
    """
    spec = processor.filter_spec()
    metadata = [*spec.grpc_initial_metadata, *pairs_of(grpc_metadata)]
    driver = _Driver(processor, mode or processor.processing_mode(), metadata)
    request_pairs = [(":method", method), (":path", path), (":scheme", "http"),
                     (":authority", authority)]
    request_pairs += pairs_of(headers)
    if not any(k == "x-request-id" for k, _ in request_pairs):
        request_pairs.append(("x-request-id", str(uuid.uuid4())))
    chunks = chunks_of(body)
    _frame(request_pairs, chunks)
    try:
        driver.typed_metadata = typed_metadata_context
        request = await driver.direction("request", request_pairs, chunks, pairs_of(trailers),
                                         trailers is not None, attributes, metadata_context,
                                         False)
        driver.upstream_reached = request
        if upstream is not None:
            status, answer_headers, response_body, response_trailers = answer_of(
                call_upstream(upstream, request))
            # framed as a server frames it: chunks (or trailers) chunked, bytes by length
            framed = chunked(response_body, response_trailers)
            response_headers = [*answer_headers, *([("transfer-encoding", "chunked")]
                                                   if framed else [])]
        response_chunks = chunks_of(response_body)
        response_pairs = [(":status", str(status)), *pairs_of(response_headers)]
        # A response to HEAD, a 204 or a 304 has no body, whatever its headers say.
        no_body = bodiless(method, status)
        if no_body:
            response_chunks, response_trailers = [], None
        _frame(response_pairs, response_chunks)
        response = await driver.direction("response", response_pairs, response_chunks,
                                          pairs_of(response_trailers),
                                          response_trailers is not None, response_attributes,
                                          None, no_body)
    except _Stop as stop:
        if driver.started is not None:  # too late to answer: Envoy resets the stream
            pairs, sent = driver.started
            client = Message(HeaderView(pairs), b"".join(sent), list(sent))
            return driver.result(driver.upstream_request(), client, stop.args[0], reset=True)
        return driver.result(driver.upstream_request(),
                             _immediate_message(stop.args[0], method == "HEAD"), stop.args[0])
    return driver.result(request, response, None)


def run_sync(processor: type[Processor], **kwargs: Any) -> Result:
    """:func:`run` for tests that are not async."""
    return asyncio.run(run(processor, **kwargs))


@contextlib.asynccontextmanager
async def lifespan(processor: type[Processor]) -> AsyncIterator[type[Processor]]:
    """Run the class's ``on_startup`` / ``on_shutdown`` around a block of :func:`run` calls."""
    await processor.on_startup()
    try:
        yield processor
    finally:
        await processor.on_shutdown()


class Client:
    """The processor in this process, driven as Envoy would drive it, one request at a time:
    a ``with`` block runs the class's ``on_startup`` and ``on_shutdown`` around the requests
    (as ``wasm.ProxyWasm`` and ``extctl.testing.EnvoyClient`` do, with the same ``request``).

        with Client(AddHeader) as client:
            result = client.get("/hello")
            assert result.request.headers["x-hello"] == "world"   # what the upstream saw

    ``upstream(request) -> answer`` answers each request (:mod:`extproc.exchange`); without
    it the upstream answers 200 with no body. Hooks run on an event loop of the client's own,
    in a thread, so the same test works sync or async; requests outside a ``with`` block run
    without the lifespan. ``mode`` and ``grpc_metadata`` are :func:`run`'s.
    """

    __test__ = False  # not a test class, whatever module imports it

    def __init__(self, processor: type[Processor], *, upstream: Upstream | None = None,
                 mode: ProcessingMode | None = None,
                 grpc_metadata: Mapping[str, str] | None = None) -> None:
        self.processor = processor
        self.upstream = upstream
        self.mode = mode
        self.grpc_metadata = grpc_metadata
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def request(self, method: str = "GET", path: str = "/", **kwargs: Any) -> Result:
        """One request; the keyword arguments are :func:`run`'s (``headers``, ``body``,
        ``trailers``, ``status``, ``response_headers``, ``response_body``, ``upstream`` ...)."""
        kwargs.setdefault("upstream", self.upstream)
        kwargs.setdefault("mode", self.mode)
        kwargs.setdefault("grpc_metadata", self.grpc_metadata)
        return self._call(run(self.processor, method=method, path=path, **kwargs))

    def get(self, path: str = "/", **kwargs: Any) -> Result:
        return self.request("GET", path, **kwargs)

    def post(self, path: str = "/", **kwargs: Any) -> Result:
        return self.request("POST", path, **kwargs)

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        if self._loop is not None:
            return asyncio.run_coroutine_threadsafe(work, self._loop).result()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(work)
        # outside a with block, from async code: on a loop of its own, in a thread
        with concurrent.futures.ThreadPoolExecutor(1, "extproc-testing") as pool:
            return pool.submit(asyncio.run, work).result()

    def __enter__(self) -> Client:
        if self._loop is not None:
            raise RuntimeError("this Client's with block is already running")
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="extproc-testing",
                                        daemon=True)
        self._thread.start()
        self._loop = loop
        try:
            self._call(self.processor.on_startup())
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._call(self.processor.on_shutdown())
        finally:
            self._stop()

    def _stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


class _Driver:
    def __init__(self, processor: type[Processor], mode: ProcessingMode,
                 metadata: list[tuple[str, str]]) -> None:
        self.spec = processor.filter_spec()
        self.exchange = _Exchange(processor, early=self._early, metadata=lambda: metadata)
        self.deadline = 0.0
        self.extended = False
        self.extensions: list[float] = []
        self.typed_metadata: Mapping[str, Any] | None = None
        self.mode = mode
        self.sent: list[str] = []
        self.metadata: dict[str, Any] = {}
        self.route_cache_cleared = False
        self.upstream_reached: Message | None = None
        #: The response headers and body chunks the client has, once Envoy sent them on.
        self.started: tuple[list[tuple[str, str]], list[bytes]] | None = None
        #: The same of the request, for the upstream.
        self.upstream_started: tuple[list[tuple[str, str]], list[bytes]] | None = None
        self.first = True

    async def send(self, message: Any) -> list[Any]:
        if self.first:
            self.first = False
            config = message.protocol_config
            config.request_body_mode, config.response_body_mode = self.mode.body_proto_values
        wire = pb.ProcessingRequest.FromString(message.SerializeToString())
        which = str(wire.WhichOneof("request"))
        self.sent.append(which)
        if self.spec.observability_mode:
            # Envoy does not wait for answers: it forwards everything as it came.
            wire.observability_mode = True
            with contextlib.suppress(_Stop, ProcessorFailed):
                await self.exchange.handle(wire)
            return [_passthrough(wire, which, self.mode)]
        try:
            answers = await self._answer(wire)
        except _Stop as stop:
            raise _Stop(pb.ProcessingResponse.FromString(stop.args[0].SerializeToString()))\
                from None
        except ProcessorFailed:
            raise _Stop(_envoy_reply(self.spec.status_on_error or 500, "stream error")) from None
        decoded = [pb.ProcessingResponse.FromString(a.SerializeToString()) for a in answers]
        for answer in decoded:
            if answer.HasField("dynamic_metadata"):
                for ns, values in json_format.MessageToDict(answer.dynamic_metadata).items():
                    self.metadata.setdefault(ns, {}).update(values)
        return decoded

    async def _answer(self, wire: Any) -> list[Any]:
        """The processor's answers, within Envoy's message timeout (reset once by an
        extension, as Envoy does)."""
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self.spec.timeout
        self.extended = False
        task = asyncio.ensure_future(self.exchange.handle(wire))
        while True:
            done, _ = await asyncio.wait({task}, timeout=max(0.0, self.deadline - loop.time()))
            if done and loop.time() < self.deadline:
                return task.result()
            # (an answer after the deadline, from a hook that blocked the loop past it, is
            # one Envoy no longer waits for)
            if loop.time() >= self.deadline:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise _Stop(_envoy_reply(504, "message timeout"))

    def _reroutes(self, common: Any) -> bool:
        # Envoy re-routes only for an answer with a header_mutation (even an empty one), as
        # asked or on every mutation, as route_cache_action says.
        action = self.spec.route_cache_action
        return common.HasField("header_mutation") and (
            action == "clear" or (action == "default" and common.clear_route_cache))

    async def _early(self, answer: Any) -> None:
        wire = pb.ProcessingResponse.FromString(answer.SerializeToString())
        seconds = wire.override_message_timeout.ToNanoseconds() / 1e9
        self.extensions.append(seconds)
        if not self.extended and seconds <= (self.spec.max_message_timeout or 0):
            self.extended = True  # Envoy restarts its timer once per message
            self.deadline = asyncio.get_running_loop().time() + seconds

    async def direction(self, direction: str, pairs: list[tuple[str, str]], chunks: list[bytes],
                        trailer_pairs: list[tuple[str, str]], has_trailers: bool,
                        attributes: Mapping[str, Any] | None,
                        metadata: Mapping[str, Mapping[str, Any]] | None,
                        bodiless: bool) -> Message:
        """One direction through the processor; ``bodiless``: a response that can have no
        body (to HEAD, a 204, a 304)."""
        mode = self.mode
        if _chunked(pairs) and not bodiless:
            # A chunked message's body follows its headers, even when empty. Envoy's HTTP/1
            # codec takes the framing header out of a request's header map (not a response's).
            if direction == "request":
                pairs = [(k, v) for k, v in pairs if k != "transfer-encoding"]
            if not chunks and not has_trailers:
                chunks = [b""]
        headers_eos = not chunks and not has_trailers
        which = f"{direction}_headers"
        content_length_kept = True
        if getattr(mode, which):
            message = pb.ProcessingRequest()
            getattr(message, which).headers.CopyFrom(_header_map(pairs))
            getattr(message, which).end_of_stream = headers_eos
            if attributes:
                struct = struct_pb2.Struct()
                struct.update(dict(attributes))
                message.attributes[EXT_PROC_NAMESPACE].CopyFrom(struct)
            if metadata:
                for ns, values in metadata.items():
                    s = struct_pb2.Struct()
                    s.update(dict(values))
                    message.metadata_context.filter_metadata[ns].CopyFrom(s)
            if self.typed_metadata and direction == "request":
                for ns, typed in self.typed_metadata.items():
                    message.metadata_context.typed_filter_metadata[ns].Pack(typed)
            (answer,) = await self.send(message)
            common = getattr(answer, which).response
            pairs = _apply(pairs, common.header_mutation)
            self.route_cache_cleared |= direction == "request" and self._reroutes(common)
            if answer.HasField("mode_override"):
                override = ProcessingMode.from_proto(answer.mode_override, mode)
                # Envoy drops overrides with a full-duplex body, and those not allowed.
                if (_FULL_DUPLEX not in (mode.request_body, mode.response_body)
                        and self.spec.override_allowed(override)):
                    mode = self.mode = override
            if common.status == pb.CommonResponse.CONTINUE_AND_REPLACE:
                replaced = _mutated(b"".join(chunks), common.body_mutation)
                pairs = [(k, v) for k, v in pairs if k != "content-length"]
                return Message(HeaderView(pairs), replaced, [replaced] if replaced else [],
                               HeaderView(trailer_pairs) if has_trailers else None)
        body_mode: BodyMode | None = getattr(mode, f"{direction}_body")
        if body_mode in _DROPS_LENGTH or (body_mode is BodyMode.BUFFERED
                                          and not getattr(mode, which)):
            # Envoy cannot know the length the processor will leave: it drops content-length
            # whether or not the body changes, even when there is no body (over HTTP/1.1 its
            # codec writes ``content-length: 0`` back into a bodiless POST or a response).
            pairs = [(k, v) for k, v in pairs if k != "content-length"]
        which = f"{direction}_body"
        out_chunks: list[bytes] = []
        holds = body_mode in HOLDS_HEADERS
        if not (holds and chunks):  # the headers go on now (to the client, or upstream)
            self._forwarded(direction, pairs, out_chunks)
        if body_mode is None or not chunks:
            out_chunks.extend(chunks)  # (the list the client has, once started)
        elif holds:
            # GRPC: Envoy 1.40 sends a gRPC body only when it holds all of it as the headers
            # are answered, then in one message, framing included.
            whole = b"".join(chunks)
            message = pb.ProcessingRequest()
            getattr(message, which).body = whole
            getattr(message, which).end_of_stream = not has_trailers
            (answer,) = await self.send(message)
            common = getattr(answer, which).response
            self.route_cache_cleared |= direction == "request" and self._reroutes(common)
            mutated = common.body_mutation.WhichOneof("mutation")
            out_chunks = [_mutated(whole, common.body_mutation)]
            if body_mode is BodyMode.BUFFERED and getattr(mode, f"{direction}_headers"):
                pairs = _apply(pairs, common.header_mutation)
            elif mutated:
                content_length_kept = False
            if body_mode is BodyMode.GRPC:
                trailer_pairs = trailer_pairs if has_trailers else []
            # With trailers to come, Envoy holds the body until they are answered.
            self._forwarded(direction, pairs, [] if has_trailers else out_chunks)
        else:
            for index, chunk in enumerate(chunks):
                message = pb.ProcessingRequest()
                getattr(message, which).body = chunk
                eos = index == len(chunks) - 1 and not has_trailers
                getattr(message, which).end_of_stream = eos
                for answer in await self.send(message):
                    out_chunks.extend(self._body_answer(answer, which, body_mode, chunk))
            content_length_kept = (body_mode is BodyMode.STREAMED
                                   and out_chunks == list(chunks))
        out_trailers = trailer_pairs
        if has_trailers and getattr(mode, f"{direction}_trailers"):
            message = pb.ProcessingRequest()
            getattr(message, f"{direction}_trailers").trailers.CopyFrom(_header_map(trailer_pairs))
            for answer in await self.send(message):
                kind = answer.WhichOneof("response")
                if kind == which:
                    out_chunks.extend(self._body_answer(answer, which, body_mode, b""))
                elif kind == f"{direction}_trailers":
                    out_trailers = _apply(out_trailers, getattr(answer, kind).header_mutation)
                else:
                    raise ProtocolError(f"{kind} in answer to {direction}_trailers")
        body = b"".join(out_chunks)
        if not content_length_kept:
            pairs = [(k, v) for k, v in pairs if k != "content-length"]
        for k, v in pairs:
            if k == "content-length" and int(v) != len(body) and not bodiless:
                raise _Stop(pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
                    status={"code": 500}, body=b"",
                    details=f"mismatched content-length in {direction} ({v} != {len(body)})")))
        return Message(HeaderView(pairs), body, out_chunks,
                       HeaderView(out_trailers) if has_trailers else None)

    def _forwarded(self, direction: str, pairs: list[tuple[str, str]],
                   chunks: list[bytes]) -> None:
        """The headers went on (and ``chunks``, a list that grows as chunks follow)."""
        if direction == "response":
            self.started = (pairs, chunks)
        else:
            self.upstream_started = (pairs, chunks)

    def upstream_request(self) -> Message | None:
        """What the upstream received: the whole request, or what went before Envoy reset
        it (``complete=False``), or None."""
        if self.upstream_reached is not None or self.upstream_started is None:
            return self.upstream_reached
        pairs, sent = self.upstream_started
        return Message(HeaderView(pairs), b"".join(sent), list(sent), complete=False)

    def _body_answer(self, answer: Any, which: str, body_mode: BodyMode | None,
                     chunk: bytes) -> list[bytes]:
        if answer.WhichOneof("response") != which:
            raise ProtocolError(f"{answer.WhichOneof('response')} in answer to {which}")
        mutation = getattr(answer, which).response.body_mutation
        if body_mode is BodyMode.FULL_DUPLEX_STREAMED:
            if mutation.WhichOneof("mutation") != "streamed_response":
                raise ProtocolError("FULL_DUPLEX_STREAMED needs streamed_response answers")
            return [mutation.streamed_response.body] if mutation.streamed_response.body else []
        return [_mutated(chunk, mutation)]

    def result(self, request: Message | None, response: Message, stop: Any,
               reset: bool = False) -> Result:
        local = None
        if stop is not None:
            immediate = stop.immediate_response
            local = LocalReply(status=immediate.status.code,
                               headers=_apply([], immediate.headers), body=immediate.body,
                               details=immediate.details)
        return Result(request=request, response=response, immediate=stop is not None,
                      details=local.details if local is not None else "",
                      sent=self.sent, dynamic_metadata=self.metadata,
                      route_cache_cleared=self.route_cache_cleared, mode=self.mode,
                      timeout_extensions=self.extensions, reset=reset, local_reply=local)


def _passthrough(wire: Any, which: str, mode: ProcessingMode) -> Any:
    if which.endswith("_body") and getattr(mode, which) is _FULL_DUPLEX:
        answer = pb.ProcessingResponse()
        streamed = getattr(answer, which).response.body_mutation.streamed_response
        streamed.body = getattr(wire, which).body
        return answer
    return _PASS[which]


def _envoy_reply(status: int, details: str) -> Any:
    """The local reply Envoy sends itself (no body) when the processor does not answer."""
    return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
        status={"code": status}, details=details))


def _immediate_message(answer: Any, head: bool = False) -> Message:
    """The local reply as Envoy sends it: with a body, its type (text/plain unless the
    answer sets one) and length; to a HEAD request, no body."""
    immediate = answer.immediate_response
    body = b"" if head else immediate.body
    pairs = [(":status", str(immediate.status.code))]
    if immediate.body:
        pairs += [("content-type", "text/plain"), ("content-length", str(len(immediate.body)))]
    pairs = _apply(pairs, immediate.headers)
    return Message(HeaderView(pairs), body, [body] if body else [])


def _apply(pairs: list[tuple[str, str]], mutation: Any) -> list[tuple[str, str]]:
    """Apply a HeaderMutation the way Envoy does: removals first, then sets in order."""
    removed = set(mutation.remove_headers)
    out = [(k, v) for k, v in pairs if k not in removed]
    for option in mutation.set_headers:
        key = option.header.key
        value = (option.header.raw_value or option.header.value.encode()).decode("latin-1")
        action = option.append_action
        exists = any(k == key for k, _ in out)
        if action == _HVO.APPEND_IF_EXISTS_OR_ADD:  # the default: Envoy reads ``append``
            action = (_HVO.APPEND_IF_EXISTS_OR_ADD if option.append.value
                      else _HVO.OVERWRITE_IF_EXISTS_OR_ADD)
        if action == _HVO.OVERWRITE_IF_EXISTS_OR_ADD or (
                action == _HVO.OVERWRITE_IF_EXISTS and exists):
            out = [(k, v) for k, v in out if k != key]
            out.append((key, value))
        elif action == _HVO.APPEND_IF_EXISTS_OR_ADD or (
                action == _HVO.ADD_IF_ABSENT and not exists):
            out.append((key, value))
    return out


def _mutated(chunk: bytes, mutation: Any) -> bytes:
    kind = mutation.WhichOneof("mutation")
    if kind == "body":
        return bytes(mutation.body)
    if kind == "clear_body":
        return b""
    if kind == "streamed_response":
        raise ProtocolError("streamed_response outside FULL_DUPLEX_STREAMED")
    return chunk


def _header_map(pairs: Iterable[tuple[str, str]]) -> Any:
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode("latin-1"))
                                       for k, v in pairs])


def _frame(pairs: list[tuple[str, str]], chunks: list[bytes]) -> None:
    """A body given without a framing header gets its content-length."""
    if any(chunks) and not any(k in ("content-length", "transfer-encoding") for k, _ in pairs):
        pairs.append(("content-length", str(sum(map(len, chunks)))))


def _chunked(pairs: list[tuple[str, str]]) -> bool:
    return any(k == "transfer-encoding" and "chunked" in v.lower() for k, v in pairs)



