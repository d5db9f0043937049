"""Callouts a filter makes (``proxy_http_call``, ``proxy_grpc_call``, ``proxy_grpc_stream``)
and the scripted upstreams that answer them in the emulator:

    def auth(call: Call) -> Reply:
        allowed = call.header("authorization") == "Bearer ok"
        return Reply(200 if allowed else 403, body=b"checked")

    ProxyWasm(module, upstreams={"auth": auth})

A handler gets the :class:`Call` and returns a :class:`Reply` (a ``(status, headers, body)``
tuple is taken too), or raises :class:`~wasm.errors.CalloutTimeout` or
:class:`~wasm.errors.CalloutReset` for what Envoy reports then.

A gRPC stream (``proxy_grpc_stream``) is a :class:`GrpcStream`: its upstream answers through
the stream's methods (:meth:`GrpcStream.send_metadata`, :meth:`~GrpcStream.send`,
:meth:`~GrpcStream.close`, :meth:`~GrpcStream.reset`), from a :class:`GrpcStreamHandler`
given for the cluster or from the test itself at any time between callbacks::

    class Watch(GrpcStreamHandler):
        def received(self, stream, message):
            stream.send(b"ack:" + message)

    plugin = ProxyWasm(module, upstreams={"config": Watch()})
    plugin.tick()                                 # the filter opens the stream and sends
    plugin.grpc_streams[0].send(b"new config")    # a push, delivered at once

A plain handler (the unary kind) serves a stream too: each message the filter sends is
answered as a unary call would be (the reply's body as one message; a status other than OK
closes the stream), and the stream is closed OK when the filter ends its side.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .headers import HeaderMap


@dataclass
class Call:
    """One callout as the upstream receives it."""

    kind: str
    """``"http"`` or ``"grpc"``."""
    cluster: str
    headers: list[tuple[str, str]]
    """The call's headers (for gRPC: its initial metadata)."""
    body: bytes
    trailers: list[tuple[str, str]]
    timeout_ms: int
    """What the filter asked for; 0: none."""
    token: int
    context_id: int
    """The context that made the call (the root context's id is 1). The reply goes to the
    root context in any case, as in Envoy."""
    service: str = ""
    method: str = ""
    """For gRPC: the service and method names."""
    reply: Reply | None = None
    """What the upstream answered (None when it timed out or reset, or has not answered)."""
    failure: str | None = None
    """``"timeout"`` or ``"reset"`` when the upstream raised one; ``"no cluster"`` for a
    GrpcService naming a cluster that has no upstream; ``"no message"`` for a gRPC call
    a stream handler ended OK without a message."""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


@dataclass
class Reply:
    """What a scripted upstream answers: ``status`` is the HTTP status (default 200) or, for a
    gRPC call, the gRPC status (default 0, OK), then the call gets ``body`` as its message;
    any other closes it with that status and ``message``."""

    status: int | None = None
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = ()
    body: bytes = b""
    trailers: Mapping[str, str] | Iterable[tuple[str, str]] = ()
    message: str = ""
    """For gRPC: the status message (``proxy_get_status``)."""

    def http_status(self) -> int:
        return 200 if self.status is None else self.status

    def grpc_status(self) -> int:
        return 0 if self.status is None else self.status

    def header_pairs(self) -> list[tuple[str, str]]:
        return _pairs(self.headers)

    def trailer_pairs(self) -> list[tuple[str, str]]:
        return _pairs(self.trailers)


Headers = Mapping[str, str] | Iterable[tuple[str, str]]
Handler = Callable[[Call], "Reply | tuple[int, Headers, bytes] | None"]
"""A scripted upstream for HTTP calls and unary gRPC calls (None: nothing, for a stream)."""

# What Envoy's gRPC client hands the filter: the response headers as initial metadata (with
# the router's x-envoy-upstream-service-time last, which the router adds only once the
# request is complete: on a stream, when the filter has ended its side), the trailers
# (grpc-status, grpc-message, the upstream's own) as trailing metadata.
_GRPC_HEADERS = ((":status", "200"), ("content-type", "application/grpc"))
SERVICE_TIME = ("x-envoy-upstream-service-time", "0")
GRPC_DEADLINE_EXCEEDED, GRPC_INTERNAL, GRPC_UNAVAILABLE = 4, 13, 14
NO_CLUSTER = "Cluster not available"


def via_upstream(message: str) -> str:
    """The status message Envoy 1.40's gRPC client reports for a status the upstream sent:
    its grpc-message with the response code details appended."""
    return f"{message}{{via_upstream}}" if message else "via_upstream"


