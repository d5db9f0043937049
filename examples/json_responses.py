"""Per-request mode override: Envoy sends every response's headers, but a response body only
when it is JSON, decided per request from the response's ``content-type``; other bodies never
leave Envoy. JSON object bodies get the request's path added.
"""

from __future__ import annotations

import json

import extproc


class JsonResponses(extproc.Processor):
    allow_mode_override = True

    async def on_request_headers(self, headers: extproc.Headers) -> None:
        # Nothing to change; handling this phase makes Envoy send the request's headers, which
        # later phases read as self.request_headers.
        return None

    async def on_response_headers(self, headers: extproc.Headers) -> None:
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == "application/json":
            self.override_mode(response_body=extproc.BodyMode.BUFFERED)

    async def on_response_body(self, body: extproc.Body) -> None:
        document = json.loads(body.data or b"null")
        if isinstance(document, dict):
            assert self.request_headers is not None
            document["seen_path"] = self.request_headers[":path"]
            body.data = json.dumps(document).encode()
