"""Contexts: an HTTP stream's callbacks run in Envoy's way, and what Envoy's dispatcher does
once a callback returns (callouts answered by their scripted upstream, queues woken).

Envoy never calls back into a plugin while one of its callbacks runs: a callout's reply,
what a gRPC stream's upstream sends and ``proxy_on_queue_ready`` come later, from the event
loop. The emulator delivers them as soon as the callback that caused them returns, in the
order they were caused; a stream paused on a callout goes on if the reply's callback
continued it (``proxy_continue_stream``) or answered it (``proxy_send_local_response``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .abi import BODY_ACTIONS, HEADER_ACTIONS, BufferType, MapType
from .calls import (
    GRPC_DEADLINE_EXCEEDED,
    GRPC_INTERNAL,
    GRPC_UNAVAILABLE,
    NO_CLUSTER,
    SERVICE_TIME,
    Answer,
    Call,
    GrpcStream,
    GrpcStreamHandler,
    Reply,
    dispatch,
    reply_of,
    via_upstream,
)
from .errors import CalloutReset, CalloutTimeout, HostError
from .headers import HeaderMap
from .state import ROOT_CONTEXT_ID, LocalResponse, PluginState, StreamState
from .vm import Vm

Pairs = Mapping[str, str] | Mapping[str, bytes] | Iterable[tuple[str, str | bytes]]

# What Envoy's async client answers when a callout times out (a local reply).
_TIMEOUT_BODY = b"upstream request timeout"
_BROKEN_CONNECTION = 11


@dataclass(frozen=True)
class Action:
    """What a callback answered: the raw value and its name for that phase."""

    value: int
    name: str
    continues: bool


_ACTIONS: dict[tuple[int, bool], Action] = {}


def _action(value: int, body: bool, continues: bool) -> Action:
    """Actions are values: one of each, made once."""
    found = _ACTIONS.get((value, body))
    if found is None:
        name = (BODY_ACTIONS if body else HEADER_ACTIONS).get(value, "Unknown")
        found = _ACTIONS.setdefault((value, body), Action(value, name, continues))
    return found


def pairs_of(values: Pairs | None) -> list[tuple[str, str | bytes]]:
    items = values.items() if isinstance(values, Mapping) else (values or ())
    return [(k.lower(), v) for k, v in items]


def encode(pairs: Iterable[tuple[str, str | bytes]]) -> list[tuple[bytes, bytes]]:
    """Values as ``str`` (latin-1, or UTF-8 beyond it) or ``bytes``."""
    return [(k.encode("latin-1"), v if isinstance(v, bytes) else _text_bytes(v))
            for k, v in pairs]


def _text_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def run_callback(vm: Vm, name: str, *args: int) -> int | None:
    """A top-level callback, then whatever Envoy would deliver after it."""
    value = vm.call(name, *args)
    deliver(vm, vm.state)
    return value


def deliver(vm: Vm, state: PluginState) -> None:
    """Answer pending callouts and wake queues, in order, until nothing is pending (a reply's
    callback may make another call)."""
    if state.delivering:
        return  # the loop below is running: it takes what was added
    state.delivering = True
    events = 0
    try:
        while state.pending:
            kind, token, context_id = state.pending.popleft()
            if kind == "queue":
                vm.call("proxy_on_queue_ready", context_id, token)
                events += 1
            elif kind == "stream":
                events += _stream_events(vm, state, state.grpc_streams[token])
            else:
                call = state.call(kind, token)
                assert call is not None
                _answer(vm, state, call)
                events += 1
            if events > state.max_events:
                state.pending.clear()
                raise HostError(f"more than {state.max_events} callout replies, stream "
                                "events and queue wake-ups followed one callback: the filter "
                                "and its upstreams answer each other without end "
                                "(state.max_events sets the limit)")
    finally:
        state.delivering = False


def _broken_upstream(cluster: str, exc: Exception, doing: str) -> HostError:
    return HostError(f"the scripted upstream for cluster {cluster!r} raised "
                     f"{type(exc).__name__}: {exc} ({doing})")


def _answer(vm: Vm, state: PluginState, call: Call) -> None:
    if call.failure == "no cluster":  # closed as it started: no upstream to ask
        _grpc_reply(vm, state, call, None)
        return
    handler = state.upstreams[call.cluster]  # the host functions checked it is there
    reply: Reply | None = None
    doing = f"answering the {call.kind} call made by context {call.context_id}"
    try:
        if isinstance(handler, GrpcStreamHandler):
            if call.kind != "grpc":
                raise TypeError("a GrpcStreamHandler answers gRPC calls and streams, not "
                                "HTTP calls")
            reply = _unary_from_stream(handler, call)
        else:
            reply = reply_of(handler(call))
    except CalloutTimeout:
        call.failure = "timeout"
    except CalloutReset:
        call.failure = "reset"
    except Exception as exc:
        raise _broken_upstream(call.cluster, exc, doing) from exc
    call.reply = reply
    if call.kind == "http":
        _http_reply(vm, state, call, reply)
    else:
        _grpc_reply(vm, state, call, reply)


def _http_reply(vm: Vm, state: PluginState, call: Call, reply: Reply | None) -> None:
    if call.failure == "reset":
        state.status = (_BROKEN_CONNECTION, "reset")
        answer = Answer(buffer=BufferType.HTTP_CALL_RESPONSE_BODY)
    else:
        # Envoy's router adds the upstream's time to what an upstream answered (last), not
        # to its own timeout reply.
        added = [SERVICE_TIME]
        if call.failure == "timeout":
            reply = Reply(504, {"content-length": str(len(_TIMEOUT_BODY)),
                                "content-type": "text/plain"}, _TIMEOUT_BODY)
            added = []
        assert reply is not None
        headers = HeaderMap(encode([(":status", str(reply.http_status())),
                                    *reply.header_pairs(), *added]),
                            MapType.HTTP_CALL_RESPONSE_HEADERS)
        trailers = HeaderMap(encode(reply.trailer_pairs()), MapType.HTTP_CALL_RESPONSE_TRAILERS)
        answer = Answer({MapType.HTTP_CALL_RESPONSE_HEADERS: headers,
                         MapType.HTTP_CALL_RESPONSE_TRAILERS: trailers},
                        BufferType.HTTP_CALL_RESPONSE_BODY, reply.body)
    headers_count = len(answer.maps.get(MapType.HTTP_CALL_RESPONSE_HEADERS, HeaderMap()).pairs)
    trailers_count = len(answer.maps.get(MapType.HTTP_CALL_RESPONSE_TRAILERS,
                                         HeaderMap()).pairs)
    state.answer = answer
    try:
        vm.call("proxy_on_http_call_response", ROOT_CONTEXT_ID, call.token, headers_count,
                len(answer.body), trailers_count)
    finally:
        state.answer = None
        state.status = (0, "")


def _unary_from_stream(handler: GrpcStreamHandler, call: Call) -> Reply | None:
    """A unary call served by a stream handler, as a gRPC server serves one: a stream with
    one message and the client's end. The call gets the last message and the status (Envoy's
    client keeps the last); OK without a message is a failure, INTERNAL, as in Envoy."""
    stream = GrpcStream(call.cluster, call.service, call.method, call.headers, call.token,
                        call.context_id)
    for event, data in (("open", b""), ("message", call.body), ("half_close", b"")):
        if stream.status is not None:
            break
        if event == "message":
            stream.received.append(data)
        dispatch(handler, stream, event, data)
    if stream.status is None:
        raise TypeError(f"it never ended the unary call {call.service}/{call.method} "
                        "(close the stream in half_closed)")
    closing = stream.to_filter[-1]
    if closing.kind == "close" and not closing.pairs:
        raise CalloutReset("the stream handler reset the call")
    messages = [d.data for d in stream.to_filter if d.kind == "message"]
    status, message = stream.status
    if status == 0 and not messages:
        call.failure = "no message"
        return None
    return Reply(status, body=messages[-1] if messages else b"", message=message)


def _grpc_reply(vm: Vm, state: PluginState, call: Call, reply: Reply | None) -> None:
    """A unary call: its message on success, else only the close with its status (Envoy
    hands a unary call no metadata)."""
    if reply is not None and reply.grpc_status() == 0:
        state.answer = Answer(buffer=BufferType.GRPC_RECEIVE_BUFFER, body=reply.body)
        try:
            vm.call("proxy_on_grpc_receive", ROOT_CONTEXT_ID, call.token, len(reply.body))
        finally:
            state.answer = None
        return
    if reply is not None:
        # the upstream's grpc-message with Envoy's details, as for a stream (checked for both)
        status, message = reply.grpc_status(), via_upstream(reply.message)
    elif call.failure == "timeout":
        status, message = GRPC_DEADLINE_EXCEEDED, "upstream request timeout"
    elif call.failure == "no cluster":
        status, message = GRPC_UNAVAILABLE, NO_CLUSTER
    elif call.failure == "no message":  # OK, but nothing to hand over
        status, message = GRPC_INTERNAL, ""
    else:
        status, message = GRPC_UNAVAILABLE, "upstream connect error or reset"
    state.status = (status, message)
    try:
        vm.call("proxy_on_grpc_close", ROOT_CONTEXT_ID, call.token, status)
    finally:
        state.status = (0, "")


def _stream_events(vm: Vm, state: PluginState, stream: GrpcStream) -> int:
    """Tell a stream's upstream what the filter did, then call the filter back for what the
    upstream did, one event at a time (a callback may act on the stream again: that is
    delivered on a later turn, as Envoy's event loop would). Returns the callbacks made."""
    handler = state.upstreams.get(stream.cluster)  # there, or the stream never opened
    while stream.to_upstream:
        event, data = stream.to_upstream.popleft()
        if stream.status is not None and event in ("message", "half_close"):
            continue  # the upstream has ended the stream: what the filter sends goes nowhere
        if event == "message":
            stream.received.append(data)
        doing = f"handling {event!r} on gRPC stream {stream.token}"
        try:
            if handler is not None:
                dispatch(handler, stream, event, data)
        except CalloutReset:
            if stream.open:
                stream.reset()
        except CalloutTimeout as exc:
            raise _broken_upstream(stream.cluster, TypeError(
                "a gRPC stream has no timeout in proxy-wasm (Envoy sets none): end it with "
                "stream.close(4, ...) or stream.reset()"), doing) from exc
        except Exception as exc:
            raise _broken_upstream(stream.cluster, exc, doing) from exc
    made = 0
    while stream.to_filter and not stream.cancelled:
        delivery = stream.to_filter.popleft()
        made += 1
        if delivery.kind == "metadata":
            metadata = HeaderMap(encode(delivery.pairs), MapType.GRPC_RECEIVE_INITIAL_METADATA)
            _lend(vm, state, "proxy_on_grpc_receive_initial_metadata", stream.token,
                  Answer({MapType.GRPC_RECEIVE_INITIAL_METADATA: metadata}), len(delivery.pairs))
        elif delivery.kind == "message":
            _lend(vm, state, "proxy_on_grpc_receive", stream.token,
                  Answer(buffer=BufferType.GRPC_RECEIVE_BUFFER, body=delivery.data),
                  len(delivery.data))
        else:
            if delivery.kind == "close":  # "failed": closed as it started, only the close
                _lend(vm, state, "proxy_on_grpc_receive_trailing_metadata", stream.token,
                      Answer({MapType.GRPC_RECEIVE_TRAILING_METADATA:
                              HeaderMap(encode(delivery.pairs),
                                        MapType.GRPC_RECEIVE_TRAILING_METADATA)}),
                      len(delivery.pairs))
            stream.remote_closed = True
            state.status = (delivery.status, delivery.message)
            try:
                vm.call("proxy_on_grpc_close", ROOT_CONTEXT_ID, stream.token, delivery.status)
            finally:
                state.status = (0, "")
            if stream.local_closed:
                stream.forgotten = True  # both ends closed: Envoy erases the token
    return made


def _lend(vm: Vm, state: PluginState, callback: str, token: int, answer: Answer,
          size: int) -> None:
    state.answer = answer
    try:
        vm.call(callback, ROOT_CONTEXT_ID, token, size)
    finally:
        state.answer = None


class HttpContext:
    """One HTTP stream inside the filter, its callbacks called one by one."""

    def __init__(self, vm: Vm, stream: StreamState) -> None:
        self.vm = vm
        self.stream = stream
        self.context_id = stream.context_id
        self.actions: list[tuple[str, Action]] = []

    # the stream's state, under the names tests use
    @property
    def local_response(self) -> LocalResponse | None:
        return self.stream.local_response

    @local_response.setter
    def local_response(self, value: LocalResponse | None) -> None:
        self.stream.local_response = value

    @property
    def reset(self) -> bool:
        return self.stream.reset

    @property
    def continued(self) -> set[str]:
        return self.stream.continued

    @property
    def response_started(self) -> bool:
        return self.stream.response_started

    def _call(self, callback: str, lends: MapType | None, *args: int) -> Action:
        stream = self.stream
        stream.paused_maps.clear()  # a new phase: Envoy has let go of a stopped one's map
        if lends is not None:
            stream.live.add(lends)
        try:
            value = self.vm.call(callback, self.context_id, *args)
        finally:
            stream.live.clear()
        value = 0 if value is None else value
        body = callback.endswith("_body")
        # Envoy takes a headers answer of 2 (ContinueAndEndStream) as Continue.
        continues = value == 0 or (not body and value == 2)
        if not continues and lends is not None:
            # Envoy keeps the map of a stopped phase: a callout's reply may still change it.
            stream.paused_maps.add(lends)
        deliver(self.vm, self.vm.state)
        action = _action(value, body, continues)
        self.actions.append((callback.removeprefix("proxy_on_"), action))
        return action

    def _map_phase(self, callback: str, kind: MapType, pairs: Pairs, *flags: bool) -> Action:
        """A headers or trailers callback: the map is lent to the filter while it runs."""
        self.stream.maps[kind] = HeaderMap(encode(pairs_of(pairs)), kind)
        return self._call(callback, kind, len(self.stream.maps[kind].pairs), *map(int, flags))

    def _body_phase(self, direction: str, chunk: bytes, end_of_stream: bool) -> Action:
        self.stream.buffers[direction] += chunk
        if direction == "request":
            self.stream.received += len(chunk)
        return self._call(f"proxy_on_{direction}_body", None,
                          len(self.stream.buffers[direction]), int(end_of_stream))

    def on_request_headers(self, headers: Pairs, end_of_stream: bool = True) -> Action:
        state = self.vm.state
        self.stream.started = (state.clock(), state.monotonic())
        return self._map_phase("proxy_on_request_headers", MapType.REQUEST_HEADERS, headers,
                               end_of_stream)

    def on_request_body(self, chunk: bytes, end_of_stream: bool) -> Action:
        return self._body_phase("request", chunk, end_of_stream)

    def on_request_trailers(self, trailers: Pairs) -> Action:
        return self._map_phase("proxy_on_request_trailers", MapType.REQUEST_TRAILERS, trailers)

    def on_response_headers(self, headers: Pairs, end_of_stream: bool = True) -> Action:
        self.stream.response_started = True
        pairs = pairs_of(headers)  # once: ``headers`` may be an iterator
        status = dict(pairs).get(":status")
        self.stream.response_code = (int(status) if isinstance(status, str) and status.isdigit()
                                     else None)
        return self._map_phase("proxy_on_response_headers", MapType.RESPONSE_HEADERS, pairs,
                               end_of_stream)

    def on_response_body(self, chunk: bytes, end_of_stream: bool) -> Action:
        return self._body_phase("response", chunk, end_of_stream)

    def on_response_trailers(self, trailers: Pairs) -> Action:
        return self._map_phase("proxy_on_response_trailers", MapType.RESPONSE_TRAILERS,
                               trailers)

    def take_body(self, direction: str) -> bytes:
        """What the filter lets through: data held back, then the buffer (both emptied)."""
        stream = self.stream
        data = stream.held[direction] + stream.buffers[direction]
        stream.held[direction] = stream.buffers[direction] = b""
        if direction == "response":
            stream.sent += len(data)
        return data

    def hold(self, direction: str) -> None:
        """A stop other than StopIterationAndBuffer: Envoy keeps the data, but the next call
        sees only the chunk that comes next."""
        stream = self.stream
        stream.held[direction] += stream.buffers[direction]
        stream.buffers[direction] = b""

    def headers(self, kind: MapType) -> list[tuple[str, str]]:
        found = self.stream.maps.get(kind)
        return found.text() if found is not None else []

    def finish(self) -> None:
        """The stream is over: ``proxy_on_log`` (the maps readable), then ``proxy_on_done``
        and ``proxy_on_delete``, in Envoy's order."""
        self.stream.logging = True
        try:
            self.vm.call("proxy_on_log", self.context_id)
        finally:
            self.stream.logging = False
        done = self.vm.call("proxy_on_done", self.context_id)
        self.stream.finishing = done == 0  # the filter will call proxy_done itself
        self.vm.call("proxy_on_delete", self.context_id)
        deliver(self.vm, self.vm.state)  # what the last callbacks caused (a log callout)