@dataclass(frozen=True)
class Delivery:
    """What a stream's upstream did, for the filter's callback: ``"metadata"`` (``pairs``),
    ``"message"`` (``data``), ``"close"`` (trailing ``pairs``, ``status``, ``message``) or
    ``"failed"`` (only the close: the stream failed as it started)."""

    kind: str
    pairs: list[tuple[str, str]] = field(default_factory=list)
    data: bytes = b""
    status: int = 0
    message: str = ""


class GrpcStreamHandler:
    """A scripted upstream for gRPC streams: the emulator calls these as the filter acts on
    a stream (each once the filter's callback has returned, as Envoy's event loop would);
    they answer through the stream's methods. By default a stream is closed OK when the
    filter ends its side, and nothing else happens."""

    def opened(self, stream: GrpcStream) -> None:
        """The filter opened ``stream`` (``proxy_grpc_stream``)."""

    def received(self, stream: GrpcStream, message: bytes) -> None:
        """The filter sent ``message`` (``proxy_grpc_send``)."""

    def half_closed(self, stream: GrpcStream) -> None:
        """The filter ended its side (a send with end of stream, or ``proxy_grpc_close``)."""
        if stream.open:
            stream.close()

    def cancelled(self, stream: GrpcStream) -> None:
        """The filter reset the stream (``proxy_grpc_cancel``); nothing more reaches it."""


ScriptedUpstream = Handler | GrpcStreamHandler
"""What ``ProxyWasm(upstreams={cluster: ...})`` takes."""


@dataclass
class GrpcStream:
    """One gRPC stream the filter opened, as its upstream sees it, and the upstream's end of
    it. What the upstream sends reaches the filter's ``proxy_on_grpc_receive_*`` callbacks
    in order, on the root context, once the running callback (if any) has returned."""

    cluster: str
    service: str
    method: str
    headers: list[tuple[str, str]]
    """The initial metadata the filter sent."""
    token: int
    """6, 10, ...: 2 in the two low bits, as Envoy numbers streams (wasm.state)."""
    context_id: int
    """The context that opened it (the callbacks go to the root context in any case)."""
    received: list[bytes] = field(default_factory=list)
    """Messages the filter sent, in order."""
    half_closed: bool = False
    """The filter ended its side: no more messages from it."""
    cancelled: bool = False
    """The filter reset the stream: nothing reaches it any more."""
    sent: list[bytes] = field(default_factory=list)
    """Messages the upstream sent, in order."""
    status: tuple[int, str] | None = None
    """How the upstream ended the stream, ``(gRPC status, message)``; None while open. A
    reset is ``(13, "")``, INTERNAL, as Envoy's gRPC client reports it; a stream to a
    GrpcService naming no cluster ``(14, "Cluster not available")``."""
    kind: str = "grpc_stream"
    local_closed: bool = field(default=False, repr=False)
    """The filter called ``proxy_grpc_close``."""
    remote_closed: bool = field(default=False, repr=False)
    """The filter has been called back for the upstream's end of the stream."""
    forgotten: bool = field(default=False, repr=False)
    """The host no longer knows the token: the filter's calls with it answer NOT_FOUND.
    Not derived from the flags above: Envoy erases the token at different moments (at a
    cancel; at the filter's close once the upstream's close was delivered; after the close
    callback when the filter had closed first)."""
    to_upstream: deque[tuple[str, bytes]] = field(default_factory=deque, repr=False)
    """What the filter did that its upstream has not yet been told of."""
    to_filter: deque[Delivery] = field(default_factory=deque, repr=False)
    """What the upstream did that the filter has not yet been called back for."""
    wake: Callable[[GrpcStream], None] = field(default=lambda stream: None, repr=False)
    """Set by the host: asks for the events above to be delivered."""
    metadata_sent: bool = field(default=False, repr=False)
    """The upstream's initial metadata has gone out (sent, or implied by a message)."""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    @property
    def open(self) -> bool:
        """The upstream may still send: it has not closed or reset the stream and the filter
        has not cancelled it."""
        return self.status is None and not self.cancelled

    def _check_open(self, what: str) -> bool:
        """Whether what the upstream does now reaches the filter: not once the filter has
        cancelled the stream (dropped, as a reset stream drops it); an error once the
        upstream has ended it."""
        if self.status is not None:
            raise ValueError(f"cannot {what} on gRPC stream {self.token} to {self.cluster!r}: "
                             f"the upstream already ended it with {self.status}")
        return not self.cancelled

    def _event(self, event: Delivery) -> None:
        self.to_filter.append(event)
        self.wake(self)

    def _router_headers(self) -> list[tuple[str, str]]:
        return [SERVICE_TIME] if self.half_closed else []

    def send_metadata(self, headers: Headers = ()) -> None:
        """The upstream's initial metadata (response headers); sent on the first message or
        close when not sent before, and only once."""
        pairs = _text_pairs(headers, "initial metadata")
        if not self._check_open("send initial metadata"):
            return
        if self.metadata_sent:
            raise ValueError(f"gRPC stream {self.token}: initial metadata was already sent")
        self.metadata_sent = True
        self._event(Delivery("metadata", [*_GRPC_HEADERS, *pairs, *self._router_headers()]))

    def send(self, message: bytes) -> None:
        """One message to the filter (``proxy_on_grpc_receive``)."""
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise TypeError(f"gRPC stream {self.token}: a message is bytes, not "
                            f"{type(message).__name__}")
        if not self._check_open("send a message"):
            return
        if not self.metadata_sent:
            self.send_metadata()
        self.sent.append(bytes(message))
        self._event(Delivery("message", data=bytes(message)))

    def close(self, status: int = 0, message: str = "", trailers: Headers = ()) -> None:
        """End the stream with a gRPC status: the filter gets the trailing metadata
        (grpc-status, grpc-message, ``trailers``) then ``proxy_on_grpc_close``. Closing before
        any metadata or message is a trailers-only answer: empty initial metadata, and the
        headers come as trailing metadata, as Envoy's gRPC client hands them over."""
        pairs = _text_pairs(trailers, "trailers")
        if not isinstance(status, int) or not isinstance(message, str):
            raise TypeError(f"gRPC stream {self.token}: close(status: int, message: str), "
                            f"not {status!r}, {message!r}")
        if not self._check_open("close"):
            return
        trailing = [("grpc-status", str(status))]
        if message:
            trailing.append(("grpc-message", message))
        trailing += pairs
        if not self.metadata_sent:
            self.metadata_sent = True
            self.to_filter.append(Delivery("metadata"))
            trailing = [*_GRPC_HEADERS, *trailing, *self._router_headers()]
        self.status = (status, message)
        self._event(Delivery("close", trailing, status=status, message=via_upstream(message)))

    def reset(self) -> None:
        """The upstream resets the stream: empty trailing metadata and INTERNAL (13), as
        Envoy's gRPC client reports a reset (read from its source; the status message, empty
        here, was not checked through Envoy: a real upstream cannot reset on cue)."""
        if not self._check_open("reset"):
            return
        self.status = (GRPC_INTERNAL, "")
        self._event(Delivery("close", status=GRPC_INTERNAL))


