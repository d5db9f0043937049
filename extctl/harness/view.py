"""``extctl dev``'s live view: one block (or one JSON object) per request, built from the
server's own per-stream record (a ``StreamRecord``), not from its logs.

    GET /hello -> 200 in 4.1 ms (sent: request_headers, response_headers)
      request_headers 0.3 ms: set x-path; add x-multi; remove x-internal
      response_headers 0.1 ms: set x-processed-by
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from extproc.transports import StreamRecord, View


def summary(record: StreamRecord) -> dict[str, Any]:
    """The request as plain JSON values: what Envoy sent and what each hook did."""
    proc = record.proc
    request = getattr(proc, "request_headers", None)
    response = getattr(proc, "response_headers", None)
    hooks = []
    status = None
    for hook, changed in zip(record.hooks, record.changes, strict=False):
        entry: dict[str, Any] = {"phase": hook.phase, "ms": round(hook.seconds * 1000, 3),
                                 "outcome": hook.outcome, **changed}
        if hook.status is not None:
            entry["immediate_response"] = hook.status
            status = hook.status
        hooks.append(entry)
    if status is None and response is not None and response.get(":status"):
        status = int(response[":status"])
    return {"method": request.get(":method") if request is not None else None,
            "path": request.get(":path") if request is not None else None,
            "status": status, "ms": round(record.seconds * 1000, 3),
            "sent": list(record.messages), "hooks": hooks}


def text(view: dict[str, Any]) -> str:
    status = view["status"] if view["status"] is not None else "-"
    lines = [f"{view['method'] or '-'} {view['path'] or '-'} -> {status} in {view['ms']} ms "
             f"(sent: {', '.join(view['sent']) or 'nothing'})"]
    for hook in view["hooks"]:
        parts = [f"{what} {', '.join(hook[what])}" for what in ("set", "add", "remove")
                 if hook.get(what)]
        if "body" in hook:
            parts.append(f"body {hook['body'][0]} -> {hook['body'][1]} bytes")
        if "immediate_response" in hook:
            parts.append(f"immediate response {hook['immediate_response']}")
        if hook.get("dynamic_metadata"):
            parts.append(f"metadata {', '.join(hook['dynamic_metadata'])}")
        if "mode_override" in hook:
            parts.append(f"mode override: {', '.join(hook['mode_override'])}")
        if hook["outcome"] in ("fail_open", "fail_closed"):
            parts.append(f"failed ({hook['outcome'].replace('_', ' ')})")
        lines.append(f"  {hook['phase']} {hook['ms']} ms: {'; '.join(parts) or 'no change'}")
    return "\n".join(lines)


def live_view(output: str) -> View:
    """A server's view (``make_server(view=...)``) that prints every request it answers
    (``text``/``json``)."""
    def view(record: StreamRecord) -> None:
        found = summary(record)
        click.echo(json.dumps(found, separators=(",", ":")) if output == "json" else text(found))

    return view
