"""What bench/run.py measures: the scenarios, their candidates (who serves ext_proc, in which
mode, compared with whom), the targets, and a sample's figures."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import procs

import extproc
from extproc import ProcessingMode

ENVOY_DEFAULT = ProcessingMode(request_headers=True, response_headers=True)
MIB = 1024 * 1024
STREAMED_BODY = (b"line with a secret in it, " * 41 + b"\n") * (MIB // (26 * 41 + 1) + 1)
STREAMED_BODY = STREAMED_BODY[:MIB]


def _json_body(size: int) -> str:
    """A JSON document of exactly ``size`` bytes."""
    items: list[dict[str, Any]] = []
    while len(json.dumps({"items": items, "pad": ""})) < size - 64:
        items.append({"id": len(items), "name": f"item-{len(items)}", "tags": ["a", "b"]})
    pad = size - len(json.dumps({"items": items, "pad": ""}))
    return json.dumps({"items": items, "pad": "x" * pad})


BUFFERED_BODY = _json_body(64 * 1024)


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    server: str | None  # "minimal:WORK", "go:WORK", "extkit:module:Class", "module:module:Class"
    # (the class inside Envoy, the dynamic module), or None: Envoy alone
    processor: type | None = None  # whose processing mode Envoy uses (None: Envoy alone)
    mode: ProcessingMode | None = None  # overrides the class's derived mode
    workers: int = 1
    args: tuple[str, ...] = ()  # more `extctl serve` options
    env: tuple[tuple[str, str], ...] = ()  # more environment variables
    baseline: bool = False  # serve with the --baseline revision's code
    transport: str = "grpcio"
    reference: str = "go"  # the Go candidate this one's figures are divided by


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    candidates: tuple[Candidate, ...]
    ratios: tuple[tuple[str, str], ...]  # (candidate, against)
    upstream_body: bytes | None = None  # an upstream answering this; None: direct_response
    post_body: str | None = None  # wrk POSTs this
    connections: int = 16
    throughput: bool = False  # report MB/s of upstream_body
    note: str = ""


def _minimal(work: str, mode: ProcessingMode, description: str, name: str,
             reference: str = "go") -> Candidate:
    return Candidate(name, description, f"minimal:{work}", procs.BothHeaders, mode,
                     reference=reference)


def _go(work: str, mode: ProcessingMode, description: str = "", name: str = "go") -> Candidate:
    description = description or "Go, grpc-go (bench/go_extproc.go): the compiled reference"
    return Candidate(name, description, f"go:{work}", procs.BothHeaders, mode, reference=name)


def _extkit(cls: type, description: str, name: str, workers: int = 1,
            **options: Any) -> Candidate:
    return Candidate(name, description, f"extkit:procs:{cls.__name__}", cls, workers=workers,
                     **options)


def _pyvoy(cls: type, description: str, name: str = "extkit-pyvoy") -> Candidate:
    return _extkit(cls, description + ", pyvoy transport", name, transport="pyvoy")


def _module(cls: type, description: str, name: str = "extkit-module") -> Candidate:
    """The class inside the Envoy under test (the dynamic module): no server; its CPU is in
    Envoy's column."""
    return Candidate(name, description + ", inside Envoy (dynamic module)",
                     f"module:procs:{cls.__name__}", cls)


ENVOY = Candidate("envoy", "Envoy alone (no ext_proc filter): the ceiling", None)
REQUEST_ONLY = ProcessingMode(request_headers=True, response_headers=False)
STREAMED_MODE = ProcessingMode(request_headers=False, response_headers=False,
                               response_body=procs.StreamedRewrite.response_body_mode)
BUFFERED_MODE = ProcessingMode(request_headers=False, response_headers=False,
                               request_body=procs.BufferedJson.request_body_mode)
