"""One request as the upstream and the client saw it: the shape every test double returns.

``extproc.testing.Client`` (a processor in this process), ``wasm.ProxyWasm`` (a Wasm filter
in the emulator) and ``extctl.testing.EnvoyClient`` (either, through a real Envoy) answer
``request(method, path, headers=..., body=...)`` with an object that reads the same:

    result.status            the status the client got
    result.request           the Message the upstream received (None: it was not reached)
    result.response          the Message the client received
    result.upstream_reached  whether the request went upstream
    result.local_reply       a LocalReply when the answer was made on the way (by the
                             processor or filter, or by Envoy for it), else None
    result.reset             Envoy reset the stream after the response had started

and take the same upstream: ``upstream(request: Message) -> answer``, the answer a Message or
``(status, headers, body)`` or ``(status, headers, body, trailers)``, body as bytes or a list
of chunks. So a test moves from in-process to a real Envoy by changing the line that makes
its client.

This module imports nothing outside the standard library: every package may use it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, overload

__all__ = ["Answer", "ExchangeResult", "HeaderView", "LocalReply", "Message", "Upstream",
           "answer_of", "bodiless", "body_of", "call_upstream", "chunked", "chunks_of", "pairs_of"]

HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]] | None
BodyInput = bytes | Sequence[bytes]


class HeaderView:
    """Headers or trailers as one side received them (read-only): ``h[name]`` and
    ``h.get(name)`` give every value of a name joined by ``", "``, ``h.get_all(name)`` the
    list; names are lower-case; ``h == {"x": "1"}`` compares with a mapping."""

    __slots__ = ("_index",)

    def __init__(self, headers: HeaderInput = None) -> None:
        index: dict[str, list[str]] = {}
        for name, value in pairs_of(headers):
            index.setdefault(name, []).append(value)
        self._index = index

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order (e.g. each ``set-cookie``)."""
        return list(self._index.get(name.lower(), ()))

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._index.get(name.lower())
        return ", ".join(values) if values else default

    def __getitem__(self, name: str) -> str:
        values = self._index.get(name.lower())
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def keys(self) -> list[str]:
        """Header names, each once, in the order first seen."""
        return list(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def items(self) -> list[tuple[str, str]]:
        """Every ``(name, value)`` pair; a repeated header appears once per value."""
        return [(name, value) for name, values in self._index.items() for value in values]

    def to_dict(self) -> dict[str, str]:
        """``{name: joined value}``."""
        return {name: ", ".join(values) for name, values in self._index.items()}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HeaderView):
            return self._index == other._index
        if isinstance(other, Mapping):
            return self.to_dict() == {str(k).lower(): v for k, v in other.items()}
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"HeaderView({self.items()!r})"


@dataclass
class Message:
    """An HTTP message as one side received it: pseudo-headers (``:method``, ``:path``,
    ``:authority``; ``:status``) first in ``headers``."""

    headers: HeaderView
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    """The body as it arrived, cut where it was (where the side can tell)."""
    trailers: HeaderView | None = None
    complete: bool = True
    """False when the message was cut off (Envoy reset it): this is what arrived."""

    @property
    def status(self) -> int | None:
        """A response's status (None for a request)."""
        status = self.headers.get(":status")
        return int(status) if status else None

    @property
    def method(self) -> str | None:
        """A request's method (None for a response)."""
        return self.headers.get(":method")

    @property
    def path(self) -> str | None:
        """A request's path (None for a response)."""
        return self.headers.get(":path")


@dataclass(kw_only=True)
class LocalReply:
    """An answer made on the way, not by the upstream."""

    status: int
    headers: list[tuple[str, str]]
    """The headers the answer was given with (Envoy adds content-type and -length)."""
    body: bytes
    details: str = ""
    """Envoy's response code details, where the double can tell them."""


class ExchangeResult(Protocol):
    """What every test double's ``request`` returns (see the module's docstring)."""

    @property
    def status(self) -> int: ...
    @property
    def request(self) -> Message | None: ...
    @property
    def response(self) -> Message: ...
    @property
    def upstream_reached(self) -> bool: ...
    @property
    def local_reply(self) -> LocalReply | None: ...
    @property
    def reset(self) -> bool: ...


Answer = (Message | tuple[int, HeaderInput, BodyInput]
          | tuple[int, HeaderInput, BodyInput, HeaderInput])
"""An upstream's answer: a Message, or ``(status, headers, body[, trailers])``; body as bytes
or a list of chunks."""
Upstream = Callable[[Message], Answer]
"""``upstream(request) -> answer``: what the upstream answers, from what it received."""


