"""Property-based differential test of body shapes: hypothesis draws a request and the
upstream's answer (bodies from empty to large, cut into chunks anywhere, framed by
content-length, chunked or neither, with or without trailers, over HTTP/1.1 or HTTP/2), sends
them through a real Envoy in front of each processor of ``fuzz_procs`` and through
``extproc.testing.run``, and compares what the client and the upstream received: with the
processor served over ext_proc, and run inside Envoy by the dynamic module.

CI runs a bounded number of examples per processor, with a fixed seed
(``EXTKIT_FUZZ_EXAMPLES``, default 25); a longer, random run is
``EXTKIT_FUZZ_EXAMPLES=300 EXTKIT_FUZZ_RANDOM=1 .venv/bin/pytest tests/test_differential_fuzz.py``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import extproc
from extproc.testing import Result, run_sync
from tests.helpers.fuzz_procs import PROCESSORS
from tests.helpers.http_peers import CASE, Message, Seen, Upstream, chunks_of, send_h1, send_h2
from tests.helpers.patched_envoy import patched_stack

pytestmark = pytest.mark.envoy

EXAMPLES = int(os.environ.get("EXTKIT_FUZZ_EXAMPLES", "25"))
LARGEST = 200 * 1024
TOKENS = [b"cat", b"dog ", b"STOP", b"Hello, World. ", b"\x00\xff\r\n", b"x" * 700, b"catSTO"]
COMPARED = ("content-length",)
"""Framing headers compared as each end received them (besides the x-p-/x-c- headers)."""
_cases = itertools.count()


@st.composite
def messages(draw: Any, h2: bool, response: bool = False) -> Message:
    """A message's body, chunking, framing and trailers."""
    size = draw(st.one_of(st.just(0), st.integers(1, 64), st.integers(65, LARGEST)))
    pattern = b"".join(draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=6)))
    data = (pattern * (size // len(pattern) + 1))[:size]
    cuts = draw(st.lists(st.integers(1, max(1, size - 1)), max_size=19)) if size > 1 else []
    chunks = list(chunks_of(data, cuts)) if size else []
    trailers = draw(st.one_of(st.none(), st.just([("x-c-trailer", "t1")]),
                              st.just([("x-c-trailer", "t2"), ("x-drop", "d")])))
    chunked = False
    if not size:
        # No body; an empty one that still follows the headers (chunked, an empty DATA
        # frame); or an explicit content-length: 0 (HTTP/1.1, and always for an answer).
        shape = draw(st.sampled_from(["none", "empty", "zero"]))
        chunked = shape == "empty" and not h2
        chunks = [b""] if (shape == "zero" and not h2) or (shape == "empty" and h2) else []
    elif not h2 or response:
        chunked = draw(st.booleans())
    return Message([("x-c-side", "response" if response else "request")], chunks, trailers,
                   chunked)


@st.composite
def exchanges(draw: Any) -> tuple[bool, Message, int, Message]:
    h2 = draw(st.booleans())
    request = draw(messages(h2))
    status = draw(st.sampled_from([200, 201, 404, 503]))
    answer = draw(messages(False, response=True))
    return h2, request, status, answer


def _names(pairs: list[tuple[str, str]] | None, body: bytes,
           trailers: list[tuple[str, str]] | None, h1: bool) -> list[tuple[str, str]]:
    """Headers the test and the processors set, and the compared framing headers. Over
    HTTP/1.1 (``h1``) Envoy's codec frames a POST or a response that ends at its headers with
    ``content-length: 0``, whatever the filters left: on that hop, for an empty message, that
    header says nothing. HTTP/2 hops are compared as they are."""
    empty = h1 and not body and not trailers
    return sorted((k, v) for k, v in pairs or []
                  if k.startswith(("x-p-", "x-c-"))
                  or (k in COMPARED and not (empty and (k, v) == ("content-length", "0"))))


def _trailers(pairs: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in pairs or [] if k.startswith("x-"))


def _envoy_view(client: Seen, upstream: Seen | None, h2: bool) -> dict[str, Any]:
    reached = upstream is not None and upstream.complete
    return {
        "status": client.status, "complete": client.complete,
        "client_headers": _names(client.headers, client.body, client.trailers, not h2),
        "client_body": client.body, "client_trailers": _trailers(client.trailers),
        "upstream": None if upstream is None or not reached else (
            _names(upstream.headers, upstream.body, upstream.trailers, True), upstream.body,
            _trailers(upstream.trailers)),
    }


def _h1_trailers(message: Any, h1: bool) -> list[tuple[str, str]] | None:
    """A message's trailers as they cross HTTP/1.1 (``h1``): none when it goes with a
    content-length, which leaves no room for them (Envoy's codec drops them)."""
    if not message.trailers or (h1 and "content-length" in message.headers):
        return None
    return list(message.trailers.items())


def _double_view(result: Result, h2: bool) -> dict[str, Any]:
    response, request = result.response, result.request
    client_trailers = _h1_trailers(response, not h2)
    view: dict[str, Any] = {
        "status": result.status, "complete": not result.reset,
        "client_headers": _names(response.headers.items(), response.body, client_trailers,
                                 not h2),
        "client_body": response.body, "client_trailers": _trailers(client_trailers),
        "upstream": None}
    if request is not None and request.complete:  # a request reset midway: as Envoy's view
        trailers = _h1_trailers(request, True)  # the upstream speaks HTTP/1.1
        view["upstream"] = (_names(request.headers.items(), request.body, trailers, True),
                            request.body, _trailers(trailers))
    return view


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module", params=[(cls, transport) for transport in ("grpcio", "module")
                                        for cls in PROCESSORS],
                ids=lambda param: f"{param[0].__name__}-{param[1]}")
