"""The processor ``extctl dev`` runs when given none: small, and shows each kind of change."""

from __future__ import annotations

import extproc


class Demo(extproc.Processor):
    """Tags requests, denies ``x-deny``, and masks the word "secret" in responses."""

    response_body_mode = extproc.BodyMode.STREAMED

    async def on_request_headers(
        self, headers: extproc.Headers
    ) -> extproc.ImmediateResponse | None:
        if "x-deny" in headers:
            return extproc.ImmediateResponse(403, body=b"denied by the demo processor\n",
                                             headers={"x-denied-by": "extkit-demo"})
        headers["x-extkit-demo"] = "request seen"
        return None

    async def on_response_body(self, body: extproc.Body) -> None:
        body.data = body.data.replace(b"secret", b"******")
