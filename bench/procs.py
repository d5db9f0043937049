"""envoy-extkit processors the benchmark runs (``extctl serve procs:Name``); each does the same
work as ``minimal_servicer.py`` in the same scenario."""

from __future__ import annotations

import json

import extproc


class RequestHeader(extproc.Processor):
    """Sets one request header: a headers-only processor (Envoy sends nothing else)."""

    async def on_request_headers(self, headers: extproc.Headers) -> None:
        headers["x-extkit"] = "1"


class BothHeaders(RequestHeader):
    """Sets one request and one response header, like the minimal servicer."""

    async def on_response_headers(self, headers: extproc.Headers) -> None:
        headers["x-extkit-response"] = "1"


class StreamedRewrite(extproc.Processor):
    """Rewrites each response body chunk as it arrives."""

    response_body_mode = extproc.BodyMode.STREAMED

    async def on_response_body(self, body: extproc.Body) -> None:
        body.data = body.data.replace(b"secret", b"******")


class BufferedJson(extproc.Processor):
    """Adds a field to the JSON request body (headers not sent: Envoy drops content-length)."""

    request_body_mode = extproc.BodyMode.BUFFERED

    async def on_request_body(self, body: extproc.Body) -> None:
        document = json.loads(body.data)
        document["added_by"] = "extkit"
        body.data = json.dumps(document).encode()


class AppendByte(extproc.Processor):
    """Appends one byte to the BUFFERED request body: ``bench/memory.py``'s large bodies."""

    request_body_mode = extproc.BodyMode.BUFFERED
    message_timeout = 60.0  # tens of megabytes each way on a shared machine

    async def on_request_body(self, body: extproc.Body) -> None:
        body.data = body.data + b"x"
