"""A processor that exercises what the module supports (``demo.py`` runs it through Envoy)."""

from __future__ import annotations

import asyncio

import extproc

Answer = extproc.ImmediateResponse | None


class Demo(extproc.Processor):
    """Header changes both ways, per-request state, local replies, a slow hook, a failing one."""

    message_timeout = 1.0

    async def on_request_headers(self, headers: extproc.Headers) -> Answer:
        path = headers[":path"]
        if "x-deny" in headers:
            return extproc.ImmediateResponse(403, body=b"denied\n", headers={"x-why": "policy"})
        if path == "/slow":
            await asyncio.sleep(0.5)  # under message_timeout: only this request waits
        elif path == "/too-slow":
            await asyncio.sleep(5)  # over it: Envoy's ext_proc answers 504
        elif path == "/boom":
            raise RuntimeError("a bug in the hook")  # fail closed: error_status (500)
        headers["x-extkit"] = "1"
        headers.add("x-seen", "a")
        headers.add("x-seen", "b")
        del headers["x-internal"]
        return None

    async def on_response_headers(self, headers: extproc.Headers) -> Answer:
        assert self.request_headers is not None  # the same instance saw the request
        headers["x-request-path"] = self.request_headers[":path"]
        headers["x-extkit-response"] = "1"
        return None
