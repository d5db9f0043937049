"""What a server records about each ``Process`` stream: metrics, spans, the access line.

The message loop calls one :class:`StreamRecord` at a few points (a hook starts, a hook ends
with its outcome, body bytes arrive) and the servicer wraps the stream (start, end with the
gRPC code). Without an :class:`Observer` (no ``admin``, no tracing, access log below DEBUG)
the servicer is not wrapped and the loop's record is None: one ``is None`` test per hook.

A record keeps each hook's phase, duration, outcome and immediate-response status
(:attr:`StreamRecord.hooks`), so a live view can show a request's phases from it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import grpc

from ._metrics import ACTIVE, STARTED, Metrics
from ._tracing import parent as trace_parent
from ._tracing import tracer as configured_tracer

access_log = logging.getLogger("extproc.access")

# Outcomes of a hook.
OK, IMMEDIATE, FAIL_OPEN, FAIL_CLOSED = "ok", "immediate", "fail_open", "fail_closed"

Process = Callable[..., AsyncIterator[Any]]


class HookRecord(NamedTuple):
    phase: str
    seconds: float
    outcome: str  # ok, immediate, fail_open, fail_closed
    status: int | None  # the immediate response's HTTP status


class Observer:
    """One server process's recording: ``metrics`` (None without admin), ``tracer`` (None
    when tracing is off), the access line (when ``extproc.access`` logs DEBUG)."""

    def __init__(self, processor: str, metrics: Metrics | None, tracer: Any | None,
                 counts: dict[str, int]) -> None:
        self.processor = processor
        self.metrics = metrics
        self.tracer = tracer
        self.counts = counts
        self.access = access_log.isEnabledFor(logging.DEBUG)

    @classmethod
    def create(cls, processor: str, metrics: Metrics | None,
               counts: dict[str, int]) -> Observer | None:
        """An observer, or None when there is nothing to record."""
        tracer = configured_tracer()
        if metrics is None and tracer is None and not access_log.isEnabledFor(logging.DEBUG):
            return None
        return cls(processor, metrics, tracer, counts)

    def close(self) -> None:
        """Export the spans still buffered (a worker exits without running atexit hooks)."""
        if self.tracer is not None:
            from opentelemetry import trace

            flush = getattr(trace.get_tracer_provider(), "force_flush", None)
            if flush is not None:
                flush(5000)

    def wrap(self, process: Process) -> Process:
        """The servicer's ``Process(request_iterator, context, record)`` as a recorded
        ``Process(request_iterator, context)``."""

        async def observed(request_iterator: Any, context: Any) -> AsyncIterator[Any]:
            record = StreamRecord(self, context)
            # When Envoy resets a stream while this generator waits at a yield, grpc drops the
            # generator without resuming it; the RPC's end is the record's end then.
            context.add_done_callback(lambda _: record.finish(
                "CANCELLED" if context.cancelled() else _code_name(context)))
            code = "OK"
            try:
                async for answer in process(request_iterator, context, record):
                    record.sent += 1
                    yield answer
            except grpc.aio.AbortError:
                code = _code_name(context)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise
            except BaseException:
                code = "UNKNOWN"
                raise
            finally:
                record.finish(code)

        return observed


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
    :meth:`hook_finished` and :meth:`body`."""

    __slots__ = ("_hook_span", "_hook_started", "_hook_token", "body_bytes", "context",
                 "finished", "hooks", "messages", "metrics", "observer", "proc", "sent", "span",
                 "started", "started_ns", "tracer")

    def __init__(self, observer: Observer, context: Any) -> None:
        self.observer = observer
        self.metrics = metrics = observer.metrics
        self.tracer: Any = observer.tracer
        self.context = context
        self.started = time.perf_counter()
        self.started_ns = time.time_ns() if self.tracer is not None else 0
        self.messages: dict[str, int] = {}
        self.sent = 0
        self.finished = False
        self.hooks: list[HookRecord] = []
        self.body_bytes = {"request": 0, "response": 0}
        self.proc: Any = None
        self.span: Any = None
        self._hook_span: Any = None
        self._hook_token: Any = None
        self._hook_started = 0.0
        if metrics is not None:
            values = metrics.values
            values[STARTED] += 1
            values[ACTIVE] += 1

    # -- called by the message loop -------------------------------------------------------

    def hook_started(self, phase: str, proc: Any) -> None:
        self.proc = proc
        if self.tracer is not None:
            self._start_hook_span(phase)
        self._hook_started = time.perf_counter()

    def hook_finished(self, phase: str, outcome: str = OK, status: int | None = None,
                      error: BaseException | None = None) -> None:
        seconds = time.perf_counter() - self._hook_started
        self.hooks.append(HookRecord(phase, seconds, outcome, status))
        metrics = self.metrics
        if metrics is not None:
            metrics.observe_hook(phase, seconds)
            if status is not None:
                metrics.immediate(phase, status)
            if outcome in (FAIL_OPEN, FAIL_CLOSED):
                metrics.error(phase, outcome)
        if self._hook_span is not None:
            self._end_hook_span(outcome, status, error)

    def body(self, direction: str, size: int) -> None:
        self.body_bytes[direction] += size

    # -- the stream's end -----------------------------------------------------------------

    @property
    def request_id(self) -> str | None:
        headers = getattr(self.proc, "request_headers", None)
        return headers.get("x-request-id") if headers is not None else None

    def finish(self, code: str) -> None:
        """The stream ended with gRPC status ``code``; later calls are ignored."""
        if self.finished:
            return
        self.finished = True
        seconds = time.perf_counter() - self.started
        received = sum(self.messages.values())
        counts = self.observer.counts
        for phase, count in self.messages.items():
            counts[phase] = counts.get(phase, 0) + count
        metrics = self.metrics
        if metrics is not None:
            metrics.finished(code, seconds, received, self.sent)
            for direction, size in self.body_bytes.items():
                if size:
                    metrics.values[metrics.body_index[direction]] += size
        if self.tracer is not None:
            if self._hook_span is not None:  # cut short in the middle of a hook
                self._end_hook_span("cancelled", None, None)
            self._end_stream_span(code)
        if self.observer.access:
            self._access_line(code, seconds)

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
