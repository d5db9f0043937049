"""Callouts a filter makes (``proxy_http_call``, ``proxy_grpc_call``) and the scripted
upstreams that answer them in the emulator:

    def auth(call: Call) -> Reply:
        allowed = call.header("authorization") == "Bearer ok"
        return Reply(200 if allowed else 403, body=b"checked")

    ProxyWasm(module, upstreams={"auth": auth})

A handler gets the :class:`Call` and returns a :class:`Reply` (a ``(status, headers, body)``
tuple is taken too), or raises :class:`~wasm.errors.CalloutTimeout` or
:class:`~wasm.errors.CalloutReset` for what Envoy reports then.
"""

from __future__ import annotations

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
    """``"timeout"`` or ``"reset"`` when the upstream raised one."""

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
Handler = Callable[[Call], "Reply | tuple[int, Headers, bytes]"]


def _pairs(values: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    items = values.items() if isinstance(values, Mapping) else values
    return [(k.lower(), v) for k, v in items]


@dataclass
class Answer:
    """A reply as the host lends it to the filter's callback for it: the header maps it
    answers for (by map type), and its body under the buffer type it is read as."""

    maps: dict[int, HeaderMap] = field(default_factory=dict)
    buffer: int = -1
    body: bytes = b""