def envoy(request: pytest.FixtureRequest, upstream: Upstream) -> Iterator[tuple[Any, int]]:
    """Envoy from the generated config, HTTP/1.1 trailers kept both ways (what a user sets
    for a class without trailer hooks that must still see them pass); the class served over
    ext_proc (grpcio) or run inside Envoy (the dynamic module)."""
    cls, transport = request.param
    directory = Path(tempfile.mkdtemp(prefix="fz", dir="/tmp"))
    try:
        with patched_stack(cls, directory, upstream.address, transport=transport,
                           http1_trailers=True) as stack:
            yield cls, stack.envoy.port
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def compare(cls: type[extproc.Processor], port: int, upstream: Upstream, h2: bool,
            request: Message, status: int, answer: Message) -> None:
    case = f"c{next(_cases)}"
    sent = Message([*request.headers, (CASE, case)], request.chunks, request.trailers,
                   request.chunked)
    upstream.answers[case] = (status, answer)
    client = (send_h2 if h2 else send_h1)(port, sent)
    received = upstream.received.get(case)
    if received is None and client.status != 451:
        received = upstream.wait(case)  # recorded before its answer went: here already
    expected = _envoy_view(client, received, h2)

    response_framing = answer.framing() or [("content-length", "0")]
    result = run_sync(cls, method="POST", path="/",
                      headers=[*request.headers, *request.framing(h2)],
                      body=request.double_body(h2), trailers=request.trailers, status=status,
                      response_headers=[*answer.headers, *response_framing],
                      response_body=answer.double_body(), response_trailers=answer.trailers)
    assert _double_view(result, h2) == expected, (cls.__name__, "h2" if h2 else "h1")


@given(exchange=exchanges())
@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get(
    "EXTKIT_FUZZ_RANDOM"), suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                  HealthCheck.too_slow,
                                                  HealthCheck.data_too_large],
          database=None)
def test_envoy_and_the_double_agree_on_body_shapes(envoy: tuple[Any, int], upstream: Upstream,
                                                   exchange: Any) -> None:
    cls, port = envoy
    compare(cls, port, upstream, *exchange)
