"""Processors used by the end-to-end tests (importable by ``extctl serve procs:Name``)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import extproc
from extproc import Body, BodyMode, Headers, ImmediateResponse


async def until_exists(path: str) -> None:
    """Until the file ``path`` exists: a test creates it to release a hook it holds (another
    process may create it, so it is polled)."""
    while not os.path.exists(path):  # noqa: ASYNC110, ASYNC240 - a file, not an event here
        await asyncio.sleep(0.01)


class Rewrite(extproc.Processor):
    """Sets, appends and removes request headers; adds a response header; denies x-deny."""

    async def on_request_headers(self, headers: Headers) -> ImmediateResponse | None:
        if "x-deny" in headers:
            return ImmediateResponse(403, body=b"denied\n", headers={"x-why": "policy"})
        if "x-boom" in headers:
            raise RuntimeError("secret internal detail")
        headers["x-path"] = headers[":path"]
        headers["x-replaced"] = "new"
        headers.add("x-multi", "second")
        del headers["x-internal"]
        return None

    async def on_response_headers(self, headers: Headers) -> None:
        headers["x-processed-by"] = f"extkit-{os.getpid()}"
        # Later phases read the request's headers.
        assert self.request_headers is not None
        headers["x-request-path"] = self.request_headers[":path"]


class FailOpen(Rewrite):
    fail_open = True


class HeadersOnly(extproc.Processor):
    async def on_request_headers(self, headers: Headers) -> None:
        headers["x-seen"] = "1"


class Streamed(extproc.Processor):
    """Rewrites each response chunk as it arrives and tags it with its index."""

    response_body_mode = BodyMode.STREAMED

    def __init__(self) -> None:
        self.chunks = 0

    async def on_response_body(self, body: Body) -> None:
        if body.data:
            self.chunks += 1
            body.data = body.data.replace(b"secret", b"******") + f"[{self.chunks}]".encode()


class BufferedJson(extproc.Processor):
    """Adds a field to a JSON request body; content-length is fixed by the framework."""

    request_body_mode = BodyMode.BUFFERED

    async def on_request_headers(self, headers: Headers) -> None:
        headers["x-body-mode"] = "buffered"

    async def on_request_body(self, body: Body) -> None:
        document = json.loads(body.data)
        document["added_by"] = "extkit"
        body.data = json.dumps(document).encode()


class FullDuplexRedact(extproc.Processor):
    """Redacts WORD in both directions even when it is split across chunks."""

    WORD = b"password"
    request_body_mode = BodyMode.FULL_DUPLEX_STREAMED
    response_body_mode = BodyMode.FULL_DUPLEX_STREAMED

    def __init__(self) -> None:
        self.held = {"request": b"", "response": b""}

    def _redact(self, direction: str, body: Body) -> None:
        data = (self.held[direction] + body.data).replace(self.WORD, b"*" * len(self.WORD))
        if body.end_of_stream:
            self.held[direction], body.data = b"", data
        else:
            keep = len(self.WORD) - 1  # a split WORD's head stays here until the next chunk
            self.held[direction], body.data = data[-keep:], data[:-keep]

    async def on_request_body(self, body: Body) -> None:
        self._redact("request", body)

    async def on_response_body(self, body: Body) -> None:
        self._redact("response", body)

    async def on_request_trailers(self, trailers: Headers) -> None:
        trailers["x-trailer-seen"] = "yes"


class Slow(extproc.Processor):
    """Holds the request in its hook (graceful shutdown tests), as the request's headers say:
    creates the file ``x-mark`` names once inside it, so a test knows the request is there;
    then waits until the file ``x-release`` names exists, so the test says when it leaves,
    and for ``x-sleep-ms``."""

    message_timeout = 10.0

    async def on_request_headers(self, headers: Headers) -> None:
        mark = headers.get("x-mark")
        if mark:
            with open(mark, "w") as f:  # noqa: ASYNC230 - a tiny local file, on purpose
                f.write(str(os.getpid()))
        release = headers.get("x-release")
        if release:
            await until_exists(release)
        await asyncio.sleep(int(headers.get("x-sleep-ms") or 0) / 1000)
        headers["x-slept"] = "1"

    async def on_response_headers(self, headers: Headers) -> None:
        headers["x-worker-pid"] = str(os.getpid())


class Metadata(extproc.Processor):
    """Emits dynamic metadata and reads requested attributes."""

    dynamic_metadata_namespaces = ("extkit",)
    request_attributes = ("request.path", "request.method")

    async def on_request_headers(self, headers: Headers) -> None:
        attrs = self.attributes
        headers["x-attr-path"] = str(attrs.get("request.path"))
        headers["x-attr-method"] = str(attrs.get("request.method"))
        self.set_dynamic_metadata("extkit", "tenant", "blue")


class ModeOverride(extproc.Processor):
    """Asks for the response body only when the request says so."""

    allow_mode_override = True

    async def on_request_headers(self, headers: Headers) -> None:
        if headers.get("x-want-body") == "1":
            self.override_mode(response_body=BodyMode.BUFFERED)

    async def on_response_body(self, body: Body) -> None:
        body.data = body.data.upper()


class Soak(extproc.Processor):
    """Headers both ways plus a streamed response body: the common per-request work."""

    response_body_mode = BodyMode.STREAMED

    async def on_request_headers(self, headers: Headers) -> ImmediateResponse | None:
        if "x-deny" in headers:
            return ImmediateResponse(403, body=b"denied\n")
        headers["x-soak"] = headers.get(":path", "")
        return None

    async def on_response_headers(self, headers: Headers) -> None:
        headers.add("x-soak-response", "1")

    async def on_response_body(self, body: Body) -> None:
        body.data = body.data.replace(b"GET", b"get")


class BypassChecks(extproc.Processor):
    """Sends the one header mutation ``x-mutation`` names (JSON ``[kind, action, name,
    value]``: kind ``request``/``response``, action ``set``/``add``/``remove``) behind
    Headers' checks, to see what Envoy does with the mutations Headers refuses."""

    def _bypass(self, kind: str, headers: Headers) -> None:
        assert self.request_headers is not None
        wanted, action, name, value = json.loads(self.request_headers["x-mutation"])
        if wanted == kind:  # Headers._change's operations: 0 set, 1 append, 2 remove
            op = ("set", "add", "remove").index(action)
            headers._change(name, op, None if action == "remove" else value)

    async def on_request_headers(self, headers: Headers) -> None:
        self._bypass("request", headers)

    async def on_response_headers(self, headers: Headers) -> None:
        self._bypass("response", headers)


