"""Requests through a real Envoy, answered and recorded the way the in-process doubles do.

    from extctl.testing import EnvoyClient

    def test_adds_header():
        with EnvoyClient(AddHeader) as client:   # extproc.testing.Client(AddHeader): in-process
            result = client.get("/hello")
            assert result.request.headers["x-hello"] == "world"   # what the upstream saw

``EnvoyClient`` serves the processor (and/or runs Wasm modules) behind Envoy, from the config
``extctl gen envoy`` would write, in front of an upstream that answers as
``extproc.testing.Client`` and ``wasm.ProxyWasm`` do: 200 with no body, or what
``upstream(request) -> answer`` says (:mod:`extproc.exchange`), or the request's own
``status``/``response_headers``/``response_body``/``response_trailers``. Each reply is
:class:`Reply`, the shape of :mod:`extproc.exchange`: ``status``, ``request`` (what the
upstream received, None when it was not reached), ``response``, ``upstream_reached``,
``local_reply``, ``reset``.

Each upstream request is matched to its exchange by a header Envoy's route adds after every
filter (the client connection's port; the filters never see it, the record and the
``upstream`` callback neither), and the reply waits until every request Envoy sent upstream
has arrived and been read: a request Envoy sent upstream and then reset (a filter answering
from a body callback) is the exchange's ``request`` with ``complete=False``, never a later
exchange's.
"""

from __future__ import annotations

import contextlib
import http.client as httpclient
import json
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import extproc
from extproc.exchange import (
    BodyInput,
    HeaderInput,
    HeaderView,
    LocalReply,
    Message,
    Upstream,
    pairs_of,
)

from ..config import WasmModule
from ..config.envoy import UPSTREAM_CLUSTER
from .envoy import EnvoyProcess
from .upstreams import CHUNK_DELAY, HttpUpstream

__all__ = ["TAG", "EnvoyClient", "Reply", "http"]

TAG = "x-extkit-exchange"
"""The header Envoy's route adds to each upstream request: the client connection's port."""


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
        return LocalReply(self.status, self.header_pairs, self.body)

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
        if chunks is None:
            conn.endheaders(body or None)
        else:
            conn.putheader("transfer-encoding", "chunked")
            conn.endheaders()
            for chunk in chunks:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                time.sleep(chunk_delay)
            lines = "".join(f"{k}: {v}\r\n" for k, v in pairs_of(trailers))
            conn.send(b"0\r\n" + lines.encode("latin-1") + b"\r\n")
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


