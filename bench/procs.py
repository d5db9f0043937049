"""envoy-extkit processors the benchmark runs (``extctl serve procs:Name``)."""

from __future__ import annotations

import extproc


class RequestHeader(extproc.Processor):
    """Sets one request header: a headers-only processor (Envoy sends nothing else)."""

    async def on_request_headers(self, headers: extproc.Headers) -> None:
        headers["x-extkit"] = "1"


class BothHeaders(RequestHeader):
    """Sets one request and one response header, like the minimal servicer."""

    async def on_response_headers(self, headers: extproc.Headers) -> None:
        headers["x-extkit-response"] = "1"
