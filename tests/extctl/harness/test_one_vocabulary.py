"""One vocabulary for the three test doubles: the same test body runs in-process
(``extproc.testing.Client``, ``wasm.ProxyWasm``) and through a real Envoy
(``extctl.testing.EnvoyClient``), with the same upstream callback and the same result shape;
only the line that makes the client differs."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest
import wasmtime

import extproc
from extctl.testing import EnvoyClient
from extproc.testing import Client, Message
from tests.helpers.procs import StampHeaders
from wasm import ProxyWasm

pytestmark = pytest.mark.envoy

WAT = Path(__file__).resolve().parents[2] / "helpers" / "wat"


class Stamp(StampHeaders):
    """StampHeaders, and uppercases the response body."""

    response_body_mode = extproc.BodyMode.BUFFERED

    async def on_response_headers(self, headers: extproc.Headers) -> None:
        await super().on_response_headers(headers)
        del headers["content-length"]

    async def on_response_body(self, body: extproc.Body) -> None:
        body.data = body.data.upper()


class Cutoff(extproc.Processor):
    """Lets the headers and the first chunk go upstream, then answers itself."""

    request_body_mode = extproc.BodyMode.STREAMED

    async def on_request_body(self, body: extproc.Body) -> extproc.ImmediateResponse | None:
        if b"stop" in body.data:
            return extproc.ImmediateResponse(451, body=b"stopped\n")
        return None


def answer_with_what_arrived(request: Message) -> tuple[int, dict[str, str], list[bytes]]:
    """The upstream every double takes: answers from the request it received."""
    return 201, {"x-got": f"{request.method} {request.path} {request.headers['x-stamp']}"}, [
        b"one,", request.body or b"none"]


IN_PROCESS_OR_ENVOY = [pytest.param(Client, id="in-process"),
                       pytest.param(EnvoyClient, id="envoy")]


@pytest.mark.parametrize("make", IN_PROCESS_OR_ENVOY)
def test_a_processor_test_moves_to_envoy_by_one_line(make):
    with make(Stamp, upstream=answer_with_what_arrived) as client:
        result = client.post("/items?q=1", headers={"x-user": "ada"}, body=b"abc")
        assert result.status == 201
        assert result.upstream_reached and result.local_reply is None and not result.reset
        upstream = result.request
        assert (upstream.method, upstream.path, upstream.body) == ("POST", "/items?q=1", b"abc")
        assert upstream.headers["x-stamp"] == "on" and upstream.headers["x-user"] == "ada"
        assert upstream.complete
        assert result.response.headers["x-got"] == "POST /items?q=1 on"
        assert result.response.headers["x-seen-status"] == "201"
        assert result.response.body == b"ONE,ABC"

        denied = client.get("/", headers={"x-deny": "nope"})
        assert denied.status == 403 and denied.response.body == b"denied\n"
        assert denied.request is None and not denied.upstream_reached
        assert denied.local_reply is not None and denied.local_reply.status == 403
        assert denied.local_reply.body == b"denied\n"
        assert denied.response.headers["x-why"] == "nope"


@pytest.mark.parametrize("make", IN_PROCESS_OR_ENVOY)
def test_a_per_request_answer_replaces_the_clients_upstream(make):
    with make(Stamp) as client:
        plain = client.get("/")
        assert plain.status == 200 and plain.response.body == b""
        scripted = client.get("/", status=404, response_headers={"x-a": "1"},
                              response_body=[b"gone"])
        assert scripted.status == 404 and scripted.response.body == b"GONE"
        assert scripted.response.headers["x-a"] == "1"


@pytest.mark.parametrize("make", IN_PROCESS_OR_ENVOY)
def test_an_upstream_callback_that_raises_fails_the_request_call(make):
    def broken(request: Message) -> tuple[int, dict[str, str], bytes]:
        raise LookupError("no such item")

    with make(Stamp, upstream=broken) as client, pytest.raises(LookupError, match="no such"):
        client.get("/")


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("wasm")
    paths = []
    for name in ("append_request_header", "add_header"):
        path = directory / f"{name}.wasm"
        path.write_bytes(wasmtime.wat2wasm((WAT / f"{name}.wat").read_text()))
        paths.append(path)
    return paths


def _wasm_answer(request: Message) -> tuple[int, dict[str, str], bytes]:
    return 200, {"x-order-seen": request.headers.get("x-order", "-")}, request.body


@pytest.mark.parametrize("where", ["emulator", "envoy"])
def test_a_wasm_filter_test_moves_to_envoy_by_one_line(modules, where):
    request_filter, response_filter = modules
    # the emulator runs one module; through Envoy the response filter rides along untested
    make = {"emulator": lambda: ProxyWasm(request_filter, upstream=_wasm_answer),
            "envoy": lambda: EnvoyClient(wasm=[request_filter], upstream=_wasm_answer)}[where]
    with make() as client:
        result = client.post("/w", body=b"xyz")
        assert result.status == 200 and result.upstream_reached and result.local_reply is None
        assert result.request.headers["x-order"] == "wasm"
        assert result.request.body == b"xyz"
        assert result.response.headers["x-order-seen"] == "wasm"
        assert result.response.body == b"xyz"
    del response_filter


@pytest.mark.parametrize("make", IN_PROCESS_OR_ENVOY)
def test_a_request_sent_upstream_then_reset_is_that_exchanges_not_the_next(make):
    """The processor lets the headers and the first chunk through, then answers from the body
    hook: Envoy resets the upstream request. The result says what the upstream got (cut
    off), and the next exchange's request is its own."""
    with make(Cutoff) as client:
        cut = client.post("/first", body=[b"go,", b"stop"])
        assert cut.status == 451 and cut.response.body == b"stopped\n"
        assert cut.local_reply is not None and cut.local_reply.status == 451
        assert cut.request is not None and not cut.request.complete
        assert cut.request.path == "/first" and cut.request.body == b"go,"
        after = client.get("/second")
        assert after.status == 200 and after.request is not None
        assert after.request.path == "/second" and after.request.complete
        assert after.request.body == b""