SCENARIOS = (
    Scenario(
        "headers",
        "Headers: one header set per phase; Envoy answers with direct_response",
        (
            ENVOY,
            _go("headers", ENVOY_DEFAULT),
            _minimal("headers", ENVOY_DEFAULT, "minimal grpc.aio servicer, Envoy's default "
                     "mode (request and response headers)", "minimal"),
            _extkit(procs.BothHeaders, "envoy-extkit doing the same (derived mode: request "
                    "and response headers)", "extkit"),
            _pyvoy(procs.BothHeaders, "envoy-extkit, request and response headers"),
            _go("headers", REQUEST_ONLY, "Go reference, request headers only", "go-req"),
            _extkit(procs.RequestHeader, "envoy-extkit request-headers-only processor "
                    "(derived mode: request headers only)", "extkit-req", reference="go-req"),
            _minimal("headers", REQUEST_ONLY, "minimal servicer, request headers only (for "
                     "reference)", "minimal-req", reference="go-req"),
        ),
        ratios=(("extkit", "minimal"), ("extkit-req", "minimal"),
                ("extkit-req", "minimal-req"), ("extkit-pyvoy", "minimal"),
                ("extkit-pyvoy", "extkit")),
    ),
    Scenario(
        "observability",
        "Observability: the headers workload (both headers) without and with --admin, with "
        "tracing, and with the --baseline revision's code",
        (
            _go("headers", ENVOY_DEFAULT),
            _extkit(procs.BothHeaders, "envoy-extkit as of the --baseline revision",
                    "extkit-base", baseline=True),
            _extkit(procs.BothHeaders, "envoy-extkit, no --admin, no tracing", "extkit"),
            _extkit(procs.BothHeaders, "envoy-extkit with --admin (Prometheus metrics "
                    "recorded per stream and hook)", "extkit-admin",
                    args=("--admin", "127.0.0.1:0")),
            _extkit(procs.BothHeaders, "envoy-extkit with tracing on (every request sampled, "
                    "a span per stream and hook, console exporter to /dev/null)",
                    "extkit-otel", env=(("OTEL_TRACES_EXPORTER", "console"),)),
        ),
        ratios=(("extkit-admin", "extkit"), ("extkit", "extkit-base"),
                ("extkit-otel", "extkit")),
    ),
    Scenario(
        "workers",
        "Workers: envoy-extkit with 2 worker processes next to 1 (headers as above)",
        (
            _go("headers", ENVOY_DEFAULT, "Go reference (one process, GOMAXPROCS = 2 CPUs)"),
            _minimal("headers", ENVOY_DEFAULT, "minimal servicer (one process)", "minimal"),
            _extkit(procs.BothHeaders, "envoy-extkit, 1 worker", "extkit-1"),
            _extkit(procs.BothHeaders, "envoy-extkit, 2 workers", "extkit-2", workers=2),
        ),
        ratios=(("extkit-2", "extkit-1"), ("extkit-2", "minimal"), ("extkit-1", "minimal")),
        note="2 CPUs are shared by Envoy, wrk and the workers, so 2 workers cannot double.",
    ),
    Scenario(
        "streamed",
        "STREAMED: 1 MiB responses from an upstream, every chunk rewritten",
        (
            Candidate("envoy", "Envoy alone, same upstream", None),
            _go("streamed", STREAMED_MODE, "Go reference rewriting each chunk"),
            _minimal("streamed", STREAMED_MODE, "minimal servicer rewriting each chunk",
                     "minimal"),
            _extkit(procs.StreamedRewrite, "envoy-extkit rewriting each chunk", "extkit"),
            _pyvoy(procs.StreamedRewrite, "envoy-extkit rewriting each chunk"),
            _module(procs.StreamedRewrite, "envoy-extkit rewriting each chunk"),
        ),
        ratios=(("extkit", "minimal"), ("extkit-pyvoy", "minimal"), ("extkit-pyvoy", "extkit")),
        upstream_body=STREAMED_BODY,
        connections=4,
        throughput=True,
    ),
    Scenario(
        "buffered",
        "BUFFERED: 64 KiB JSON request bodies, a field added, sent upstream",
        (
            Candidate("envoy", "Envoy alone, same upstream", None),
            _go("buffered", BUFFERED_MODE, "Go reference rewriting the JSON (encoding/json)"),
            _minimal("buffered", BUFFERED_MODE, "minimal servicer rewriting the JSON", "minimal"),
            _extkit(procs.BufferedJson, "envoy-extkit rewriting the JSON", "extkit"),
            _pyvoy(procs.BufferedJson, "envoy-extkit rewriting the JSON"),
            _module(procs.BufferedJson, "envoy-extkit rewriting the JSON"),
        ),
        ratios=(("extkit", "minimal"), ("extkit-pyvoy", "minimal"), ("extkit-pyvoy", "extkit")),
        upstream_body=b"ok\n",
        post_body=BUFFERED_BODY,
    ),
    Scenario(
        "latency",
        "Latency at concurrency 1 (wrk -c1): what the processor adds to Envoy alone",
        (
            ENVOY,
            _go("headers", ENVOY_DEFAULT, "Go reference, both headers"),
            _minimal("headers", ENVOY_DEFAULT, "minimal servicer, both headers", "minimal"),
            _extkit(procs.BothHeaders, "envoy-extkit, both headers", "extkit"),
            _pyvoy(procs.BothHeaders, "envoy-extkit, both headers"),
            _go("headers", REQUEST_ONLY, "Go reference, request headers only", "go-req"),
            _extkit(procs.RequestHeader, "envoy-extkit, request headers only", "extkit-req",
                    reference="go-req"),
        ),
        ratios=(("extkit", "minimal"), ("extkit-pyvoy", "minimal")),
        connections=1,
    ),
)
USER_SCENARIOS = ("headers", "latency")  # what --processor runs unless --scenario says


