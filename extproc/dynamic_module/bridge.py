"""Python side of the extkit dynamic module (``extkit_dm.c``, loaded by Envoy): an
extproc.Processor's hooks on an asyncio loop in a thread of Envoy's process, answered by the
same message loop every ext_proc transport runs (``extproc._stream``), so a class means here
what it means behind Envoy's ext_proc filter.

The module queues one event per phase (headers, a body chunk or whole body, trailers) and wakes
the loop through an eventfd. Each event becomes the ext_proc ``ProcessingRequest`` Envoy would
send and goes through the stream's message loop, one message at a time per stream, as on one
``Process`` stream; its answers go back as what the module applies (header changes, a body,
the route cache, a mode override, dynamic metadata, a local reply) through ``_extkit_dm.answer``
/ ``reply``, which have Envoy's scheduler resume the stream on its worker. ``message_timeout``
is kept in C (a hook that blocks the loop still gets Envoy's answer to a timeout);
``extend_timeout`` moves that deadline.

One message loop (and Processor) per HTTP stream, as with ext_proc: made at the stream's first
phase, dropped after its last one or when Envoy ends the stream.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import logging
import sys
import threading
from typing import Any

import _extkit_dm as dm  # type: ignore[import-not-found]  # the C module's, registered first
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

import extproc
from extproc._stream import ProcessorFailed, _Exchange, _Stop
from extproc._wire import BodyRequest
from extproc.dynamic_module import ATTRIBUTES, unsent_attributes
from extproc.errors import ProtocolError

REQUEST_HEADERS, RESPONSE_HEADERS, END = 1, 2, 3
REQUEST_BODY, RESPONSE_BODY, REQUEST_TRAILERS, RESPONSE_TRAILERS = 4, 5, 6, 7
# The phases' names (ProcessingRequest fields); the module's phase numbers index it.
_WHICH = ("", "request_headers", "response_headers", "", "request_body", "response_body",
          "request_trailers", "response_trailers")
_PART = ("", "headers", "headers", "", "body", "body", "trailers", "trailers")
# Bits of the phases a config has the module send (Envoy's ext_proc processing mode).
HOOK_REQUEST_HEADERS, HOOK_RESPONSE_HEADERS = 1, 2
HOOK_REQUEST_TRAILERS, HOOK_RESPONSE_TRAILERS = 4, 8
# The body modes the module runs, by its numbers.
_BODY_MODES = {None: 0, extproc.BodyMode.STREAMED: 1, extproc.BodyMode.BUFFERED: 2,
               extproc.BodyMode.BUFFERED_PARTIAL: 3, extproc.BodyMode.FULL_DUPLEX_STREAMED: 4}
_FULL_DUPLEX = extproc.BodyMode.FULL_DUPLEX_STREAMED
_OP_SET, _OP_ADD, _OP_REMOVE = 0, 1, 2  # the module's header operations
_CLEAR_ROUTE, _REPLACE, _ABANDON = 1, 2, 4  # flags of an answer
_REPLACE_STATUS = pb.CommonResponse.CONTINUE_AND_REPLACE
_GATEWAY_TIMEOUT = 504  # what Envoy's ext_proc answers when a message times out
_AFTER_WATCHDOG = 0.05  # seconds
_LIFECYCLE_TIMEOUT = 60.0  # seconds an on_startup / on_shutdown may take

logger = logging.getLogger("extkit_dm")

_loop: asyncio.AbstractEventLoop | None = None
_configs: list[_Config] = []
_streams: dict[int, _Stream] = {}
_started: dict[type[extproc.Processor], int] = {}  # classes started, by configs in use


class _Config:
    """One filter config: the class, what it asks of Envoy, and what Envoy's ext_proc filter
    takes from the policy: the message timeout (seconds) and whether a phase with no answer in
    time goes on (``fail_open``) instead of a 504. With headers only, the phase after which
    the stream is done (``last``); otherwise it is dropped when Envoy ends the stream."""

    def __init__(self, cls: type[extproc.Processor], timeout: float, fail_open: bool) -> None:
        spec = cls.filter_spec()
        mode = spec.mode
        self.cls = cls
        self.spec = spec
        self.timeout = timeout
        self.fail_open = fail_open
        self.observe = spec.observability_mode
        self.hooks = _hook_bits(mode)
        self.body_modes = (_BODY_MODES[mode.request_body], _BODY_MODES[mode.response_body])
        headers_only = not (mode.request_body or mode.response_body or mode.request_trailers
                            or mode.response_trailers or spec.allow_mode_override)
        self.last = (0 if not headers_only or self.observe
                     else RESPONSE_HEADERS if mode.response_headers else REQUEST_HEADERS)
        self.metadata = list(spec.grpc_initial_metadata)


def _hook_bits(mode: extproc.ProcessingMode) -> int:
    return ((HOOK_REQUEST_HEADERS if mode.request_headers else 0)
            | (HOOK_RESPONSE_HEADERS if mode.response_headers else 0)
            | (HOOK_REQUEST_TRAILERS if mode.request_trailers else 0)
            | (HOOK_RESPONSE_TRAILERS if mode.response_trailers else 0))


class _Stream:
    """One HTTP stream: its message loop, and the messages waiting for it (one at a time)."""

    __slots__ = ("config", "exchange", "expired", "handle", "kind", "queue", "running",
                 "serial", "timer")

    def __init__(self, config: _Config, handle: int, serial: int) -> None:
        self.config = config
        self.handle = handle  # the module's stream, while it holds an unanswered event
        self.serial = serial  # the stream's key here: unique, where an address is reused
        self.kind = 0  # the phase being answered
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False  # the phase's timer cancelled it
        self.running = False
        self.queue: collections.deque[tuple[int, Any, bool]] | None = None
        self.exchange = _Exchange(config.cls, early=self._early, metadata=self._metadata)

    def _metadata(self) -> list[tuple[str, str]]:
        # What a hook reads as grpc_metadata: there is no gRPC stream, but the class's
        # grpc_initial_metadata is what Envoy would have sent on one.
        return self.config.metadata

    async def _early(self, answer: Any) -> None:
        """A hook's extend_timeout: the phase's deadline moves, in C and here."""
        seconds = answer.override_message_timeout.ToNanoseconds() / 1e9
        dm.extend(self.handle, self.kind, max(1, round(seconds * 1000)))
        if self.timer is not None:
            self.timer.cancel()
            task = asyncio.current_task()
            assert task is not None and _loop is not None
            self.timer = _loop.call_later(seconds + _AFTER_WATCHDOG, _expire, self, task)


def configure(raw: str) -> tuple[Any, ...]:
    """A filter config (JSON: ``processor``, ``path``): its handle, the phases it has the
    module send, its message timeout (ms) and fail_open, which the module keeps in C too (a
    hook that blocks the loop still gets Envoy's answer to a timeout), its body modes, whether
    Envoy goes on without waiting (observability mode), and the attributes to send with each
    direction's headers. Runs on Envoy's main thread; starts the loop thread the first
    time."""
    options = json.loads(raw or "{}")
    for entry in reversed(options.get("path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    cls = extproc.import_processor(options["processor"])
    mode = cls.filter_spec().mode
    for name in ("request_body", "response_body"):
        if getattr(mode, name) not in _BODY_MODES:
            raise extproc.ServeError(f"{cls.__name__}.{name}_mode is "
                                     f"{getattr(mode, name).name}: the dynamic module runs "
                                     "STREAMED, BUFFERED, BUFFERED_PARTIAL and "
                                     "FULL_DUPLEX_STREAMED bodies")
    spec = cls.filter_spec()
    unsent = unsent_attributes(spec.request_attributes, spec.response_attributes)
    if unsent:
        raise extproc.ServeError(f"{cls.__name__} {unsent}")
    attributes = [[(name.encode(), *ATTRIBUTES[name]) for name in names]
                  for names in (spec.request_attributes, spec.response_attributes)]
    timeout = float(options.get("message_timeout") or spec.timeout)
    config = _Config(cls, timeout, bool(options.get("fail_open", False)))
    _start()
    if not _started.get(cls):
        # once per class in this Envoy, as once per server process; a failure refuses the
        # config (Envoy does not start, or rejects the update), its traceback on stderr
        _on_loop(cls.on_startup(), f"{cls.__name__}.on_startup")
    _started[cls] = _started.get(cls, 0) + 1
    _configs.append(config)
    return (len(_configs) - 1, config.hooks, max(1, round(timeout * 1000)), config.fail_open,
            *config.body_modes, config.observe, *attributes)


def release(config_id: int) -> None:
    """Envoy dropped a filter config (an update, or Envoy stopping): the class's
    ``on_shutdown`` runs once no config of it is left. Streams still open keep running."""
    cls = _configs[config_id].cls
    _started[cls] -= 1
    if _started[cls] == 0:
        del _started[cls]
        try:
            _on_loop(cls.on_shutdown(), f"{cls.__name__}.on_shutdown")
        except Exception:
            logger.exception("%s.on_shutdown failed", cls.__name__)


def _on_loop(coroutine: Any, what: str) -> None:
    """Run ``coroutine`` on the loop thread and wait for it (from Envoy's main thread)."""
    assert _loop is not None
    future = asyncio.run_coroutine_threadsafe(coroutine, _loop)
    try:
        future.result(_LIFECYCLE_TIMEOUT)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise extproc.ServeError(f"{what} took more than {_LIFECYCLE_TIMEOUT:.0f}s") from None


def _start() -> None:
    global _loop
    if _loop is not None:
        return
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    loop.add_reader(dm.wake_fd(), _drain)
    _loop = loop
    threading.Thread(target=loop.run_forever, name="extkit-dm-loop", daemon=True).start()


def _drain() -> None:
    assert _loop is not None
    for handle, serial, kind, config_id, payload, eos in dm.take():
        try:
            if kind == END:
                # After the steps of tasks created above: a stream that ended before its
                # first phase ran would otherwise get its message loop after this.
                _loop.call_soon(_end, serial)
                continue
            stream = _streams.get(serial)
            if stream is None:
                stream = _streams[serial] = _Stream(_configs[config_id], handle, serial)
            if stream.running:  # one message at a time, in order, as on one ext_proc stream
                if stream.queue is None:
                    stream.queue = collections.deque()
                stream.queue.append((kind, payload, eos))
                continue
            stream.running = True
            _loop.create_task(_serve(stream, kind, payload, eos))
        except Exception:  # the bridge's own failure: answered under the class's policy
            logger.exception("extkit_dm: stream %d's phase %d was not handed over", serial, kind)
            if kind != END:
                _refuse(handle, kind, _configs[config_id].spec)


def _refuse(handle: int, kind: int, spec: Any, done: bool = False) -> bool:
    """Answer a phase the bridge could not run: on unchanged for a fail-open class, else the
    class's error answer (never a request let through that a fail-closed class would stop).
    Returns whether that ended the stream."""
    try:
        if spec.fail_open:
            dm.answer(handle, kind, done, None)
            return done
        dm.reply(handle, kind, spec.error_status, [], spec.error_body,
                 b"extproc_processor_error")
        return True
    except Exception:
        logger.exception("extkit_dm: the phase is left to the message timeout")
        return False


def _end(serial: int) -> None:
    stream = _streams.pop(serial, None)
    if stream is not None and not stream.running:
        stream.exchange.close()


async def _serve(stream: _Stream, kind: int, payload: Any, eos: bool) -> None:
    try:
        while True:
            if stream.config.observe:
                await _watch(stream, kind, payload, eos)
            else:
                await _phase(stream, kind, payload, eos)
            if not stream.queue:
                return
            kind, payload, eos = stream.queue.popleft()
    finally:
        stream.running = False
        if stream.serial not in _streams:  # ended (or done) meanwhile
            stream.exchange.close()


def _expire(stream: _Stream, task: asyncio.Task[Any]) -> None:
    stream.expired = True
    task.cancel()


def _request(stream: _Stream, kind: int, payload: bytes, eos: bool) -> Any:
    """The ProcessingRequest Envoy's ext_proc filter would send for this phase: headers and
    trailers come serialized by the module; a body goes beside its message (as the grpcio
    transport hands it over), not copied into it."""
    if _PART[kind] == "body":
        message = pb.ProcessingRequest()
        getattr(message, _WHICH[kind]).end_of_stream = eos
        request: Any = BodyRequest(message, payload)
    else:
        message = request = pb.ProcessingRequest.FromString(payload)
    if stream.config.observe and stream.exchange.first:
        message.observability_mode = True
    return request


async def _watch(stream: _Stream, kind: int, payload: Any, eos: bool) -> None:
    """Observability mode: Envoy went on already; the hooks run, their answers are dropped."""
    with contextlib.suppress(_Stop, ProcessorFailed, ProtocolError):
        await stream.exchange.handle(_request(stream, kind, payload, eos))


async def _phase(stream: _Stream, kind: int, payload: Any, eos: bool) -> None:
    """Run one phase through the stream's message loop and answer the module exactly once (a
    second answer would drop the stream's reference twice). A local reply, or an answer that
    ends the stream's phases (``done``), is the module's last word on the stream: it sends no
    END for it, so the stream is dropped here then."""
    config, handle = stream.config, stream.handle
    which = _WHICH[kind]
    answered = False
    done = kind == config.last
    task = asyncio.current_task()
    assert task is not None and _loop is not None
    stream.kind = kind
    stream.expired = False
    # The module answers Envoy at the timeout itself (its watchdog, in C); this timer, a
    # little later, stops the hook and is Envoy's answer only if the watchdog is not running.
    stream.timer = _loop.call_later(config.timeout + _AFTER_WATCHDOG, _expire, stream, task)
    try:
        try:
            answers = await stream.exchange.handle(_request(stream, kind, payload, eos))
        except _Stop as stop:
            _reply(handle, kind, stop.args[0].immediate_response)
            answered = done = True
            return
        except ProcessorFailed:
            # A hook failed closed where Envoy takes no ImmediateResponse: Envoy's ext_proc
            # answers a failed stream with status_on_error.
            dm.reply(handle, kind, config.spec.status_on_error or 500, [], b"",
                     b"ext_proc_error_gRPC_error_13")
            answered = done = True
            return
        except asyncio.CancelledError:
            if not stream.expired:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()  # the next phase on this task starts uncancelled
                stream.expired = False
            logger.error("%s.on_%s: no answer within the message timeout", config.spec.name,
                         which)
            # What Envoy's ext_proc answers a timeout: 504, or, failing open, going on with no
            # more phases. The module's watchdog has usually answered so already (then this is
            # dropped there); if it has not, this is the answer.
            if config.fail_open:
                dm.answer(handle, kind, True, None, _ABANDON)
            else:
                dm.reply(handle, kind, _GATEWAY_TIMEOUT, [], b"", b"extproc_message_timeout")
            answered = done = True
            return
        _answer(stream, kind, done, answers)  # raises before it answers, or answers
        answered = True
    except Exception:
        # The bridge's own failure (or a message out of order): as a hook failing, under the
        # class's policy, never a request let through that a fail-closed class would stop.
        logger.exception("extkit_dm: %s of stream %d failed in the bridge", which,
                         stream.serial)
        if not answered:
            done = _refuse(handle, kind, config.spec, done)
            answered = True
    finally:
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if stream.expired and getattr(task, "cancelling", lambda: 0)():
            # a hook that swallowed the cancellation: the next phase starts clean
            getattr(task, "uncancel")()  # noqa: B009 - Python 3.11+, and mypy checks 3.10
        if not answered:  # cancelled by the loop closing: let Envoy have its stream back
            done = True
            dm.answer(handle, kind, True, None)
        if done:
            _streams.pop(stream.serial, None)


def _reply(handle: int, kind: int, immediate: Any) -> None:
    headers = [(option.header.key.encode("latin-1"),
                option.header.raw_value or option.header.value.encode())
               for option in immediate.headers.set_headers]
    dm.reply(handle, kind, immediate.status.code or 200, headers, immediate.body,
             (immediate.details or "extproc_immediate_response").encode())


def _answer(stream: _Stream, kind: int, done: bool, answers: list[Any]) -> None:
    """Hand the message loop's answers to a phase to the module: header (or trailer) changes,
    a body's bytes (None: unchanged), flags, a mode override, dynamic metadata."""
    part = _PART[kind]
    ops: list[tuple[int, bytes, bytes | None]] | None = None
    body: bytes | None = None
    flags = 0
    override = None
    metadata = None
    for answer in answers:
        field = answer.WhichOneof("response")
        message = getattr(answer, field)
        if field.endswith("trailers"):
            ops = _operations(message.header_mutation)
        else:
            common = message.response
            if common.HasField("header_mutation"):
                ops = _operations(common.header_mutation)
                if common.clear_route_cache:
                    flags |= _CLEAR_ROUTE
            mutation = common.body_mutation
            chosen = mutation.WhichOneof("mutation")
            if chosen == "streamed_response":
                body = (body or b"") + mutation.streamed_response.body
            elif chosen == "body":
                body = mutation.body
            elif chosen == "clear_body":
                body = b""
            if common.status == _REPLACE_STATUS:
                flags |= _REPLACE
                body = body or b""
        if answer.HasField("mode_override") and part == "headers":
            override = _override(stream, answer.mode_override)
        if answer.HasField("dynamic_metadata"):
            metadata = _metadata(answer.dynamic_metadata)
    if kind in (REQUEST_HEADERS, REQUEST_BODY):
        # Envoy's route_cache_action: "default" re-routes on clear_route_cache (with a header
        # mutation), "clear" on any request header change, "retain" never.
        action = stream.config.spec.route_cache_action
        if action == "retain":
            flags &= ~_CLEAR_ROUTE
        elif action == "clear" and ops:
            flags |= _CLEAR_ROUTE
    if part == "body" and body is None:
        mode = getattr(stream.exchange.proc._effective_mode, _WHICH[kind])
        if mode is _FULL_DUPLEX:
            body = b""  # everything held back for now
    dm.answer(stream.handle, kind, done, ops, body, flags, override, metadata)


def _operations(mutation: Any) -> list[tuple[int, bytes, bytes | None]] | None:
    """A HeaderMutation as the module's operations, as Envoy applies it: removals first, then
    each value set (``append`` false: replacing the name's values) or added."""
    if not mutation.set_headers and not mutation.remove_headers:
        return None
    operations: list[tuple[int, bytes, bytes | None]] = [
        (_OP_REMOVE, name.encode("latin-1"), None) for name in mutation.remove_headers]
    for option in mutation.set_headers:
        header = option.header
        operations.append((_OP_ADD if option.append.value else _OP_SET,
                           header.key.encode("latin-1"),
                           header.raw_value or header.value.encode()))
    return operations


def _override(stream: _Stream, proto: Any) -> tuple[int, int, int] | None:
    """A mode override as the module takes it (its body modes and phase bits), or None where
    Envoy's ext_proc drops it: not allowed by the class, or a body FULL_DUPLEX_STREAMED."""
    spec = stream.config.spec
    current = stream.exchange.proc._effective_mode
    if not spec.allow_mode_override:
        return None
    override = extproc.ProcessingMode.from_proto(proto, current)
    if (_FULL_DUPLEX in (current.request_body, current.response_body)
            or not spec.override_allowed(override)
            or override.request_body not in _BODY_MODES
            or override.response_body not in _BODY_MODES):
        return None
    return (_BODY_MODES[override.request_body], _BODY_MODES[override.response_body],
            _hook_bits(override))


def _metadata(struct: Any) -> list[tuple[bytes, bytes]]:
    """Dynamic metadata (namespace -> fields) as the module merges it: each namespace's
    fields as a serialized google.protobuf.Struct."""
    return [(namespace.encode(), value.struct_value.SerializeToString())
            for namespace, value in struct.fields.items()]
