"""What the host keeps for a loaded plugin, read and changed by the host functions: the
plugin's configuration and log, shared data and metrics (with Envoy's rules: one CAS counter
for all keys; metric ids that carry their type), shared queues, callouts waiting for their
upstream, and the state of each HTTP stream."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from extproc.exchange import LocalReply

from .abi import LogLevel, MapType, MetricType, Status
from .calls import Answer, Call, GrpcStream, ScriptedUpstream
from .configured import Configured
from .headers import HeaderMap

ROOT_CONTEXT_ID = 1
# Callout tokens: the two low bits give the kind, each kind counts in fours from its own.
HTTP_CALL, GRPC_CALL, GRPC_STREAM = 0, 1, 2
KIND_MASK = 3


def token_numbers(kind: int) -> Iterator[int]:
    """The tokens of ``kind`` in the order proxy-wasm-cpp-host hands them out (HTTP calls
    4, 8, ...; gRPC calls 5, 9, ...; gRPC streams 6, 10, ...)."""
    return itertools.count(kind + KIND_MASK + 1, KIND_MASK + 1)
_TYPE_MASK = 3
_ID_STEP = 4

ForeignFunction = Callable[[bytes], bytes]


@dataclass(frozen=True)
class LogLine:
    level: LogLevel
    message: str
    context_id: int


@dataclass
class LocalResponse(LocalReply):
    """What the filter answered with ``proxy_send_local_response`` (``details``: Envoy's
    response code details, whitespace turned into ``_`` as Envoy does)."""

    grpc_status: int | None = None


@dataclass
class StreamState:
    """One HTTP stream as the host holds it. Envoy lends the filter a header map only during
    the callback for it (and, read-only, during ``proxy_on_log``); so does the emulator."""

    context_id: int
    maps: dict[MapType, HeaderMap] = field(default_factory=dict)
    live: set[MapType] = field(default_factory=set)
    paused_maps: set[MapType] = field(default_factory=set)
    """Maps of a phase the filter stopped: Envoy still lends them (to a callout's reply)."""
    logging: bool = False
    buffers: dict[str, bytes] = field(default_factory=lambda: {"request": b"", "response": b""})
    held: dict[str, bytes] = field(default_factory=lambda: {"request": b"", "response": b""})
    local_response: LocalResponse | None = None
    continued: set[str] = field(default_factory=set)
    reset: bool = False
    finishing: bool = False
    response_started: bool = False
    response_code: int | None = None
    filter_state: dict[bytes, bytes] = field(default_factory=dict)
    route_cache_cleared: int = 0
    # what the stream's properties are read from (wasm.properties)
    started: tuple[int, int] | None = None
    """When the request headers came: (wall clock, monotonic clock), in nanoseconds."""
    received: int = 0
    """Request body bytes that came from the client."""
    sent: int = 0
    """Response body bytes that went to the client."""
    upstream_reached: bool = False
    upstream_ended: bool = False
    """The upstream's answer has all come (what ``response.backend_latency`` waits for)."""
    code_details: str | None = None
    """Envoy's response code details for a local response (``response.code_details``)."""

    def map_for(self, kind: MapType, write: bool) -> HeaderMap | None:
        if kind in self.live or kind in self.paused_maps or (self.logging and not write):
            return self.maps.get(kind)
        return None

    def send_local_response(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                            details: str, grpc_status: int | None) -> None:
        self.local_response = LocalResponse(
            status=status, headers=HeaderMap(headers, MapType.RESPONSE_HEADERS).text(),
            body=body, details=details, grpc_status=grpc_status)
        self.code_details = details


class SharedData:
    def __init__(self) -> None:
        self.entries: dict[bytes, tuple[bytes, int]] = {}
        self._cas = 0

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        return self.entries.get(key)

    def set(self, key: bytes, value: bytes, cas: int) -> Status:
        current = self.entries.get(key)
        if cas and current is not None and current[1] != cas:
            return Status.CAS_MISMATCH
        self._cas = (self._cas + 1) & 0xFFFFFFFF or 1  # one counter for every key; never 0
        self.entries[key] = (value, self._cas)
        return Status.OK


class SharedQueues:
    """Queues by (vm id, name), as proxy-wasm-cpp-host keeps them: tokens from 1, registering
    a name again hands back its token, and each enqueue wakes the context that registered it
    (``proxy_on_queue_ready``)."""

    def __init__(self) -> None:
        self.tokens: dict[tuple[str, str], int] = {}
        self.items: dict[int, deque[bytes]] = {}
        self.owners: dict[int, int] = {}

    def register(self, vm_id: str, name: str, context_id: int) -> int:
        token = self.tokens.get((vm_id, name))
        if token is None:
            token = len(self.tokens) + 1
            self.tokens[(vm_id, name)] = token
            self.items[token] = deque()
        self.owners[token] = context_id
        return token

    def resolve(self, vm_id: str, name: str) -> int | None:
        return self.tokens.get((vm_id, name))

    def contents(self, name: str, vm_id: str = "") -> list[bytes]:
        """What a queue holds now (for tests)."""
        token = self.tokens.get((vm_id, name))
        return list(self.items[token]) if token is not None else []


class Metrics:
    """Values by name; every definition hands out a fresh id whose low bits are the type."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.kinds: dict[str, MetricType] = {}
        self.values: dict[str, int] = {}
        self.samples: dict[str, list[int]] = {}
        self._next = 0

    def define(self, kind: MetricType, name: str) -> int:
        self._next += 1
        metric_id = self._next * _ID_STEP + int(kind)
        self.names[metric_id] = name
        self.kinds.setdefault(name, kind)
        self.values.setdefault(name, 0)
        self.samples.setdefault(name, [])
        return metric_id

    def _lookup(self, metric_id: int) -> tuple[MetricType, str] | Status:
        name = self.names.get(metric_id)
        if name is None:
            return Status.NOT_FOUND if metric_id & _TYPE_MASK < 2 else Status.BAD_ARGUMENT
        return MetricType(metric_id & _TYPE_MASK), name

    def increment(self, metric_id: int, offset: int) -> Status:
        found = self._lookup(metric_id)
        if isinstance(found, Status):
            return found
        kind, name = found
        if kind == MetricType.HISTOGRAM or (kind == MetricType.COUNTER and offset <= 0):
            return Status.BAD_ARGUMENT
        self.values[name] += offset
        return Status.OK

    def record(self, metric_id: int, value: int) -> Status:
        found = self._lookup(metric_id)
        if isinstance(found, Status):
            return found
        kind, name = found
        if kind == MetricType.HISTOGRAM:
            self.samples[name].append(value)
        elif kind == MetricType.COUNTER:
            self.values[name] += value  # Envoy adds to a counter
        else:
            self.values[name] = value
        return Status.OK

    def value_of(self, metric_id: int) -> tuple[Status, int]:
        found = self._lookup(metric_id)
        if isinstance(found, Status):
            return found, 0
        kind, name = found
        if kind == MetricType.HISTOGRAM:
            return Status.BAD_ARGUMENT, 0  # Envoy keeps no single value for a histogram
        return Status.OK, self.values[name]

    def snapshot(self) -> dict[str, int | list[int]]:
        return {name: (self.samples[name] if kind == MetricType.HISTOGRAM
                       else self.values[name]) for name, kind in self.kinds.items()}


@dataclass(frozen=True)
class DeclaredProperty:
    """A property declared through Envoy's ``declare_property`` foreign function. Envoy
    keeps its value as filter state of the stream (whatever the life span, in the emulator:
    one request is one stream on its own connection); read-only: set once per stream."""

    name: bytes
    readonly: bool
    type: int
    """0 bytes, 1 string, 2 FlatBuffers, 3 protobuf (the value is kept as given)."""
    span: int
    """0 filter chain, 1 downstream request, 2 downstream connection."""


@dataclass
class PluginState:
    """Everything the host functions read or change, for one loaded plugin."""

    plugin_configuration: bytes = b""
    vm_configuration: bytes = b""
    root_id: str = ""
    plugin_name: str = "plugin"
    vm_id: str = ""
    properties: dict[tuple[bytes, ...], bytes] = field(default_factory=dict)
    """Properties given as they are, by exact path (wasm.properties)."""
    configured: Configured = field(default_factory=Configured)
    """Properties Envoy's configuration sets, where Envoy keeps them (wasm.configured)."""
    log_level: LogLevel = LogLevel.INFO
    clock: Callable[[], int] = time.time_ns
    monotonic: Callable[[], int] = time.monotonic_ns
    upstreams: Mapping[str, ScriptedUpstream] = field(default_factory=dict)
    foreign_functions: dict[str, ForeignFunction] = field(default_factory=dict)
    declared: dict[bytes, DeclaredProperty] = field(default_factory=dict)
    """Properties declared from the root context (the ones Envoy's set_property checks)."""
    logs: list[LogLine] = field(default_factory=list)
    shared_data: SharedData = field(default_factory=SharedData)
    metrics: Metrics = field(default_factory=Metrics)
    queues: SharedQueues = field(default_factory=SharedQueues)
    tick_period_ms: int = 0
    phase: str = ""
    """``root_create``, ``vm_start`` or ``configure`` while starting: which configuration
    buffer Envoy lends."""
    current_callback: str = ""
    context_id: int = ROOT_CONTEXT_ID
    stream: StreamState | None = None
    """The effective context's stream (None for the root context)."""
    streams: dict[int, StreamState] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    """Every callout made, in order, with its reply once answered."""
    grpc_streams: dict[int, GrpcStream] = field(default_factory=dict)
    """Every gRPC stream opened, by token (kept after it ends: tests read them)."""
    pending: deque[tuple[str, int, int]] = field(default_factory=deque)
    """Events Envoy would deliver once the running callback returns: ("http" or "grpc",
    token, context id) for a callout's reply, ("queue", token, context id) for
    ``proxy_on_queue_ready``, ("stream", token, context id) for what a gRPC stream's two
    ends did."""
    delivering: bool = False
    max_events: int = 100_000
    """Events delivered after one callback before the emulator calls it a loop (a filter and
    a scripted upstream answering each other forever) and raises HostError."""
    drain: Callable[[], None] | None = None
    """Delivers the pending events (set by the emulator): run when something happens
    between callbacks, such as a test sending on a gRPC stream."""
    answer: Answer | None = None
    """A callout's reply while the filter's callback for it runs."""
    status: tuple[int, str] = (0, "")
    """What ``proxy_get_status`` reports (a callout's failure or a gRPC status)."""
    tokens: dict[int, Iterator[int]] = field(default_factory=lambda: {
        kind: token_numbers(kind) for kind in (HTTP_CALL, GRPC_CALL, GRPC_STREAM)})
    """The tokens still to hand out, by kind."""

    def log(self, level: LogLevel, message: str) -> None:
        self.logs.append(LogLine(level, message, self.context_id))

    def set_effective_context(self, context_id: int) -> bool:
        if context_id != ROOT_CONTEXT_ID and context_id not in self.streams:
            return False
        self.context_id = context_id
        self.stream = self.streams.get(context_id)
        return True

    def root_context_of(self, context_id: int) -> int:
        return ROOT_CONTEXT_ID  # the emulator runs one root context

    def next_token(self, kind: int) -> int:
        return next(self.tokens[kind])

    def wake(self, stream: GrpcStream) -> None:
        """A gRPC stream has events for one end or the other: delivered after the running
        callback, or now when nothing runs."""
        event = ("stream", stream.token, stream.context_id)
        if event not in self.pending:  # one turn takes all of a stream's events
            self.pending.append(event)
        if not self.current_callback and not self.delivering and self.drain is not None:
            self.drain()

    def call(self, kind: str, token: int) -> Call | None:
        return next((c for c in reversed(self.calls) if c.token == token and c.kind == kind),
                    None)
