"""The ext_proc message loop: one gRPC ``Process`` stream, one Processor instance.

Transport-agnostic: ``run_stream`` takes ``read``/``write`` coroutines, so the grpc.aio
servicer and ``extproc.testing`` drive exactly the same code.

Per message: check the phase order, run the hook if the class defines it, turn what the hook
changed into a ProcessingResponse. Outside FULL_DUPLEX_STREAMED every request gets exactly one
answer; in FULL_DUPLEX_STREAMED a body chunk gets zero or more (held bytes are flushed later).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import threading
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import duration_pb2

from ._body import Body
from ._headers import Headers
from ._mode import BodyMode
from ._processor import Processor
from ._responses import ImmediateResponse
from ._wire import (
    LARGE,
    PLACEHOLDER,
    BodyRequest,
    Encoded,
    field_path,
    large_body_finished,
    large_body_started,
    splice,
)
from .errors import ProtocolError

if TYPE_CHECKING:
    from ._record import StreamRecord

logger = logging.getLogger("extproc")

_PR = pb.ProcessingResponse
_HeadersResponse = pb.HeadersResponse
_BodyResponse = pb.BodyResponse
_TrailersResponse = pb.TrailersResponse
_FULL_DUPLEX = BodyMode.FULL_DUPLEX_STREAMED
_BUFFERED = BodyMode.BUFFERED
#: Body modes for which Envoy holds a direction's headers until the body is answered.
HOLDS_HEADERS = frozenset({BodyMode.BUFFERED, BodyMode.BUFFERED_PARTIAL, BodyMode.GRPC})
_REPLACE = pb.CommonResponse.CONTINUE_AND_REPLACE

# "Continue unchanged" answers, built once: serialising a shared message is safe.
_PASS = {
    "request_headers": _PR(request_headers=_HeadersResponse()),
    "response_headers": _PR(response_headers=_HeadersResponse()),
    "request_body": _PR(request_body=_BodyResponse()),
    "response_body": _PR(response_body=_BodyResponse()),
    "request_trailers": _PR(request_trailers=_TrailersResponse()),
    "response_trailers": _PR(response_trailers=_TrailersResponse()),
}

# Per-direction position in headers -> body* -> trailers (also the part of a phase).
_START, _HEADERS, _BODY, _DONE = 0, 1, 2, 3
_TRAILERS = 4

_PHASES = {
    "request_headers": ("request", _HEADERS),
    "request_body": ("request", _BODY),
    "request_trailers": ("request", _TRAILERS),
    "response_headers": ("response", _HEADERS),
    "response_body": ("response", _BODY),
    "response_trailers": ("response", _TRAILERS),
}
# Names looked up per message, built once.
_HOOK = {which: "on_" + which for which in _PHASES}
_BODY_FIELD = {"request": "request_body", "response": "response_body"}
_HEADERS_FIELD = {"request": "request_headers", "response": "response_headers"}
# Where a body goes in an answer, as field numbers (for splice).
_BODY_PATH = {which: field_path(_PR, which, "response", "body_mutation", "body")
              for which in ("request_body", "response_body")}
_STREAMED_PATH = {which: field_path(_PR, which, "response", "body_mutation",
                                    "streamed_response", "body")
                  for which in ("request_body", "response_body")}
_REPLACEMENT_PATH = {which: field_path(_PR, which, "response", "body_mutation", "body")
                     for which in ("request_headers", "response_headers")}

Read = Callable[[], Awaitable[Any]]
Write = Callable[[Any], Awaitable[None]]


class _Stop(Exception):
    """An immediate response was sent: the stream is over."""


class ProcessorFailed(Exception):
    """A hook failed closed where Envoy takes no ImmediateResponse (disable_immediate_response):
    the stream must end with an error, so that Envoy answers ``status_on_error``."""


async def answer_stream(cls: type[Processor], messages: AsyncIterable[Any],
                        counts: dict[str, int] | None = None, early: Write | None = None,
                        metadata: Callable[[], Any] | None = None,
                        record: StreamRecord | None = None,
                        encode: bool = False) -> AsyncIterator[Any]:
    """The answers to one ``Process`` stream's messages (the servicer's async generator).

    ``counts``, when given, counts the messages received per phase; ``early`` writes a
    message while a hook still runs (a timeout extension); ``metadata`` returns the stream's
    gRPC metadata (key/value pairs), called only if a hook reads it; ``record`` is told about
    each hook and body (``extproc._record``); ``encode`` (the grpcio transport): an answer
    carrying a large body is yielded serialised, as an ``extproc._wire.Encoded`` its
    serializer takes, and the process's free memory is returned after large bodies
    (``extproc._wire``). Messages may be ``extproc._wire.BodyRequest``s. Raises ProtocolError
    on a message sequence the protocol does not allow.
    """
    exchange = _Exchange(cls, counts, early, metadata, record, encode)
    try:
        async for message in messages:
            answers = await exchange.handle(message)
            if not exchange.observability:
                if record is not None:
                    record.sent += len(answers)
                for answer in answers:
                    yield answer
    except _Stop as stop:
        if not exchange.observability:
            if record is not None:
                record.sent += 1
            yield stop.args[0]
    finally:
        exchange.close()


async def run_stream(cls: type[Processor], read: Read, write: Write, eof: object,
                     counts: dict[str, int] | None = None) -> None:
    """:func:`answer_stream` over ``read``/``write`` coroutines (``read`` returns ``eof`` at
    the end): for in-memory drivers."""

    async def messages() -> AsyncIterator[Any]:
        while (message := await read()) is not eof:
            yield message

    async for answer in answer_stream(cls, messages(), counts, write):
        await write(answer)


class _Exchange:
    __slots__ = ("broken", "cls", "counts", "early", "encode", "first", "hooks", "large",
                 "observability", "proc", "record", "spec", "state")

    def __init__(self, cls: type[Processor], counts: dict[str, int] | None = None,
                 early: Write | None = None, metadata: Callable[[], Any] | None = None,
                 record: StreamRecord | None = None, encode: bool = False) -> None:
        self.cls = cls
        self.encode = encode
        self.large = False  # a body of LARGE bytes or more was seen (encode only)
        self.record = record
        self.spec = spec = cls._spec
        self.hooks = spec.hooks
        self.counts = counts
        self.early = early
        #: What the class's constructor raised: the stream fails as a hook would.
        self.broken: BaseException | None = None
        try:
            proc = cls()
        except BaseException as exc:
            if not _contained(exc):
                raise
            self.broken = exc
            proc = object.__new__(cls)
        proc._init_state()
        if early is not None:
            proc._extend = self._extend
        if metadata is not None:
            proc._raw_grpc_metadata = metadata  # called when a hook reads grpc_metadata
        self.proc = proc
        self.state = {"request": _START, "response": _START}
        self.first = True
        self.observability = False

    def close(self) -> None:
        """The stream is over: the processor's reference back to this exchange (a cycle,
        freed only by a full garbage collection) goes, and with it whatever the processor
        still holds of the stream's messages."""
        self.proc._extend = None
        if self.large:
            self.large = False
            large_body_finished()

    async def handle(self, message: Any) -> list[Any]:
        data: bytes | None = None
        if message.__class__ is BodyRequest:
            # gRPC holds what it handed over until the next message: take the body out.
            data, message.body = message.body, None
            message = message.message
        which = message.WhichOneof("request")
        phase = _PHASES.get(which)
        if phase is None:
            raise ProtocolError("ProcessingRequest carries no headers, body or trailers")
        direction, part = phase
        counts = self.counts
        if counts is not None:
            counts[which] = counts.get(which, 0) + 1
        proc = self.proc
        if self.first:
            self.first = False
            self.observability = message.observability_mode
            if message.HasField("protocol_config"):
                self._adopt_protocol_config(message.protocol_config)
        if message.attributes:
            proc._raw_attributes.append(message.attributes)
        if message.HasField("metadata_context"):
            proc._metadata_context = message.metadata_context
        proc._phase = which
        proc._extended = False
        if self.broken is not None:
            return self._unconstructed(which)
        state = self.state[direction]
        if part == _HEADERS:
            if state != _START:
                raise ProtocolError(f"{which} received twice on one stream")
            if direction == "response":
                self._lock_request("the request was already sent upstream")
            http_headers = getattr(message, which)
            self.state[direction] = _DONE if http_headers.end_of_stream else _HEADERS
            return await self._headers(which, direction, http_headers)
        if part == _BODY:
            if state == _DONE:
                raise ProtocolError(f"{which} after the end of the {direction}")
            http_body = getattr(message, which)
            eos = http_body.end_of_stream
            self.state[direction] = _DONE if eos else _BODY
            if data is None:
                data = http_body.body
            if self.encode and not self.large and len(data) >= LARGE:
                self.large = True
                large_body_started()
            if self.record is not None:
                self.record.body(direction, len(data))
            # _body holds the only reference, and drops it once the hook has answered.
            answering = self._body(which, direction, data, eos)
            del data
            return await answering
        if state == _DONE:
            raise ProtocolError(f"{which} after the end of the {direction}")
        self.state[direction] = _DONE
        return await self._trailers(which, direction, getattr(message, which).trailers.headers,
                                    body_open=state == _BODY)

    # -- phases ---------------------------------------------------------------------------

    async def _headers(self, which: str, direction: str, http_headers: Any) -> list[Any]:
        spec, proc = self.spec, self.proc
        headers = Headers._from_proto(http_headers.headers.headers, direction,
                                      spec.allow_routing_mutations, spec.allow_envoy_mutations)
        setattr(proc, which, headers)
        hook = _HOOK[which]
        if hook not in self.hooks or await self._call(hook, headers, which) is False:
            self._lock_unless_buffered(headers, direction, http_headers.end_of_stream)
            return [_PASS[which]]
        override = proc._mode_override
        replacement = proc._replacement
        if (headers._changes is None and not proc._clear_route_cache and override is None
                and proc._dynamic_metadata is None and replacement is None):
            self._lock_unless_buffered(headers, direction, http_headers.end_of_stream)
            return [_PASS[which]]
        # Built in place: nested constructors copy every sub-message.
        answer = _PR()
        response = getattr(answer, which).response
        response.SetInParent()
        headers._write_mutation(response.header_mutation)
        if proc._clear_route_cache:
            # Envoy ignores clear_route_cache in a CommonResponse without header_mutation.
            response.header_mutation.SetInParent()
            response.clear_route_cache = True
            proc._clear_route_cache = False
        large = None
        if replacement is not None:
            proc._replacement = None
            response.status = _REPLACE
            if self.encode and len(replacement) >= LARGE:
                large = replacement
                response.body_mutation.body = PLACEHOLDER
            elif replacement:
                response.body_mutation.body = replacement
            else:
                response.body_mutation.clear_body = True
            # Envoy sends nothing more of this direction, body or trailers.
            self.state[direction] = _DONE
            headers._lock(f"{direction} headers were already sent on with the new body")
        if override is not None:
            proc._mode_override = None
            proc._effective_mode = override
            answer.mode_override.CopyFrom(override.to_proto())
        self._attach_metadata(answer)
        self._lock_unless_buffered(headers, direction, http_headers.end_of_stream)
        if large is not None:
            return [Encoded(splice(answer.SerializeToString(), _REPLACEMENT_PATH[which], large))]
        return [answer]

    async def _body(self, which: str, direction: str, data: bytes, eos: bool) -> list[Any]:
        proc = self.proc
        mode: BodyMode | None = getattr(proc._effective_mode, which)
        hook = _HOOK[which]
        body = Body(data, eos)
        if hook in self.hooks and await self._call(hook, body, which) is False:
            body = Body(data, eos)  # fail open: forward what Envoy sent
        del data  # from here on, only what the answer carries is kept
        if mode is _FULL_DUPLEX:
            return self._streamed(which, body)
        headers: Headers | None = getattr(proc, _HEADERS_FIELD[direction])
        buffered = mode is _BUFFERED and headers is not None and headers._locked is None
        if buffered and body._changed and "content-length" in headers:  # type: ignore[operator]
            # Envoy keeps content-length in BUFFERED mode and rejects a mismatch.
            headers["content-length"] = str(len(body._data))  # type: ignore[index]
        header_changes = buffered and headers._changes is not None  # type: ignore[union-attr]
        route = proc._clear_route_cache and direction == "request"
        if (not body._changed and not header_changes and proc._dynamic_metadata is None
                and not route):
            if buffered:
                headers._lock(f"{direction} headers were already sent on")  # type: ignore[union-attr]
            return [_PASS[which]]
        answer = _PR()
        response = getattr(answer, which).response
        response.SetInParent()
        large = None
        if body._changed:
            data = body._data
            if self.encode and len(data) >= LARGE:
                large = data
                response.body_mutation.body = PLACEHOLDER
            elif data:
                response.body_mutation.body = data
            else:
                response.body_mutation.clear_body = True
        if route:
            response.header_mutation.SetInParent()  # else Envoy ignores clear_route_cache
            response.clear_route_cache = True
            proc._clear_route_cache = False
        if buffered:
            headers._write_mutation(response.header_mutation)  # type: ignore[union-attr]
            headers._lock(f"{direction} headers were already sent on")  # type: ignore[union-attr]
        self._attach_metadata(answer)
        if large is not None:
            return [Encoded(splice(answer.SerializeToString(), _BODY_PATH[which], large))]
        return [answer]

    def _streamed(self, which: str, body: Body) -> list[Any]:
        data, eos = body._data, body.end_of_stream
        if not data and not eos:
            return []  # everything held back for now
        answer = _PR()  # built in place, like every answer on this path
        streamed = getattr(answer, which).response.body_mutation.streamed_response
        streamed.SetInParent()
        large = self.encode and len(data) >= LARGE
        streamed.body = PLACEHOLDER if large else data
        streamed.end_of_stream = eos
        self._attach_metadata(answer)
        if large:
            return [Encoded(splice(answer.SerializeToString(), _STREAMED_PATH[which], data))]
        return [answer]

    async def _trailers(self, which: str, direction: str, values: Any,
                        body_open: bool) -> list[Any]:
        spec, proc = self.spec, self.proc
        answers: list[Any] = []
        body_which = _BODY_FIELD[direction]
        if body_open and getattr(proc._effective_mode, body_which) is _FULL_DUPLEX:
            # Trailers end a full-duplex body: let the hook flush what it held back. The hook
            # sees end_of_stream; the answer does not carry it, since trailers follow.
            body = Body(b"", True)
            hook = _HOOK[body_which]
            if hook in self.hooks and await self._call(hook, body, body_which) is False:
                body = Body(b"", True)
            answers.extend(self._streamed(body_which, Body(body._data, False)))
        proc._phase = which
        trailers = Headers._from_proto(values, "trailers", spec.allow_routing_mutations,
                                       spec.allow_envoy_mutations)
        setattr(proc, which, trailers)
        hook = _HOOK[which]
        if (hook not in self.hooks or await self._call(hook, trailers, which) is False
                or (trailers._changes is None and proc._dynamic_metadata is None)):
            answers.append(_PASS[which])
            return answers
        answer = _PR()
        getattr(answer, which).SetInParent()
        trailers._write_mutation(getattr(answer, which).header_mutation)
        self._attach_metadata(answer)
        answers.append(answer)
        return answers

    # -- helpers --------------------------------------------------------------------------

    async def _call(self, hook: str, arg: Any, phase: str) -> bool:
        """Run a hook; False means it failed and the class fails open. Raises _Stop."""
        proc, record = self.proc, self.record
        if record is not None:
            record.hook_started(phase, proc, arg)
        try:
            result = await getattr(proc, hook)(arg)
        except BaseException as exc:
            if not _contained(exc):
                raise
            logger.error("%s.%s failed (x-request-id=%s)", self.cls.__name__, hook,
                         self._request_id(), exc_info=exc, extra=self._log_fields(phase))
            return self._fail(phase, exc)
        if result is None:
            if record is not None:
                record.hook_finished(phase)
            return True
        if isinstance(result, ImmediateResponse):
            if self.spec.disable_immediate_response:
                logger.error("%s.%s returned an ImmediateResponse, which Envoy refuses "
                             "(disable_immediate_response; x-request-id=%s)",
                             self.cls.__name__, hook, self._request_id(),
                             extra=self._log_fields(phase))
                return self._fail(phase, TypeError("ImmediateResponse with "
                                                   "disable_immediate_response"))
            # What the hook gave is turned into the answer under the same policy as the hook
            # itself: a value Envoy cannot take fails open or closed, never the stream.
            try:
                answer = _PR(immediate_response=result.to_proto())
                self._attach_metadata(answer)
            except Exception as exc:
                logger.error("%s.%s returned an ImmediateResponse that cannot be sent "
                             "(x-request-id=%s)", self.cls.__name__, hook, self._request_id(),
                             exc_info=exc, extra=self._log_fields(phase))
                return self._fail(phase, exc)
            if not self.observability and self._response_started(phase):
                advice = ("answer from on_response_headers" if phase == "response_trailers"
                          else "answer from on_response_headers, or buffer the response body "
                          "(BUFFERED) to decide on the whole of it")
                logger.warning("%s.%s answered %d after the response headers went to the "
                               "client: Envoy cannot send it and resets the stream instead "
                               "(the client gets a truncated response; x-request-id=%s); %s",
                               self.cls.__name__, hook, result.status, self._request_id(),
                               advice, extra={**self._log_fields(phase, "reset"),
                                              "status": result.status})
            else:
                logger.info("%s.%s answered %d (x-request-id=%s)", self.cls.__name__, hook,
                            result.status, self._request_id(),
                            extra={**self._log_fields(phase, "immediate"),
                                   "status": result.status})
            if record is not None:
                record.hook_finished(phase, "immediate", result.status)
            raise _Stop(answer)
        logger.error("%s.%s returned %r; hooks return None or ImmediateResponse "
                     "(x-request-id=%s)", self.cls.__name__, hook, type(result).__name__,
                     self._request_id(), extra=self._log_fields(phase))
        return self._fail(phase, TypeError(f"{hook} returned {type(result).__name__}"))

    def _unconstructed(self, which: str) -> list[Any]:
        """The class's constructor failed: the first message fails as a hook would (logged,
        counted, the class's policy); failing open, the rest pass unchanged."""
        error = self.broken
        if error is not None and error is not _REPORTED:
            self.broken = _REPORTED
            logger.error("%s() failed (x-request-id=%s)", self.cls.__name__,
                         self._request_id(), exc_info=error, extra=self._log_fields(which))
            if self.record is not None:
                self.record.hook_started(which, self.proc)
            self._fail(which, error)
        return [_PASS[which]]

    def _log_fields(self, phase: str, outcome: str | None = None) -> dict[str, Any]:
        if outcome is None:
            outcome = "fail_open" if self.spec.fail_open else "fail_closed"
        fields: dict[str, Any] = {"request_id": self._request_id(), "phase": phase,
                                  "processor": self.cls.__name__, "outcome": outcome}
        if outcome == "fail_closed":
            fields["status"] = self.spec.error_status
        return fields

    def _fail(self, phase: str, error: BaseException) -> bool:
        spec = self.spec
        if self.record is not None:
            if spec.fail_open:
                self.record.hook_finished(phase, "fail_open", error=error)
            else:
                self.record.hook_finished(phase, "fail_closed", spec.error_status, error)
        if spec.fail_open:
            proc = self.proc
            proc._mode_override = None
            proc._clear_route_cache = False
            proc._replacement = None
            proc._dynamic_metadata = None
            for name in ("request_headers", "response_headers"):
                headers = getattr(proc, name)
                if headers is not None and headers._locked is None:
                    headers._changes = None  # a half-done hook's changes are not applied
            return False
        if spec.disable_immediate_response:
            raise ProcessorFailed(f"{spec.name} failed")
        response = ImmediateResponse(spec.error_status, body=spec.error_body,
                                     details="extproc_processor_error")
        raise _Stop(_PR(immediate_response=response.to_proto()))

    async def _extend(self, seconds: float) -> None:
        if self.observability or self.early is None:
            return  # Envoy does not wait for answers in observability mode
        answer = _PR()
        answer.override_message_timeout.CopyFrom(_duration(seconds))
        await self.early(answer)
        if self.record is not None:
            self.record.extended(self.proc._phase)

    def _request_id(self) -> str:
        headers = self.proc.request_headers
        return (headers.get("x-request-id") if headers is not None else None) or "-"

    def _attach_metadata(self, answer: Any) -> None:
        metadata = self.proc._dynamic_metadata
        if metadata is not None:
            self.proc._dynamic_metadata = None
            fields = answer.dynamic_metadata.fields
            for namespace, values in metadata.items():
                namespace_fields = fields[namespace].struct_value.fields
                for key, value in values.items():
                    namespace_fields[key].CopyFrom(value)

    def _response_started(self, phase: str) -> bool:
        """Whether Envoy has sent the response headers on to the client by the time ``phase``
        answers (a local answer then resets the stream): after their own answer, unless Envoy
        holds them for a buffered body's answer."""
        if phase == "response_trailers":
            return True
        return (phase == "response_body"
                and self.proc._effective_mode.response_body not in HOLDS_HEADERS)

    def _lock_unless_buffered(self, headers: Headers, direction: str, eos: bool) -> None:
        mode = getattr(self.proc._effective_mode, _BODY_FIELD[direction])
        if mode is not _BUFFERED or eos:
            headers._lock(f"{direction} headers were already sent on; change them in "
                          f"on_{direction}_headers (or in the body hook in BUFFERED mode)")

    def _lock_request(self, reason: str) -> None:
        proc = self.proc
        for headers in (proc.request_headers, proc.request_trailers):
            if headers is not None and headers._locked is None:
                headers._lock(reason)

    def _adopt_protocol_config(self, config: Any) -> None:
        # Envoy states the body modes it is configured with; trust them over the class, so
        # a hand-written Envoy config with other modes is answered in the shape it expects.
        proc = self.proc
        mode = proc._effective_mode
        if (config.request_body_mode, config.response_body_mode) == mode.body_proto_values:
            return
        request_body = BodyMode.from_proto(config.request_body_mode)
        response_body = BodyMode.from_proto(config.response_body_mode)
        if (request_body, response_body) != (mode.request_body, mode.response_body):
            proc._effective_mode = dataclasses.replace(
                mode, request_body=request_body, response_body=response_body)


def _duration(seconds: float) -> Any:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


_REPORTED = Exception("reported")  # the constructor's failure was answered once


def _contained(exc: BaseException) -> bool:
    """Whether a hook's exception is handled as a hook failure (fail open or closed) rather
    than ending the server: everything a hook raises, SystemExit and KeyboardInterrupt
    included (a server's signals never raise those: its handlers are installed), except the
    cancellation of the stream itself and a KeyboardInterrupt that a real Ctrl-C may have
    raised (SIGINT's default handler in place, on the main thread)."""
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        cancelling = getattr(task, "cancelling", None)  # Python 3.11+
        # Raised by the hook's own code (a task it awaited was cancelled), not at the
        # stream: a failure like any other.
        return cancelling is not None and cancelling() == 0
    if isinstance(exc, KeyboardInterrupt):
        return not (threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    return True