@pytest.mark.parametrize("make", IN_PROCESS_OR_ENVOY)
def test_bodies_come_through_whatever_their_chunks(make):
    """Empty chunks are no end of a body, a bytearray is bytes, and an answer's own framing
    headers, pseudo-headers and a body to a 204 do not break the exchange or the next one."""
    def answer(request: Message) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        return 200, [("content-length", "999"), (":status", "201")], [b"a", b"", b"b"]

    with make(Stamp, upstream=answer) as client:
        result = client.post("/", body=[b"x", b"", b"y"])
        assert result.status == 200 and result.response.body == b"AB"
        assert result.request.body == b"xy"
        assert client.post("/", body=bytearray(b"xy")).request.body == b"xy"
        empty = client.get("/", upstream=lambda request: (204, {}, b"not sent"))
        assert empty.status == 204 and empty.response.body == b""
        assert client.get("/after").status == 200  # the connection Envoy pools is intact


class Counted(extproc.Processor):
    started = stopped = 0

    @classmethod
    async def on_startup(cls) -> None:
        cls.started += 1

    @classmethod
    async def on_shutdown(cls) -> None:
        cls.stopped += 1

    async def on_request_headers(self, headers: extproc.Headers) -> None:
        headers["x-started"] = str(type(self).started)


def test_the_in_process_client_runs_the_lifespan_around_its_requests():
    with Client(Counted) as client:
        assert (Counted.started, Counted.stopped) == (1, 0)
        assert client.get("/").request.headers["x-started"] == "1"
    assert (Counted.started, Counted.stopped) == (1, 1)


class Sleepy(extproc.Processor):
    """Blocks its loop past its message timeout."""

    message_timeout = 0.2

    async def on_request_headers(self, headers: extproc.Headers) -> None:
        time.sleep(0.5)  # noqa: ASYNC251 - on purpose: a hook that blocks its loop


@pytest.mark.parametrize("make", IN_PROCESS_OR_ENVOY)
def test_a_hook_blocking_its_loop_past_the_timeout_gets_envoys_504(make):
    with make(Sleepy) as client:
        assert client.get("/").status == 504


@pytest.mark.parametrize("make", IN_PROCESS_OR_ENVOY)
def test_a_refusal_while_the_client_still_sends_is_the_answer(make):
    """A deny at the headers of a large upload: Envoy answers before reading the body (and
    closes); the client reads that answer, as the in-process double gives it."""
    with make(Stamp) as client:
        denied = client.post("/", headers={"x-deny": "big"}, body=b"x" * (8 << 20))
        assert denied.status == 403 and denied.request is None


def test_requests_from_threads_each_get_their_own_upstream_and_failure():
    """EnvoyClient shared by threads: each reply's upstream request and each upstream
    callback's exception belong to the request that made them."""
    def answer(request: Message) -> tuple[int, dict[str, str], bytes]:
        if request.path.startswith("/boom"):
            raise LookupError(request.path)
        return 200, {}, request.path.encode()

    def one(client: EnvoyClient, index: int) -> str:
        path = f"/{'boom' if index % 4 == 0 else 'ok'}{index}"
        try:
            reply = client.get(path)
        except LookupError as exc:
            return f"raised {exc}" if str(exc) == path else f"wrong {exc} for {path}"
        assert reply.request is not None and reply.request.path == path, (reply, path)
        return reply.body.decode().lower()  # (Stamp upper-cases the answer)

    with EnvoyClient(Stamp, upstream=answer) as client, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: one(client, i), range(64)))
    assert results == [f"raised /boom{i}" if i % 4 == 0 else f"/ok{i}" for i in range(64)]