class EnvoyClient:
    """A processor (served in this process on a Unix socket) and/or Wasm modules behind a
    real Envoy, and an upstream that answers and records as the in-process doubles do.

    ``wasm``: module files (run with plugin configuration ``{}``) or
    :class:`~extctl.config.WasmModule`\\ s. ``upstream(request) -> answer`` answers every
    request (:mod:`extproc.exchange`; default: 200, no body). ``transport``: how the
    processor is served; ``component_log_level``: Envoy's ``--component-log-level``
    (``wasm:trace`` logs every line a module writes). Other keywords are fields of
    :class:`~extctl.config.Policy` and :class:`~extctl.config.EnvoyOptions`.
    """

    __test__ = False  # not a test class, whatever module imports it

    def __init__(self, processor: type[extproc.Processor] | None = None, *,
                 wasm: Sequence[str | Path | WasmModule] = (),
                 upstream: Upstream | None = None, transport: str = "grpcio",
                 component_log_level: str = "", **options: Any) -> None:
        self.processor = processor
        self.modules = [w if isinstance(w, WasmModule) else
                        WasmModule(Path(w).stem or "wasm", file=str(Path(w).resolve()),
                                   config={})
                        for w in wasm]
        self.upstream = upstream
        self.transport = transport
        self.component_log_level = component_log_level
        self.options = options
        self.envoy: EnvoyProcess | None = None
        self.server: extproc.ServerThread | None = None
        self._http: HttpUpstream | None = None
        self._cleanup: contextlib.ExitStack | None = None

    def __enter__(self) -> EnvoyClient:
        from .stack import stack

        with contextlib.ExitStack() as cleanup:
            self._http = cleanup.enter_context(HttpUpstream(_no_answer, tag=TAG))
            # AF_UNIX paths are limited to 107 bytes: pytest's tmp_path can be longer.
            sock_dir = Path(tempfile.mkdtemp(prefix="extkit-", dir="/tmp"))
            cleanup.callback(shutil.rmtree, sock_dir, ignore_errors=True)
            route_headers = [*self.options.pop("route_headers", ()),
                             (TAG, "%DOWNSTREAM_REMOTE_PORT%")]
            running = cleanup.enter_context(stack(
                self.processor, sock_dir, self._http, self.transport, self.component_log_level,
                wasm=self.modules, route_headers=route_headers, **self.options))
            self.envoy, self.server = running.envoy, running.server
            self._cleanup = cleanup.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup.close()

    @property
    def port(self) -> int:
        """Envoy's listener port."""
        if self.envoy is None:
            raise RuntimeError("EnvoyClient runs Envoy in a with block: use it in one")
        return self.envoy.port

    def request(self, method: str = "GET", path: str = "/", *, authority: str = "example.com",
                headers: HeaderInput = None, body: BodyInput = b"",
                trailers: HeaderInput = None, status: int = 200,
                response_headers: HeaderInput = None, response_body: BodyInput = b"",
                response_trailers: HeaderInput = None, upstream: Upstream | None = None,
                timeout: float = 30) -> Reply:
        """One request through Envoy over HTTP/1.1 (its own connection), with the arguments
        of the in-process doubles: ``body`` as bytes goes with a content-length, a list of
        chunks chunked (then ``trailers``); the upstream answers with ``upstream`` (this
        request's, else the client's) or ``status``/``response_headers``/``response_body``
        (a list: chunked)/``response_trailers``."""
        if self._http is None or self.envoy is None:
            raise RuntimeError("EnvoyClient runs Envoy in a with block: use it in one")
        answer = upstream or self.upstream
        if answer is None:
            fixed = (status, response_headers, (list(response_body)
                                               if not isinstance(response_body, bytes)
                                               else response_body), response_trailers)
            answer = lambda request: fixed  # noqa: E731
        given = pairs_of(headers)
        if not any(name == "host" for name, _ in given):
            given.insert(0, ("host", authority))
        tags: list[str] = []

        def connected(port: int) -> None:
            assert self._http is not None
            tags.append(str(port))
            self._http.answers[str(port)] = answer

        chunked = not isinstance(body, bytes)
        try:
            reply = http(self.envoy.port, path, method, given,
                         body=body if isinstance(body, bytes) else None,
                         chunks=[bytes(c) for c in body] if chunked else None,
                         trailers=trailers, timeout=timeout, chunk_delay=CHUNK_DELAY,
                         connected=connected)
            counted = self.envoy.stats(f"cluster.{UPSTREAM_CLUSTER}.upstream_rq_")
            sent = (counted.get(f"cluster.{UPSTREAM_CLUSTER}.upstream_rq_total", 0)
                    - counted.get(f"cluster.{UPSTREAM_CLUSTER}.upstream_rq_tx_reset", 0))
            self._http.settle(sent, timeout=5)
        finally:
            for tag in tags:
                self._http.answers.pop(tag, None)
        if self._http.failures:
            failure = self._http.failures.pop(0)
            raise failure
        received = self._http.take(tags[0]) if tags else []
        reply.request = received[0] if received else None
        return reply

    def get(self, path: str = "/", **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str = "/", **kwargs: Any) -> Reply:
        return self.request("POST", path, **kwargs)


def _no_answer(request: Message) -> Any:
    """A request that came without the client's tag (none should)."""
    return 502, {}, b"extctl: a request the client did not send\n"