def answer_of(answer: Answer) -> tuple[int, list[tuple[str, str]], bytes | list[bytes],
                                      list[tuple[str, str]] | None]:
    """An upstream's answer as ``(status, headers, body, trailers)``: body as bytes (one
    piece, framed by its length) or a list of chunks (framed as chunks), as the answer gave
    it; trailers None when there are none. Pseudo-headers and framing headers
    (``content-length``, ``transfer-encoding``) are left out: each double frames the body
    itself, as a server does. A bad answer raises TypeError or ValueError naming what was
    wrong."""
    if isinstance(answer, Message):
        status: object = answer.status or 200
        headers: HeaderInput = answer.headers.items()
        body: object = list(answer.chunks) if answer.chunks else answer.body
        trailers: HeaderInput = answer.trailers.items() if answer.trailers else None
    elif isinstance(answer, tuple) and len(answer) in (3, 4):
        status, headers, body = answer[0], answer[1], answer[2]
        trailers = answer[3] if len(answer) == 4 else None
    else:
        raise TypeError("an upstream answers a Message or (status, headers, body[, trailers]),"
                        f" not {type(answer).__name__}")
    if isinstance(status, bool) or not isinstance(status, int):
        raise TypeError(f"an upstream's status is an int, not {type(status).__name__}")
    if not 200 <= status <= 599:
        raise ValueError(f"an upstream's status is a final one, 200 to 599, not {status}")
    try:
        content = body_of(body)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError("an upstream's body is bytes or a list of bytes chunks, not "
                        f"{type(body).__name__}") from None
    kept = [(k, v) for k, v in _checked(headers, "headers")
            if not k.startswith(":") and k not in _FRAMING]
    return status, kept, content, _checked(trailers, "trailers") or None


_FRAMING = frozenset({"content-length", "transfer-encoding"})


def _checked(headers: HeaderInput, what: str) -> list[tuple[str, str]]:
    if isinstance(headers, (str, bytes)):
        raise TypeError(f"an upstream's {what} are a mapping or (name, value) pairs, not "
                        f"{type(headers).__name__}")
    try:
        pairs = pairs_of(headers)
    except (TypeError, ValueError):
        raise TypeError(f"an upstream's {what} are a mapping or (name, value) pairs") from None
    for name, value in pairs:
        if not name or any(c in _NOT_IN_NAMES for c in name) or not name.isascii():
            raise ValueError(f"an upstream's {what}: {name!r} is not a header name")
        if any(c in "\r\n\0" for c in value):
            raise ValueError(f"an upstream's {what}: the value of {name} holds CR, LF or NUL")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"an upstream's {what}: the value of {name} is not latin-1 "
                             "(give bytes decoded as latin-1)") from None
    return pairs


_NOT_IN_NAMES = frozenset(' \t\r\n\0"(),/;<=>?@[\\]{}')


def body_of(body: BodyInput) -> bytes | list[bytes]:
    """A body given as bytes (or a bytearray) or as a list of chunks, as bytes or a list of
    bytes; anything else raises TypeError."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if (isinstance(body, Sequence) and not isinstance(body, str)
            and all(isinstance(c, (bytes, bytearray, memoryview)) for c in body)):
        return [bytes(c) for c in body]
    raise TypeError(f"a body is bytes or a list of bytes chunks, not {type(body).__name__}")


def chunks_of(body: BodyInput) -> list[bytes]:
    """A body given as bytes or as chunks, as the list of its chunks (none for no bytes)."""
    content = body_of(body)
    if isinstance(content, bytes):
        return [content] if content else []
    return content


def chunked(body: bytes | list[bytes], trailers: object) -> bool:
    """Whether a server sends an answer's body chunked: given as chunks, or with trailers
    (a length leaves no room for them)."""
    return not isinstance(body, bytes) or trailers is not None


def bodiless(method: str, status: int) -> bool:
    """Whether a response has no body, whatever its headers say: to HEAD, a 1xx, a 204, a
    304."""
    return method == "HEAD" or status in (204, 304) or status < 200


def pairs_of(headers: HeaderInput) -> list[tuple[str, str]]:
    """Headers given as a mapping or as pairs, as ``(lower-case name, value)`` pairs in order."""
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k).lower(), str(v)) for k, v in items]


def call_upstream(upstream: Upstream, request: Message) -> Answer:
    """``upstream(request)``, refusing with the reason a callback written for the old
    ``(headers, body)`` form."""
    try:
        parameters = inspect.signature(upstream).parameters.values()
    except (TypeError, ValueError):
        parameters = None
    if parameters is not None:
        required = [p for p in parameters if p.default is p.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(required) > 1:
            raise TypeError(f"the upstream callback takes {len(required)} arguments; it takes "
                            "the request (a Message: request.headers, request.body) and "
                            "answers, upstream(request) -> answer")
    return upstream(request)
