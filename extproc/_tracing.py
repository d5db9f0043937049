"""OpenTelemetry traces (the ``envoy-extkit[otel]`` extra), configured only from ``OTEL_*``.

Tracing is on when the application has installed a TracerProvider of its own, or when
``OTEL_TRACES_EXPORTER`` or an OTLP endpoint variable is set (and ``OTEL_SDK_DISABLED`` is
not ``true``). The SDK itself reads the service name (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``), the sampler (``OTEL_TRACES_SAMPLER[_ARG]``), the batch
settings (``OTEL_BSP_*``), the exporter's endpoint, headers and protocol
(``OTEL_EXPORTER_OTLP_*``) and the propagators (``OTEL_PROPAGATORS``).

Parent context: the ``Process`` stream's gRPC metadata, where Envoy puts the context of its
ext_proc span when its HTTP connection manager traces; the HTTP request's own headers
(``traceparent``) when the metadata carries none. The request header is never preferred:
when Envoy traces, the header still holds the client's span (Envoy's router rewrites it only
for the upstream), an ancestor of the span the metadata names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ServeError

logger = logging.getLogger("extproc.tracing")

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def requested() -> bool:
    """Whether ``OTEL_*`` asks for spans to be exported (whatever is installed)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return exporters != "none" and bool(exporters or any(os.environ.get(e) for e in _ENDPOINTS))


def tracer() -> Any | None:
    """The tracer spans are made with, or None when tracing is off (or not installed)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    try:
        from opentelemetry import trace
    except ImportError:
        if exporters and exporters != "none":
            raise ServeError("OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed: "
                             "pip install 'envoy-extkit[otel]'") from None
        return None
    provider = trace.get_tracer_provider()
    if not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return provider.get_tracer("extproc")  # the application configured tracing itself
    if not requested():
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    sdk_provider = TracerProvider()
    for name in (exporters or "otlp").split(","):
        sdk_provider.add_span_processor(BatchSpanProcessor(_exporter(name.strip())))
    trace.set_tracer_provider(sdk_provider)
    logger.info("tracing: exporting spans with %s", exporters or "otlp")
    return trace.get_tracer("extproc")


def _exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ServeError(f"OTEL_TRACES_EXPORTER={name!r}: envoy-extkit exports with otlp, "
                         "console or none")
    _check_otlp_protos()
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )
    except ImportError:
        raise ServeError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: install "
                         "opentelemetry-exporter-otlp-proto-http") from None
    return HttpExporter()


def parent(metadata: Iterable[tuple[str, Any]] | None, headers: Any) -> Any:
    """The context a stream's span starts in: from the gRPC metadata, else from the HTTP
    request headers (an ``extproc.Headers`` or None), else a new trace."""
    from opentelemetry import propagate, trace

    if metadata:
        carrier: Mapping[str, Any] = {k: v for k, v in metadata if isinstance(v, str)}
        context = propagate.extract(carrier)
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
    if headers is not None:
        return propagate.extract(headers.to_dict())
    return None


def _check_otlp_protos() -> None:
    """xds-protos ships an older copy of the OpenTelemetry protos (Envoy's API uses them) at
    the same paths as opentelemetry-proto: whichever wheel pip unpacked last wins, and the OTLP
    exporter cannot encode spans with the older one. Say so instead of exporting nothing."""
    from opentelemetry.proto.trace.v1 import trace_pb2

    if "scope_spans" not in trace_pb2.ResourceSpans.DESCRIPTOR.fields_by_name:
        from importlib.metadata import version

        raise ServeError(
            "the OpenTelemetry protos on sys.path are xds-protos' older copy, which the OTLP "
            "exporter cannot use: reinstall opentelemetry-proto over it (pip install "
            f"--force-reinstall --no-deps opentelemetry-proto=={version('opentelemetry-proto')})")