class RoutingAllowed(extproc.Processor):
    allow_routing_mutations = True

    async def on_request_headers(self, headers: Headers) -> None:
        headers["host"] = "rewritten.example"


class BufferedBig(extproc.Processor):
    """Doubles a large BUFFERED request body (more than gRPC's 4 MiB default message)."""

    request_body_mode = BodyMode.BUFFERED
    message_timeout = 10.0  # megabytes each way take longer than Envoy's 200 ms default

    async def on_request_headers(self, headers: Headers) -> None:
        headers["x-big"] = "1"

    async def on_request_body(self, body: Body) -> None:
        body.data = body.data + body.data


class LoopKind(extproc.Processor):
    """Reports which event loop serves it."""

    async def on_request_headers(self, headers: Headers) -> None:
        headers["x-loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]


class AppendOrder(extproc.Processor):
    """Appends itself to ``x-order``: the upstream sees which filter ran first."""

    async def on_request_headers(self, headers):
        headers.add("x-order", "ext_proc")


class Blocking(extproc.Processor):
    """Blocks the event loop for ``x-block-ms`` (what a hook calling blocking code does)."""

    async def on_request_headers(self, headers: Headers) -> None:
        time.sleep(int(headers.get("x-block-ms") or 0) / 1000)  # noqa: ASYNC251 - on purpose


class _UserBaseException(BaseException):
    pass


async def _cancelled_inside() -> None:
    task = asyncio.ensure_future(asyncio.sleep(10))
    task.cancel()
    await task  # the hook's own task was cancelled: CancelledError, not the stream's


# What each x-do value makes the hook do: every way a hook can go wrong.
MISBEHAVIOURS = {
    "exit": lambda proc: sys.exit(3),
    "interrupt": lambda proc: (_ for _ in ()).throw(KeyboardInterrupt()),
    "generator-exit": lambda proc: (_ for _ in ()).throw(GeneratorExit()),
    "base-exception": lambda proc: (_ for _ in ()).throw(_UserBaseException()),
    "immediate-body-int": lambda proc: ImmediateResponse(403, body=3),  # type: ignore[arg-type]
    "immediate-header-crlf": lambda proc: ImmediateResponse(403, headers={"x": "a\r\nb: c"}),
    "immediate-header-name": lambda proc: ImmediateResponse(403, headers={"x y": "1"}),
    "metadata-set": lambda proc: proc.set_dynamic_metadata("extkit", "k", {1, 2}),
    "metadata-bytes": lambda proc: proc.set_dynamic_metadata("extkit", "k", b"raw"),
    "returns-int": lambda proc: 3,
}


class Misbehaving(extproc.Processor):
    """Goes wrong as ``x-do`` says (MISBEHAVIOURS, or ``cancelled``); fails closed with 503."""

    dynamic_metadata_namespaces = ("extkit",)
    error_status = 503

    async def on_request_headers(self, headers: Headers) -> Any:
        what = headers.get("x-do") or ""
        if what == "cancelled":
            await _cancelled_inside()
        return MISBEHAVIOURS[what](self) if what else None

    async def on_response_headers(self, headers: Headers) -> None:
        headers["x-worker-pid"] = str(os.getpid())


class MisbehavingOpen(Misbehaving):
    fail_open = True


class WritesFiles(extproc.Processor):
    """Creates the file and the directory ``x-file`` names (what a hook's own files get)."""

    async def on_request_headers(self, headers: Headers) -> None:
        target = headers.get("x-file")
        if target:
            with open(target, "w"):  # noqa: ASYNC230 - a tiny local file, on purpose
                pass
            os.mkdir(target + ".d")


class SlowLifecycle(extproc.Processor):
    """``on_startup`` and ``on_shutdown`` await ``EXTKIT_START_S`` / ``EXTKIT_STOP_S`` seconds
    (0 by default): a slow warm-up or clean-up, hung when long. ``on_startup`` first creates
    the file ``EXTKIT_MARK`` names."""

    @classmethod
    async def on_startup(cls) -> None:
        mark = os.environ.get("EXTKIT_MARK")
        if mark:  # tells a test that on_startup runs
            with open(mark, "w") as f:  # noqa: ASYNC230 - a tiny local file, on purpose
                f.write(str(os.getpid()))
        await asyncio.sleep(float(os.environ.get("EXTKIT_START_S", "0")))

    @classmethod
    async def on_shutdown(cls) -> None:
        await asyncio.sleep(float(os.environ.get("EXTKIT_STOP_S", "0")))

    async def on_request_headers(self, headers: Headers) -> None:
        headers["x-served-by"] = str(os.getpid())


class ConstructorFails(extproc.Processor):
    """Its constructor raises SystemExit: user code run for every request, like a hook."""

    error_status = 503

    def __init__(self) -> None:
        raise SystemExit(7)

    async def on_request_headers(self, headers: Headers) -> None:
        headers["x-never"] = "1"


class ConstructorFailsOpen(ConstructorFails):
    fail_open = True


class BackgroundExit(extproc.Processor):
    """A hook starts a task that raises SystemExit (asyncio lets it out of the loop)."""

    async def on_request_headers(self, headers: Headers) -> None:
        async def leave() -> None:
            raise SystemExit(5)

        _background.add(asyncio.ensure_future(leave()))
        headers["x-served-by"] = str(os.getpid())


_background: set[asyncio.Future[None]] = set()


class BlockingShortTimeout(Blocking):
    """Blocking, with Envoy's answer to a message timeout after 0.5 s; with ``x-mark``, the
    file it names is created as the hook starts blocking, and ``NAME.done`` once it stops."""

    message_timeout = 0.5

    async def on_request_headers(self, headers: Headers) -> None:
        mark = headers.get("x-mark")
        if mark:
            Path(mark).touch()  # noqa: ASYNC240 - the hook blocks on purpose anyway
        await super().on_request_headers(headers)
        if mark:
            Path(mark + ".done").touch()  # noqa: ASYNC240


class StampHeaders(extproc.Processor):
    """Stamps the request (x-stamp), answers ``x-deny`` itself (403, x-why), and reads the
    response's status into x-seen-status: header hooks only (what the dynamic module runs)."""

    async def on_request_headers(self, headers: Headers) -> ImmediateResponse | None:
        if "x-deny" in headers:
            return ImmediateResponse(403, body=b"denied\n", headers={"x-why": headers["x-deny"]})
        headers["x-stamp"] = "on"
        return None

    async def on_response_headers(self, headers: Headers) -> None:
        headers["x-seen-status"] = headers[":status"]


class BlockingBodyShortTimeout(extproc.Processor):
    """A STREAMED request body hook that blocks the loop for the request's ``x-block-ms``
    (creating the file named by ``x-mark`` as it starts, ``NAME.done`` once it stops) and
    appends ``!`` to the body's end; Envoy's answer to a message timeout after 0.5 s."""

    message_timeout = 0.5
    request_body_mode = BodyMode.STREAMED

    async def on_request_headers(self, headers: Headers) -> None:
        self.block_ms = int(headers.get("x-block-ms") or 0)
        self.mark = headers.get("x-mark")

    async def on_request_body(self, body: Body) -> None:
        if self.mark:
            Path(self.mark).touch()  # noqa: ASYNC240 - the hook blocks on purpose anyway
        time.sleep(self.block_ms / 1000)  # noqa: ASYNC251 - on purpose
        if self.mark:
            Path(self.mark + ".done").touch()  # noqa: ASYNC240
        if body.end_of_stream:
            body.data = body.data + b"!"


class Lifecycle(extproc.Processor):
    """Reads what its ``on_startup`` set (``x-started``); its ``on_shutdown`` writes the file
    ``$EXTKIT_TEST_SHUTDOWN_MARK`` names."""

    started = ""

    @classmethod
    async def on_startup(cls) -> None:
        cls.started = "yes"

    @classmethod
    async def on_shutdown(cls) -> None:
        Path(os.environ["EXTKIT_TEST_SHUTDOWN_MARK"]).write_text("down")  # noqa: ASYNC240

    async def on_request_headers(self, headers: Headers) -> None:
        headers["x-started"] = type(self).started


class StartupFails(Lifecycle):
    """An ``on_startup`` that raises (a backend the processor needs is down)."""

    @classmethod
    async def on_startup(cls) -> None:
        raise ConnectionRefusedError("policy store at 127.0.0.1:1 refused the connection")


class AttributeReport(extproc.Processor):
    """Reports the attributes Envoy sent as JSON: the request's in the request header
    ``x-attributes``, all of them (the response's too) in the response header of that name."""

    request_attributes = ("request.path", "request.url_path", "request.host", "request.scheme",
                          "request.method", "request.referer", "request.useragent",
                          "request.id", "request.protocol", "request.query", "source.address",
                          "source.port", "destination.address", "destination.port",
                          "connection.id")
    response_attributes = ("response.code", "upstream.address", "upstream.port")

    async def on_request_headers(self, headers: Headers) -> None:
        headers["x-attributes"] = json.dumps(self.attributes, sort_keys=True)

    async def on_response_headers(self, headers: Headers) -> None:
        headers["x-attributes"] = json.dumps(self.attributes, sort_keys=True)


class OverrideToBuffered(extproc.Processor):
    """Asks for the request body from its headers hook (a mode override, no class body mode),
    BUFFERED, and upper-cases it."""

    allow_mode_override = True

    async def on_request_headers(self, headers: Headers) -> None:
        self.override_mode(request_body=BodyMode.BUFFERED)

    async def on_request_body(self, body: Body) -> None:
        body.data = body.data.upper()


class ShadowCount(extproc.Processor):
    """Observability mode: each request's hook appends a line to ``$EXTKIT_TEST_SHADOW_LOG``;
    its answers (a 403 among them) are ignored by Envoy."""

    observability_mode = True

    async def on_request_headers(self, headers: Headers) -> ImmediateResponse:
        with open(os.environ["EXTKIT_TEST_SHADOW_LOG"], "a") as log:  # noqa: ASYNC230
            log.write(headers[":path"] + "\n")
        return ImmediateResponse(403)
