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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import extproc
from extproc.exchange import (
    BodyInput,
    HeaderInput,
    Message,
    Upstream,
    body_of,
    pairs_of,
)

from ..config import WasmModule
from ..config.envoy import UPSTREAM_CLUSTER
from .envoy import EnvoyProcess
from .reply import Reply, http
from .stack import short_dir, stack, wasm_modules
from .upstreams import CHUNK_DELAY, HttpUpstream

__all__ = ["TAG", "EnvoyClient"]

TAG = "x-extkit-exchange"
"""The header Envoy's route adds to each upstream request: the client connection's port."""


class EnvoyClient:
    """A processor (served in this process on a Unix socket) and/or Wasm modules behind a
    real Envoy, and an upstream that answers and records as the in-process doubles do.

    ``wasm``: module files (run with plugin configuration ``{}``) or
    :class:`~extctl.config.WasmModule`\\ s. ``upstream(request) -> answer`` answers every
    request (:mod:`extproc.exchange`; default: 200, no body). ``transport``: how the
    processor is served (``"module"``: inside Envoy, by the extkit dynamic module, built
    once per process with gcc; header hooks only); ``component_log_level``: Envoy's
    ``--component-log-level`` (``wasm:trace`` logs every line a module writes). Other
    keywords are fields of :class:`~extctl.config.Policy` and
    :class:`~extctl.config.EnvoyOptions`.
    """

    __test__ = False  # not a test class, whatever module imports it

    def __init__(self, processor: type[extproc.Processor] | None = None, *,
                 wasm: Sequence[str | Path | WasmModule] = (),
                 upstream: Upstream | None = None, transport: str = "grpcio",
                 component_log_level: str = "", **options: Any) -> None:
        self.processor = processor
        self.modules = wasm_modules(wasm)
        self.upstream = upstream
        self.transport = transport
        self.component_log_level = component_log_level
        self.options = options
        self.envoy: EnvoyProcess | None = None
        self.server: extproc.ServerThread | None = None
        self._http: HttpUpstream | None = None
        self._cleanup: contextlib.ExitStack | None = None

    def __enter__(self) -> EnvoyClient:
        with contextlib.ExitStack() as cleanup:
            self._http = cleanup.enter_context(HttpUpstream(_no_answer, tag=TAG))
            sock_dir = cleanup.enter_context(short_dir())
            options = dict(self.options)
            route_headers = [*options.pop("route_headers", ()),
                             (TAG, "%DOWNSTREAM_REMOTE_PORT%")]
            running = cleanup.enter_context(stack(
                self.processor, sock_dir, self._http, self.transport, self.component_log_level,
                wasm=self.modules, route_headers=route_headers, **options))
            self.envoy, self.server = running.envoy, running.server
            self._cleanup = cleanup.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        cleanup, self._cleanup = self._cleanup, None
        self.envoy = self.server = self._http = None
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
            fixed = (status, response_headers, body_of(response_body), response_trailers)
            answer = lambda request: fixed  # noqa: E731
        given = pairs_of(headers)
        if not any(name == "host" for name, _ in given):
            given.insert(0, ("host", authority))
        tags: list[str] = []

        def connected(port: int) -> None:
            assert self._http is not None
            tags.append(str(port))
            self._http.answers[str(port)] = answer

        content = body_of(body)
        if isinstance(content, bytes) and pairs_of(trailers):
            content = [content] if content else []  # trailers go only after chunks
        try:
            reply = http(self.envoy.port, path, method, given,
                         body=content if isinstance(content, bytes) else None,
                         chunks=content if isinstance(content, list) else None,
                         trailers=trailers, timeout=timeout, chunk_delay=CHUNK_DELAY,
                         connected=connected)
            counted = self.envoy.stats(f"cluster.{UPSTREAM_CLUSTER}.upstream_rq_")
            sent = (counted.get(f"cluster.{UPSTREAM_CLUSTER}.upstream_rq_total", 0)
                    - counted.get(f"cluster.{UPSTREAM_CLUSTER}.upstream_rq_tx_reset", 0))
            self._http.settle(sent, timeout=5)
        finally:
            for tag in tags:
                self._http.answers.pop(tag, None)
        failure = self._http.failure(tags[0]) if tags else None
        if failure is not None:
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
