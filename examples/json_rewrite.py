"""JSON request rewrite in BUFFERED mode: the whole body arrives once; a field is added and
``content-length`` follows the new size (the framework corrects it, as Envoy requires).

Bodies that are not a JSON object are refused with 400 before they reach the upstream.
"""

from __future__ import annotations

import json

import extproc


class JsonRewrite(extproc.Processor):
    request_body_mode = extproc.BodyMode.BUFFERED

    def __init__(self) -> None:
        self.request_id: str | None = None

    async def on_request_headers(self, headers: extproc.Headers) -> None:
        # Handling this phase is what makes Envoy send the headers at all.
        self.request_id = headers.get("x-request-id")

    async def on_request_body(self, body: extproc.Body) -> extproc.ImmediateResponse | None:
        try:
            document = json.loads(body.data or b"{}")
        except ValueError:
            document = None
        if not isinstance(document, dict):
            return extproc.ImmediateResponse(400, body=b"expected a JSON object\n",
                                             headers={"content-type": "text/plain"})
        document["request_id"] = self.request_id
        document["gateway"] = "extkit"
        body.data = json.dumps(document, separators=(",", ":")).encode()
        return None
