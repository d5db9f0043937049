"""Prometheus metrics of one server process (prometheus-client), created only with ``admin``.

With ``workers > 1`` every worker writes its values to files in a directory the supervisor
creates (prometheus-client's multiprocess mode) and one admin process reads them all, so one
scrape shows every worker, and the counts of a worker that died and was restarted are kept.
The supervisor cannot collect by asking the workers instead: a worker that is draining, or
dead, would take its counts with it.

Label children are bound once per server, so the per-stream cost is a few ``inc``/``observe``
calls, each a lock and an add (an mmap write in multiprocess mode).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
_GRPC = ("bidi_stream", "envoy.service.ext_proc.v3.ExternalProcessor", "Process")
PHASES = ("request_headers", "request_body", "request_trailers", "response_headers",
          "response_body", "response_trailers")
# Hooks usually take micro- to milliseconds; a stream lasts as long as the HTTP request.
HOOK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0)
STREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                  30.0, 60.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """Every metric a server process records, bound to its processor class.

    ``registry`` None: multiprocess mode (values go to the files, read by the admin process).
    """

    def __init__(self, processor: str, registry: Any | None) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Any:
            return Counter(name, doc, labels, registry=registry)

        started = counter("grpc_server_started_total", "Process streams started.", GRPC_LABELS)
        self.started = started.labels(*_GRPC)
        self._handled = counter("grpc_server_handled_total",
                                "Process streams finished, by gRPC status code.",
                                (*GRPC_LABELS, "grpc_code"))
        self.handled = {code: self._handled.labels(*_GRPC, code)
                        for code in ("OK", "CANCELLED", "INVALID_ARGUMENT", "INTERNAL")}
        self.received = counter("grpc_server_msg_received_total",
                                "ProcessingRequest messages received.", GRPC_LABELS).labels(*_GRPC)
        self.sent = counter("grpc_server_msg_sent_total",
                            "ProcessingResponse messages sent.", GRPC_LABELS).labels(*_GRPC)
        self.handling = Histogram(
            "grpc_server_handling_seconds", "Duration of Process streams (one HTTP request).",
            GRPC_LABELS, buckets=STREAM_BUCKETS, registry=registry).labels(*_GRPC)
        hooks = Histogram("extproc_hook_duration_seconds",
                          "Time spent in a Processor hook, by phase.", ("processor", "phase"),
                          buckets=HOOK_BUCKETS, registry=registry)
        self.hook = {phase: hooks.labels(processor, phase) for phase in PHASES}
        self._immediate = counter("extproc_immediate_responses_total",
                                  "Immediate responses sent to the client, by HTTP status and "
                                  "the phase that sent them.", ("processor", "phase", "status"))
        self._errors = counter("extproc_hook_errors_total",
                               "Hooks that raised (or returned something else than None or an "
                               "ImmediateResponse), by phase and outcome.",
                               ("processor", "phase", "outcome"))
        self.active = Gauge("extproc_active_streams", "Process streams in progress.",
                            ("processor",), registry=registry,
                            multiprocess_mode="livesum").labels(processor)
        body = counter("extproc_body_bytes_total", "Body bytes received from Envoy, by "
                       "direction.", ("processor", "direction"))
        self.body = {direction: body.labels(processor, direction)
                     for direction in ("request", "response")}
        self.serving = Gauge("extproc_serving", "1 while this server process's gRPC health "
                             "service says SERVING, 0 while it drains (summed over workers).",
                             registry=registry, multiprocess_mode="livesum")
        self.processor = processor
        self.registry = registry

    def immediate(self, phase: str, status: int) -> None:
        self._immediate.labels(self.processor, phase, str(status)).inc()

    def error(self, phase: str, outcome: str) -> None:
        self._errors.labels(self.processor, phase, outcome).inc()

    def finished(self, code: str) -> Any:
        child = self.handled.get(code)
        if child is None:
            child = self.handled[code] = self._handled.labels(*_GRPC, code)
        return child


def new_registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry(auto_describe=True)


# -- multiprocess mode (workers > 1) -----------------------------------------------------------


def multiprocess_dir() -> str:
    """A fresh directory for the workers' metric files, named in the environment the workers
    inherit; the supervisor removes it with :func:`remove_multiprocess_dir`."""
    path = tempfile.mkdtemp(prefix="extproc-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_multiprocess_dir(path: str) -> None:
    if os.environ.get(MULTIPROC_ENV) == path:
        del os.environ[MULTIPROC_ENV]
    shutil.rmtree(path, ignore_errors=True)


def use_multiprocess_values() -> None:
    """In a forked worker: write values to the multiprocess files even when prometheus-client
    was imported before the directory was named (it picks its value class at import)."""
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def multiprocess_registry() -> Any:
    from prometheus_client import multiprocess

    registry = new_registry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def worker_gone(pid: int) -> None:
    """Drop a dead worker's live gauges (active streams, serving); its counters stay."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serving_workers(registry: Any) -> float:
    for metric in registry.collect():
        if metric.name == "extproc_serving":
            return float(sum(sample.value for sample in metric.samples))
    return 0.0
