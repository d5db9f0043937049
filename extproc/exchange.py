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

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, overload

__all__ = ["Answer", "ExchangeResult", "HeaderView", "LocalReply", "Message", "Upstream",
           "answer_of", "pairs_of"]

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


@dataclass
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
    it; trailers None when there are none. A bad answer raises TypeError naming what was
    wrong."""
    if isinstance(answer, Message):
        return (answer.status or 200,
                [(k, v) for k, v in answer.headers.items() if k != ":status"],
                list(answer.chunks) if answer.chunks else answer.body,
                answer.trailers.items() if answer.trailers else None)
    if not isinstance(answer, tuple) or len(answer) not in (3, 4):
        raise TypeError("an upstream answers a Message or (status, headers, body[, trailers]),"
                        f" not {type(answer).__name__}")
    status, body = answer[0], answer[2]
    if isinstance(status, bool) or not isinstance(status, int):
        raise TypeError(f"an upstream's status is an int, not {type(status).__name__}")
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body)
    elif isinstance(body, Sequence) and all(isinstance(c, (bytes, bytearray)) for c in body):
        body = [bytes(c) for c in body]
    else:
        raise TypeError("an upstream's body is bytes or a list of bytes chunks, not "
                        f"{type(body).__name__}")
    trailers = pairs_of(answer[3] if len(answer) == 4 else None)
    return status, pairs_of(answer[1]), body, trailers or None


def pairs_of(headers: HeaderInput) -> list[tuple[str, str]]:
    """Headers given as a mapping or as pairs, as ``(lower-case name, value)`` pairs in order."""
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k).lower(), str(v)) for k, v in items]