def with_processor(scenario: Scenario, spec: str, cls: type[extproc.Processor]) -> Scenario:
    """``scenario`` with the user's class in every envoy-extkit row; the rows that exist to
    compare the benchmark's own processors (request headers only) left out, and the dynamic
    module's (it imports the benchmark's processors by name)."""
    candidates = []
    for candidate in scenario.candidates:
        if candidate.name in ("extkit-req", "minimal-req", "go-req", "extkit-module"):
            continue
        if candidate.server is not None and candidate.server.startswith("extkit:"):
            what = candidate.name.removeprefix("extkit").lstrip("-") or candidate.transport
            candidate = dataclasses.replace(
                candidate, server=f"extkit:{spec}", processor=cls,
                description=f"{spec} on envoy-extkit ({what})")
        candidates.append(candidate)
    names = {c.name for c in candidates}
    return dataclasses.replace(scenario, candidates=tuple(candidates), ratios=tuple(
        (a, b) for a, b in scenario.ratios if a in names and b in names))


def without(scenario: Scenario, kinds: set[str]) -> Scenario:
    """``scenario`` without the candidates served by ``kinds`` (``go``, ``pyvoy``)."""
    def kind(c: Candidate) -> str:
        return "pyvoy" if c.transport == "pyvoy" else (c.server or "").partition(":")[0]

    candidates = tuple(c for c in scenario.candidates if kind(c) not in kinds)
    names = {c.name for c in candidates}
    return dataclasses.replace(scenario, candidates=candidates, ratios=tuple(
        (a, b) for a, b in scenario.ratios if a in names and b in names))


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None  # the ext_proc server's, all its processes (None: no server)
    envoy_cpu_us: float | None = None  # the Envoy under test's (its upstream listener included)


# (label, scenario, candidate, against, metric, comparison, bound); metric: rps, cpu, p50 (ratios
# of medians) or p50_added (ms over the other candidate's p50)
Target = tuple[str, str, str, str, str, str, float]

