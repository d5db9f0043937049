"""``extctl dev``'s live view: one block (or one JSON object) per request, from what Envoy
logged about it (method, path, status, time: its JSON access log) joined by x-request-id with
the processor's own record of its stream (a ``StreamRecord``: what Envoy sent, what each hook
did), not from logs.

    GET /hello -> 200 in 4 ms (sent: request_headers, response_headers)
      request_headers 0.3 ms: set x-path; add x-multi; remove x-internal
      response_headers 0.1 ms: set x-processed-by

A request the processor never saw (Envoy could not reach it, or answered before it) is a line
with what Envoy says about it; a stream Envoy logged nothing about (yet) is shown with what the
processor saw once it has waited long enough.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from extproc.transports import StreamRecord, View

#: How long a request Envoy logged waits for the processor's record of it (which a request
#: the processor never saw does not get), and a record for Envoy's line (which comes when the
#: whole response has gone: a long download keeps it).
ACCESS_WAIT = 1.0
STREAM_WAIT = 60.0


def summary(record: StreamRecord) -> dict[str, Any]:
    """The stream as plain JSON values: what Envoy sent and what each hook did, and what the
    processor knows of the request (its method, path and status: only from the phases Envoy
    sent it)."""
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
            "sent": list(record.messages), "hooks": hooks, "request_id": record.request_id}


def joined(stream: dict[str, Any] | None, access: dict[str, Any] | None) -> dict[str, Any]:
    """One request of the view: Envoy's method, path, status and time when it logged the
    request, the processor's stream (``sent``, ``hooks``, ``processor_ms``) when it saw it."""
    view: dict[str, Any] = {"method": None, "path": None, "status": None, "ms": None,
                            "sent": [], "hooks": []}
    if stream is not None:
        view.update({key: stream[key] for key in ("method", "path", "status", "sent", "hooks")})
        view["ms"] = stream["ms"]
    if access is not None:
        for key in ("method", "path", "status"):
            if access.get(key) not in (None, "", "-"):
                view[key] = access[key]
        if isinstance(access.get("duration_ms"), (int, float)):
            view["ms"] = access["duration_ms"]
    view["request_id"] = (stream or {}).get("request_id") or (access or {}).get("request_id")
    if stream is not None:
        view["processor_ms"] = stream["ms"]
    if access is not None:
        flags, details = access.get("flags"), access.get("details")
        if flags not in (None, "", "-"):
            view["envoy_flags"] = flags
        if details not in (None, "", "-", "via_upstream"):
            view["envoy_details"] = details
    return view


def _body(change: list[int]) -> str:
    before, after = change
    return (f"body changed ({after} bytes)" if before == after
            else f"body {before} -> {after} bytes")


def text(view: dict[str, Any], processor: bool = True, shown_above: bool = False) -> str:
    """The view's block: the request line, then one line per hook; ``processor``: whether a
    processor runs at all (without one, a request line says nothing of a stream);
    ``shown_above``: the request's stream was shown before Envoy logged the request."""
    status = view["status"] if view["status"] is not None else "-"
    head = (f"{view['method'] or '-'} {view['path'] or '-'} -> {status} in {view['ms']} ms")
    if processor and "processor_ms" in view:
        head += f" (sent: {', '.join(view['sent']) or 'nothing'})"
    elif processor and shown_above:
        head += " (its stream is shown above)"
    elif processor:
        head += " (no stream to the processor)"
    if view.get("envoy_details") and (not view["hooks"] or "envoy_flags" in view):
        head += f" [envoy: {view['envoy_details']}]"
    lines = [head]
    for hook in view["hooks"]:
        parts = [f"{what} {', '.join(hook[what])}" for what in ("set", "add", "remove")
                 if hook.get(what)]
        if "body" in hook:
            parts.append(_body(hook["body"]))
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


@dataclass
class _Pending:
    since: float
    stream: dict[str, Any] | None = None
    access: dict[str, Any] | None = None
    order: int = 0


@dataclass
class LiveView:
    """The joined view: :meth:`stream` and :meth:`access` may be called from any thread, in
    any order; :meth:`flush` prints each request once both halves are in, or once the half
    that came waited :data:`ACCESS_WAIT` / :data:`STREAM_WAIT`, or at the end (``final``),
    in the order they came."""

    output: str = "text"
    processor: bool = True
    """Whether a processor runs: without one, Envoy's lines are printed at once."""
    echo: Callable[[str], None] = click.echo
    clock: Callable[[], float] = time.monotonic
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _count: int = 0
    # Requests whose stream was shown before Envoy logged them (the last ones).
    _shown: collections.deque[str] = field(default_factory=lambda: collections.deque(
        maxlen=1000))

    def stream(self, summary: dict[str, Any]) -> None:
        """The processor's record of a stream (:func:`summary`)."""
        self._add(summary.get("request_id"), stream=summary)

    def access(self, entry: dict[str, Any]) -> None:
        """Envoy's access log line about a request."""
        self._add(entry.get("request_id"), access=entry)

    def _add(self, request_id: str | None, **half: dict[str, Any]) -> None:
        with self._lock:
            self._count += 1
            key = request_id if request_id not in (None, "", "-") else f"#{self._count}"
            pending = self._pending.setdefault(key, _Pending(self.clock(), order=self._count))
            for name, value in half.items():
                setattr(pending, name, value)
        self.flush()

    def flush(self, final: bool = False) -> None:
        now = self.clock()
        ready = []
        with self._lock:
            # In the order they came, but for a request that waits for a stream of Envoy's
            # line (less than a second): later ones wait behind it. One that waits for
            # Envoy's line (a long response) holds nothing up.
            blocked = False
            for key, pending in sorted(self._pending.items(), key=lambda kv: kv[1].order):
                complete = pending.stream is not None and pending.access is not None
                waited = now - pending.since
                if not (complete or final
                        or (pending.stream is None and (not self.processor
                                                        or waited >= ACCESS_WAIT))
                        or (pending.access is None and waited >= STREAM_WAIT)):
                    blocked = blocked or pending.stream is None
                    continue
                if not blocked:
                    ready.append(pending)
                    del self._pending[key]
        for pending in ready:
            view = joined(pending.stream, pending.access)
            above = False
            if pending.access is None and view["request_id"]:
                self._shown.append(view["request_id"])
            elif pending.stream is None and view["request_id"] in self._shown:
                above = True
            self.echo(json.dumps(view, separators=(",", ":")) if self.output == "json"
                      else text(view, self.processor, above))


def recording(path: str) -> View:
    """A server's view that appends each stream's :func:`summary` to ``path`` as a JSON line
    (what ``extctl dev --reload``'s child hands the view it joins with Envoy's log)."""
    def view(record: StreamRecord) -> None:
        line = json.dumps(summary(record), separators=(",", ":")) + "\n"
        with open(path, "a") as records:
            records.write(line)

    return view
