"""What a client got from Envoy over HTTP/1.1 (:class:`Reply`), and the client that gets it
(:func:`http`): one request per connection, trailers kept, a cut-off response reported as
reset. The Envoy test harnesses (:mod:`extctl.harness.stack`, :mod:`extctl.harness.client`)
answer with it."""

from __future__ import annotations

import http.client as httpclient
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extproc.exchange import HeaderInput, HeaderView, LocalReply, Message, pairs_of

from .framing import chunk, last_chunk

__all__ = ["Reply", "http"]


@dataclass
class Reply:
    """What the client received, and (from :class:`EnvoyClient`) what the upstream did."""

    status: int
    """0 when the connection closed before a status line."""
    headers: dict[str, str]
    """Lower-case names; a repeated header's values joined with ", "."""
    body: bytes
    header_pairs: list[tuple[str, str]] = field(default_factory=list)
    """The headers as received, in order, a repeated name once per value."""
    trailers: list[tuple[str, str]] | None = None
    """The trailers after a chunked body (None: none came)."""
    request: Message | None = None
    """What the upstream received (:class:`EnvoyClient`); None when it was not reached."""
    reset: bool = False
    """The connection closed before the whole response came (Envoy reset the stream)."""

    @property
    def response(self) -> Message:
        """What the client received, as a Message."""
        pairs = self.header_pairs or list(self.headers.items())
        head = [(":status", str(self.status))] if self.status else []
        return Message(HeaderView(head + pairs), self.body, [self.body] if self.body else [],
                       HeaderView(self.trailers) if self.trailers is not None else None,
                       complete=not self.reset)

    @property
    def upstream_reached(self) -> bool:
        return self.request is not None

    @property
    def local_reply(self) -> LocalReply | None:
        """The answer, as the client got it, when the upstream did not answer (it was not
        reached, or Envoy reset the request it had sent): made by a filter, a processor or
        Envoy (its details are not visible from outside Envoy)."""
        if (self.request is not None and self.request.complete) or self.reset or not self.status:
            return None
        return LocalReply(status=self.status, headers=self.header_pairs, body=self.body)

    def json(self) -> Any:
        return json.loads(self.body)

    def upstream_headers(self) -> dict[str, list[str]]:
        """Headers the upstream received (name -> values): from :attr:`request`, or from the
        echo upstream's JSON answer (:func:`~extctl.testing.envoy_stack`)."""
        seen: dict[str, list[str]] = {}
        pairs = (self.request.headers.items() if self.request is not None
                 else self.json()["headers"])
        for name, value in pairs:
            seen.setdefault(name, []).append(value)
        return seen


class _TrailedResponse(httpclient.HTTPResponse):
    """A response that keeps the trailers after its chunked body (http.client drops them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trailers: list[tuple[str, str]] | None = None

    def _read_and_discard_trailer(self) -> None:  # http.client's hook, after the last chunk
        self.trailers = []
        while (line := self.fp.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            self.trailers.append((name.strip().lower(), value.strip()))


def http(port: int, path: str = "/", method: str = "GET",
         headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
         body: bytes | None = None, chunks: Sequence[bytes] | None = None,
         timeout: float = 30, source: str | None = None, chunk_delay: float = 0.05,
         trailers: HeaderInput = None,
         connected: Any = None) -> Reply:
    """One HTTP/1.1 request to 127.0.0.1:``port``: ``body`` with a content-length, or
    ``chunks`` chunked (a pause of ``chunk_delay`` seconds after each, so Envoy reads each
    alone) and then ``trailers``; from the loopback address ``source`` when given (all of
    127.0.0.0/8 is local). ``connected(port)`` is called with the client's own port once
    connected. A connection closed before the whole response is a reply with ``reset``."""
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    conn.response_class = _TrailedResponse
    given = pairs_of(headers)
    try:
        conn.connect()
        if connected is not None:
            connected(conn.sock.getsockname()[1])
        names = {name for name, _ in given}
        # http.client's own order: Host (unless given), Accept-Encoding, the length, the rest
        conn.putrequest(method, path, skip_host="host" in names,
                        skip_accept_encoding="accept-encoding" in names)
        if chunks is None and "content-length" not in names and (
                body or method in ("POST", "PUT", "PATCH")):
            conn.putheader("content-length", str(len(body or b"")))
        for name, value in given:
            conn.putheader(name, value)
        try:
            if chunks is None:
                conn.endheaders(body or None)
            else:
                conn.putheader("transfer-encoding", "chunked")
                conn.endheaders()
                for data in chunks:
                    conn.send(chunk(data))
                    time.sleep(chunk_delay)
                conn.send(last_chunk(pairs_of(trailers)))
        except (BrokenPipeError, ConnectionResetError):
            pass  # Envoy answered (and closed) before taking the whole request: read it
        try:
            response = conn.getresponse()
        except (httpclient.RemoteDisconnected, ConnectionResetError):
            return Reply(0, {}, b"", reset=True)
        pairs = [(name.lower(), value) for name, value in response.getheaders()]
        joined: dict[str, str] = {}
        for key, value in pairs:
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
        reset = False
        try:
            content = response.read()
        except httpclient.IncompleteRead as cut:
            content, reset = cut.partial, True
        except ConnectionResetError:
            content, reset = b"", True
        assert isinstance(response, _TrailedResponse)
        return Reply(response.status, joined, content, pairs, response.trailers, reset=reset)
    finally:
        conn.close()
