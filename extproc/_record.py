"""What a server records about each ``Process`` stream: metrics, spans, the access line.

The message loop calls one :class:`StreamRecord` at a few points (a hook starts, a hook ends
with its outcome, body bytes arrive, answers are sent); the servicer makes it when the stream
starts and grpc ends it with the RPC (its gRPC code). Without an :class:`Observer` (no
``admin``, no tracing, access log below DEBUG) the record is None: one ``is None`` test per
hook and per message.

A record keeps each hook's phase, duration, outcome and immediate-response status
(:attr:`StreamRecord.hooks`), so a live view can show a request's phases from it.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

from ._metrics import ACTIVE, HOOK_BUCKETS, HOOK_SUM, STARTED, Metrics
from ._tracing import parent as trace_parent
from ._tracing import tracer as configured_tracer

access_log = logging.getLogger("extproc.access")

# Outcomes of a hook.
OK, IMMEDIATE, FAIL_OPEN, FAIL_CLOSED = "ok", "immediate", "fail_open", "fail_closed"


class HookRecord(NamedTuple):
    phase: str
    seconds: float
    outcome: str  # ok, immediate, fail_open, fail_closed
    status: int | None  # the immediate response's HTTP status


class Observer:
    """One server process's recording: ``metrics`` (None without admin), ``tracer`` (None
    when tracing is off), the access line (when ``extproc.access`` logs DEBUG)."""

    def __init__(self, processor: str, metrics: Metrics | None, tracer: Any | None,
                 counts: dict[str, int],
                 views: tuple[Callable[[StreamRecord], None], ...] = ()) -> None:
        self.processor = processor
        self.metrics = metrics
        self.tracer = tracer
        self.counts = counts
        self.access = access_log.isEnabledFor(logging.DEBUG)
        #: Given every finished stream's record, with what each hook changed (``extctl
        #: dev``'s live view). Empty: no change is collected (nothing on the message path).
        self.views = views

    @classmethod
    def create(cls, processor: str, metrics: Metrics | None, counts: dict[str, int],
               view: Callable[[StreamRecord], None] | None = None) -> Observer | None:
        """An observer, or None when there is nothing to record."""
        tracer = configured_tracer()
        if (metrics is None and tracer is None and view is None
                and not access_log.isEnabledFor(logging.DEBUG)):
            return None
        return cls(processor, metrics, tracer, counts, (view,) if view is not None else ())

    def close(self) -> None:
        """Export the spans still buffered (a worker exits without running atexit hooks)."""
        if self.tracer is not None:
            from opentelemetry import trace

            flush = getattr(trace.get_tracer_provider(), "force_flush", None)
            if flush is not None:
                flush(5000)

    def stream(self, context: Any) -> StreamRecord:
        """The record of the ``Process`` stream ``context`` belongs to; it ends when the RPC
        does (grpc's done callback: also when Envoy resets a stream whose generator waits at
        a yield, which grpc then drops without resuming it)."""
        record = StreamRecord(self, context)
        context.add_done_callback(record.done)
        return record


def _code_name(context: Any) -> str:
    try:
        code = context.code()
    except Exception:  # pragma: no cover - grpc versions without ServicerContext.code()
        return "UNKNOWN"
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class StreamRecord:
    """One stream's record; the message loop calls :meth:`hook_started`,
    :meth:`hook_finished` and :meth:`body`.

    Built for every stream when observing, so it sets few attributes (the rest are class
    defaults until used) and records with adds at fixed indexes.
    """

    # Defaults until a stream uses them.
    proc: Any = None
    _arg: Any = None
    _arg_data: bytes | None = None
    seconds = 0.0
    span: Any = None
    _hook_span: Any = None
    _hook_token: Any = None
    _hook_started = 0.0
    started_ns = 0
    body_bytes: dict[str, int] | None = None
    finished = False
    sent = 0

    def __init__(self, observer: Observer, context: Any) -> None:
        self.observer = observer
        self.metrics = metrics = observer.metrics
        self.tracer: Any = observer.tracer
        self.context = context
        self.started = time.perf_counter()
        if self.tracer is not None:
            self.started_ns = time.time_ns()
        self.messages: dict[str, int] = {}
        self.changes: list[dict[str, Any]] = []  # per hook, with views only
        self._hooks: list[tuple[str, float, str, int | None]] = []
        if metrics is not None:
            values = metrics.values
            values[STARTED] += 1
            values[ACTIVE] += 1

    @property
    def hooks(self) -> list[HookRecord]:
        """Each hook that ran: phase, duration, outcome, immediate-response status."""
        return [HookRecord(*hook) for hook in self._hooks]

    # -- called by the message loop -------------------------------------------------------

    def hook_started(self, phase: str, proc: Any, arg: Any = None) -> None:
        self.proc = proc
        if self.observer.views:
            self._arg = arg
            # a Body's bytes as Envoy sent them (a reference: bytes are not changed in place)
            self._arg_data = arg._data if hasattr(arg, "_changed") else None
        if self.tracer is not None:
            self._start_hook_span(phase)
        self._hook_started = time.perf_counter()

    def hook_finished(self, phase: str, outcome: str = OK, status: int | None = None,
                      error: BaseException | None = None) -> None:
        seconds = time.perf_counter() - self._hook_started
        self._hooks.append((phase, seconds, outcome, status))
        if self.observer.views:
            self.changes.append(_changes(self.proc, self._arg, self._arg_data, outcome))
        metrics = self.metrics
        if metrics is not None:
            values = metrics.values
            base = metrics.hook_index[phase]
            values[base + bisect_left(HOOK_BUCKETS, seconds)] += 1
            values[base + HOOK_SUM] += seconds
            if status is not None:
                metrics.immediate(phase, status)
            if outcome in (FAIL_OPEN, FAIL_CLOSED):
                metrics.error(phase, outcome)
        if self._hook_span is not None:
            self._end_hook_span(outcome, status, error)

    def extended(self, phase: str) -> None:
        """A hook extended Envoy's message timeout (rare: recorded at once)."""
        if self.metrics is not None:
            self.metrics.extended(phase)

    def body(self, direction: str, size: int) -> None:
        if self.body_bytes is None:
            self.body_bytes = {"request": 0, "response": 0}
        self.body_bytes[direction] += size

    # -- the stream's end -----------------------------------------------------------------

    @property
    def request_id(self) -> str | None:
        """The request's x-request-id: from its headers, else from the stream's metadata
        (Envoy sends it there when configured to, even without request headers)."""
        proc = self.proc
        if proc is not None:  # its metadata read once per stream, by the processor
            headers = proc.request_headers
            found: str | None = headers.get("x-request-id") if headers is not None else None
            return found if found is not None else proc.grpc_metadata.get("x-request-id")
        metadata = getattr(self.context, "invocation_metadata", None)  # no hook ran yet
        for key, value in (metadata() if metadata is not None else None) or ():
            if key == "x-request-id":
                return str(value)
        return None

    def done(self, context: Any) -> None:
        self.finish("CANCELLED" if context.cancelled() else _code_name(context))

    def finish(self, code: str) -> None:
        """The stream ended with gRPC status ``code``; later calls are ignored."""
        if self.finished:
            return
        self.finished = True
        seconds = time.perf_counter() - self.started
        received = 0
        counts = self.observer.counts
        for phase, count in self.messages.items():
            counts[phase] = counts.get(phase, 0) + count
            received += count
        metrics = self.metrics
        if metrics is not None:
            metrics.finished(code, seconds, received, self.sent)
            if self.body_bytes is not None:
                for direction, size in self.body_bytes.items():
                    metrics.values[metrics.body_index[direction]] += size
        if self.tracer is not None:
            if self._hook_span is not None:  # cut short in the middle of a hook
                self._end_hook_span("cancelled", None, None)
            self._end_stream_span(code)
        if self.observer.access:
            self._access_line(code, seconds)
        self.seconds = seconds
        for view in self.observer.views:
            try:
                view(self)
            except Exception:  # a view must never break serving
                access_log.exception("a stream view failed")

    def _access_line(self, code: str, seconds: float) -> None:
        request_id = self.request_id or "-"
        phases = [hook.phase for hook in self.hooks]
        immediate = next((h.status for h in self.hooks if h.status is not None), None)
        access_log.debug(
            "%s %s %.2fms phases=%s%s (x-request-id=%s)", self.observer.processor, code,
            seconds * 1000, ",".join(phases) or "-",
            f" immediate={immediate}" if immediate is not None else "", request_id,
            extra={"request_id": request_id, "processor": self.observer.processor,
                   "grpc_code": code, "duration_ms": round(seconds * 1000, 3),
                   "phases": phases, "status": immediate,
                   "hooks": [{"phase": h.phase, "ms": round(h.seconds * 1000, 3),
                              "outcome": h.outcome} for h in self.hooks]})

    # -- spans ----------------------------------------------------------------------------

    def _start_stream_span(self) -> None:
        from opentelemetry import trace

        headers = getattr(self.proc, "request_headers", None)
        metadata = self.context.invocation_metadata() if self.context is not None else None
        attributes = {"extproc.processor": self.observer.processor}
        request_id = self.request_id
        if request_id:
            attributes["extproc.request_id"] = request_id
        self.span = self.tracer.start_span(
            "ext_proc " + self.observer.processor, context=trace_parent(metadata, headers),
            kind=trace.SpanKind.SERVER, attributes=attributes, start_time=self.started_ns)

    def _start_hook_span(self, phase: str) -> None:
        from opentelemetry import context, trace

        if self.span is None:
            self._start_stream_span()
        parent = trace.set_span_in_context(self.span)
        attributes: dict[str, Any] = {"extproc.phase": phase,
                                      "extproc.processor": self.observer.processor}
        request_id = self.request_id
        if request_id:
            attributes["extproc.request_id"] = request_id
        span = self.tracer.start_span("on_" + phase, context=parent, attributes=attributes)
        self._hook_span = span
        # The hook's own spans (an HTTP client it calls) become children of this one.
        self._hook_token = context.attach(trace.set_span_in_context(span, parent))

    def _end_hook_span(self, outcome: str, status: int | None,
                       error: BaseException | None) -> None:
        from opentelemetry import context, trace

        span, self._hook_span = self._hook_span, None
        span.set_attribute("extproc.outcome", outcome)
        if status is not None:
            span.set_attribute("extproc.immediate_response.status", status)
            self.span.set_attribute("extproc.immediate_response.status", status)
        if error is not None:
            span.record_exception(error)
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}"))
        span.end()
        token, self._hook_token = self._hook_token, None
        if token is not None:
            context.detach(token)

    def _end_stream_span(self, code: str) -> None:
        from opentelemetry import trace

        if self.span is None:
            self._start_stream_span()
        span = self.span
        request_id = self.request_id
        if request_id:
            span.set_attribute("extproc.request_id", request_id)
        span.set_attribute("rpc.grpc.status_code", code)
        if code != "OK":
            span.set_status(trace.Status(trace.StatusCode.ERROR, code))
        elif any(h.outcome in (FAIL_OPEN, FAIL_CLOSED) for h in self.hooks):
            span.set_status(trace.Status(trace.StatusCode.ERROR, "hook error"))
        span.end()


def _changes(proc: Any, arg: Any, before: bytes | None, outcome: str) -> dict[str, Any]:
    """What a hook changed, read from the objects it changed (for the views): ``body`` is
    [bytes before, bytes after] when the bytes differ (assigning the same ones is no change)."""
    found: dict[str, Any] = {}
    if outcome == FAIL_OPEN:
        return found  # a failed hook's changes are discarded
    changes = getattr(arg, "_changes", None)
    if changes:
        for name, (op, _) in changes.items():
            found.setdefault(("set", "add", "remove")[op], []).append(name)
    if before is not None and arg._changed and arg._data != before:
        found["body"] = [len(before), len(arg._data)]
    metadata = getattr(proc, "_dynamic_metadata", None)
    if metadata:
        found["dynamic_metadata"] = sorted(f"{ns}.{key}" for ns, values in metadata.items()
                                           for key in values)
    override = getattr(proc, "_mode_override", None)
    if override is not None:
        found["mode_override"] = list(override.phases)
    return found