TARGETS: tuple[Target, ...] = (
    # (label, scenario, candidate, against, metric, comparison, bound)
    ("goal: extkit (grpcio, the default) >= 0.6x Go's requests/s, both headers", "headers",
     "extkit", "go", "rps", ">=", 0.6),
    ("goal: extkit <= 3x Go's CPU per request, both headers", "headers", "extkit", "go", "cpu",
     "<=", 3.0),
    ("goal: extkit p50 at c=1 <= 1.3x Go's", "latency", "extkit", "go", "p50", "<=", 1.3),
    ("goal: STREAMED extkit >= 1.3x the minimal servicer's requests/s", "streamed", "extkit",
     "minimal", "rps", ">=", 1.3),
    ("goal: BUFFERED extkit >= 1.3x the minimal servicer's requests/s", "buffered", "extkit",
     "minimal", "rps", ">=", 1.3),
    ("goal, on pyvoy: >= 0.6x Go's requests/s, both headers", "headers", "extkit-pyvoy", "go",
     "rps", ">=", 0.6),
    ("goal, on pyvoy: <= 3x Go's CPU per request, both headers", "headers", "extkit-pyvoy", "go",
     "cpu", "<=", 3.0),
    ("goal, on pyvoy: p50 at c=1 <= 1.3x Go's", "latency", "extkit-pyvoy", "go", "p50", "<=",
     1.3),
    ("goal, on pyvoy: STREAMED >= 1.3x the minimal servicer's requests/s", "streamed",
     "extkit-pyvoy", "minimal", "rps", ">=", 1.3),
    ("goal, on pyvoy: BUFFERED >= 1.3x the minimal servicer's requests/s", "buffered",
     "extkit-pyvoy", "minimal", "rps", ">=", 1.3),
    ("(3) extkit >= 0.95x the minimal servicer's requests/s", "headers", "extkit", "minimal",
     "rps", ">=", 0.95),
    ("(3) extkit <= 1.05x the minimal servicer's CPU per request", "headers", "extkit",
     "minimal", "cpu", "<=", 1.05),
    ("(4) headers-only extkit >= 1.6x the minimal servicer in Envoy's default mode",
     "headers", "extkit-req", "minimal", "rps", ">=", 1.6),
    ("(6) STREAMED >= 0.9x the minimal servicer", "streamed", "extkit", "minimal", "rps", ">=",
     0.9),
    ("(7) BUFFERED >= 0.9x the minimal servicer", "buffered", "extkit", "minimal", "rps", ">=",
     0.9),
    ("(8) p50 added over Envoy alone <= 0.8 ms (extkit, both headers)", "latency", "extkit",
     "envoy", "p50_added", "<=", 0.8),
    ("(8) p50 added over Envoy alone <= 0.8 ms (extkit, request headers only)", "latency",
     "extkit-req", "envoy", "p50_added", "<=", 0.8),
    ("(obs) --admin <= 1.05x the CPU per request without it", "observability",
     "extkit-admin", "extkit", "cpu", "<=", 1.05),
    ("(obs) without --admin <= 1.02x the baseline's CPU per request (nothing changes)",
     "observability", "extkit", "extkit-base", "cpu", "<=", 1.02),
    # Whether the pyvoy transport becomes the default: all six must hold in one run.
    ("pyvoy default: headers >= 1.3x the minimal servicer's requests/s", "headers",
     "extkit-pyvoy", "minimal", "rps", ">=", 1.3),
    ("pyvoy default: headers <= 0.6x the minimal servicer's CPU per request", "headers",
     "extkit-pyvoy", "minimal", "cpu", "<=", 0.6),
    ("pyvoy default: STREAMED >= 1.3x the minimal servicer's requests/s", "streamed",
     "extkit-pyvoy", "minimal", "rps", ">=", 1.3),
    ("pyvoy default: STREAMED <= 0.6x the minimal servicer's CPU per request", "streamed",
     "extkit-pyvoy", "minimal", "cpu", "<=", 0.6),
    ("pyvoy default: BUFFERED >= 1.3x the minimal servicer's requests/s", "buffered",
     "extkit-pyvoy", "minimal", "rps", ">=", 1.3),
    ("pyvoy default: BUFFERED <= 0.6x the minimal servicer's CPU per request", "buffered",
     "extkit-pyvoy", "minimal", "cpu", "<=", 0.6),
)