def reply_of(answered: Reply | tuple[int, Headers, bytes] | None) -> Reply:
    """What a plain handler returned, as a Reply (a ``(status, headers, body)`` tuple is
    taken too); TypeError for None."""
    if answered is None:
        raise TypeError("the handler returned None, not a reply")
    return answered if isinstance(answered, Reply) else Reply(*answered)


def dispatch(handler: ScriptedUpstream, stream: GrpcStream, event: str, data: bytes) -> None:
    """Tell a stream's scripted upstream what the filter did: ``"open"``, ``"message"``
    (``data``), ``"half_close"`` or ``"cancel"``. A plain handler answers each message as a
    unary call would and closes the stream OK when the filter ends its side."""
    if isinstance(handler, GrpcStreamHandler):
        if event == "open":
            handler.opened(stream)
        elif event == "message":
            handler.received(stream, data)
        elif event == "half_close":
            handler.half_closed(stream)
        else:
            handler.cancelled(stream)
        return
    if event == "half_close" and stream.open:
        stream.close()
    if event != "message" or not stream.open:
        return
    answered = handler(Call("grpc", stream.cluster, stream.headers, data, [], 0, stream.token,
                            stream.context_id, stream.service, stream.method))
    if answered is None:
        return
    reply = reply_of(answered)
    if reply.grpc_status() == 0:
        if not stream.metadata_sent and reply.header_pairs():
            stream.send_metadata(reply.header_pairs())
        stream.send(reply.body)
    else:
        stream.close(reply.grpc_status(), reply.message, reply.trailer_pairs())


def _pairs(values: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    items = values.items() if isinstance(values, Mapping) else values
    return [(k.lower(), v) for k, v in items]


def _text_pairs(values: Headers, what: str) -> list[tuple[str, str]]:
    """Header pairs a scripted upstream gives, checked where it gives them: names and values
    are text."""
    pairs = _pairs(values)
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"{what}: names and values are str, not {name!r}: {value!r}")
    return pairs


@dataclass
class Answer:
    """A reply as the host lends it to the filter's callback for it: the header maps it
    answers for (by map type), and its body under the buffer type it is read as."""

    maps: dict[int, HeaderMap] = field(default_factory=dict)
    buffer: int = -1
    body: bytes = b""
