"""Prometheus metrics of the ext_proc server, created only with ``admin``.

Values live in one flat array of doubles per server process, each metric (and label value) at
a fixed index, so recording is an add at a known index: no lock, no label lookup, no
prometheus-client object on the per-message path (its ``inc`` costs about 5x more here).
prometheus-client renders the text format at scrape time (:class:`Collector`).

With ``workers > 1`` every worker's array is a slot of one shared mapping that the
supervisor makes before it forks (:class:`SharedValues`), and one admin process sums the slots
at each scrape: one scrape shows every worker, live. The mapping is an anonymous memory file
(``memfd_create``; an anonymous mapping where there is none), not a file on a filesystem, so
a read-only root without a writable ``/tmp`` (how a sidecar runs) serves metrics as well; a
process that does not fork but starts another program (the pyvoy transport's Envoy, which
runs the processor) hands that program the file's descriptor, and the program maps its slot
(:func:`map_slot`). When a worker exits,
its counts move to a slot of their own and its slot starts empty for the worker that replaces
it, so counters never go down. Asking the workers at scrape time instead would lose the counts
of a worker that is draining or dead.

Each array also carries two values that are not metrics: the process id, and the heartbeat
(``time.monotonic()``, written by a task on the serving event loop) that the admin endpoint's
probes read to tell a live process from one whose loop is blocked.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._config import SERVICE_NAME

GRPC_LABELS = {"grpc_type": "bidi_stream",
               "grpc_service": SERVICE_NAME,
               "grpc_method": "Process"}
PHASES = ("request_headers", "request_body", "request_trailers", "response_headers",
          "response_body", "response_trailers")
DIRECTIONS = ("request", "response")
OUTCOMES = ("fail_open", "fail_closed")
CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
         "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
         "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
         "UNAUTHENTICATED")
STATUSES = range(100, 600)  # the HTTP statuses an immediate response can carry
# Hooks usually take micro- to milliseconds; a stream lasts as long as the HTTP request.
HOOK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0)
STREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                  30.0, 60.0)

# The layout of the array. PID and HEARTBEAT are not metrics (see the module docstring).
STARTED, RECEIVED, SENT, ACTIVE, SERVING, PID, HEARTBEAT = range(7)
HANDLED = 7
HANDLING = HANDLED + len(CODES)  # buckets (the last one +Inf), then the sum
HOOK = HANDLING + len(STREAM_BUCKETS) + 2  # per phase: buckets, +Inf, sum
_HOOK_SIZE = len(HOOK_BUCKETS) + 2
HOOK_SUM = _HOOK_SIZE - 1  # from a phase's base
ERRORS = HOOK + len(PHASES) * _HOOK_SIZE  # per phase, per outcome
IMMEDIATE = ERRORS + len(PHASES) * len(OUTCOMES)  # per phase, per status
BODY = IMMEDIATE + len(PHASES) * len(STATUSES)  # per direction
EXTENDED = BODY + len(DIRECTIONS)  # per phase
SIZE = EXTENDED + len(PHASES)
_BYTES = SIZE * 8


def private_values() -> Any:
    """An array of values of this process's own (a memoryview of doubles)."""
    return memoryview(bytearray(_BYTES)).cast("d")


@dataclass(frozen=True)
class Slot:
    """One process's values in a :class:`SharedValues`: ``values`` (a memoryview of doubles),
    and where they are: at byte ``offset`` of the memory file ``fd``."""

    values: Any
    fd: int
    offset: int


def map_slot(fd: int, offset: int) -> Any:
    """In another program given ``fd`` (a :class:`SharedValues`' memory file): the values at
    ``offset``, mapped shared (a memoryview of doubles)."""
    mapping = mmap.mmap(fd, os.fstat(fd).st_size)
    if not 0 <= offset <= len(mapping) - _BYTES:
        raise ValueError(f"metrics slot at {offset} is outside the shared values")
    return memoryview(mapping)[offset:offset + _BYTES].cast("d")


class Metrics:
    """One process's values (``values``: a memoryview of doubles), written by the recorder:
    ``slot`` (a :class:`Slot` of :class:`SharedValues`, or such values mapped by another
    program), or an array of its own."""

    def __init__(self, processor: str, slot: Slot | Any = None) -> None:
        self.processor = processor
        # a memoryview of doubles (typed Any: typeshed's memoryview is of ints)
        self.values: Any = (private_values() if slot is None
                            else slot.values if isinstance(slot, Slot) else slot)
        self.values[PID] = os.getpid()
        self.code_index = {code: HANDLED + i for i, code in enumerate(CODES)}
        self.hook_index = {phase: HOOK + i * _HOOK_SIZE for i, phase in enumerate(PHASES)}
        self.body_index = {direction: BODY + i for i, direction in enumerate(DIRECTIONS)}

    def observe_hook(self, phase: str, seconds: float) -> None:
        base = self.hook_index[phase]
        values = self.values
        values[base + bisect_left(HOOK_BUCKETS, seconds)] += 1
        values[base + _HOOK_SIZE - 1] += seconds

    def finished(self, code: str, seconds: float, received: int, sent: int) -> None:
        values = self.values
        values[self.code_index.get(code, HANDLED + 2)] += 1  # 2: UNKNOWN
        values[RECEIVED] += received
        values[SENT] += sent
        values[HANDLING + bisect_left(STREAM_BUCKETS, seconds)] += 1
        values[HANDLING + len(STREAM_BUCKETS) + 1] += seconds
        values[ACTIVE] -= 1

    def immediate(self, phase: str, status: int) -> None:
        if status in STATUSES:
            self.values[IMMEDIATE + PHASES.index(phase) * len(STATUSES) + status - 100] += 1

    def error(self, phase: str, outcome: str) -> None:
        self.values[ERRORS + PHASES.index(phase) * len(OUTCOMES) + OUTCOMES.index(outcome)] += 1

    def extended(self, phase: str) -> None:
        self.values[EXTENDED + PHASES.index(phase)] += 1


class Collector:
    """The prometheus-client collector of one process's values, or of every worker's
    (``shared``, workers > 1)."""

    def __init__(self, processor: str, metrics: Metrics | None = None,
                 shared: SharedValues | None = None) -> None:
        self.processor = processor
        self.metrics = metrics
        self.shared = shared

    def totals(self) -> list[float]:
        if self.shared is not None:
            return self.shared.totals()
        assert self.metrics is not None
        return list(self.metrics.values)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        v = self.totals()
        grpc_names, grpc_values = list(GRPC_LABELS), list(GRPC_LABELS.values())
        processor = self.processor

        def counter(name: str, doc: str, value: float) -> Any:
            family = CounterMetricFamily(name, doc, labels=grpc_names)
            family.add_metric(grpc_values, value)
            return family

        yield counter("grpc_server_started_total", "Process streams started.", v[STARTED])
        handled = CounterMetricFamily("grpc_server_handled_total",
                                      "Process streams finished, by gRPC status code.",
                                      labels=[*grpc_names, "grpc_code"])
        for i, code in enumerate(CODES):
            if v[HANDLED + i] or code == "OK":
                handled.add_metric([*grpc_values, code], v[HANDLED + i])
        yield handled
        yield counter("grpc_server_msg_received_total", "ProcessingRequest messages received.",
                      v[RECEIVED])
        yield counter("grpc_server_msg_sent_total", "ProcessingResponse messages sent.",
                      v[SENT])
        handling = HistogramMetricFamily(
            "grpc_server_handling_seconds", "Duration of Process streams (one HTTP request).",
            labels=grpc_names)
        handling.add_metric(grpc_values, *_histogram(v, HANDLING, STREAM_BUCKETS))
        yield handling
        hooks = HistogramMetricFamily("extproc_hook_duration_seconds",
                                      "Time spent in a Processor hook, by phase.",
                                      labels=["processor", "phase"])
        for i, phase in enumerate(PHASES):
            hooks.add_metric([processor, phase],
                             *_histogram(v, HOOK + i * _HOOK_SIZE, HOOK_BUCKETS))
        yield hooks
        immediate = CounterMetricFamily(
            "extproc_immediate_responses_total",
            "Immediate responses sent to the client, by HTTP status and the phase that sent "
            "them (a failed hook's error_status included).",
            labels=["processor", "phase", "status"])
        for p, phase in enumerate(PHASES):
            for s, status in enumerate(STATUSES):
                count = v[IMMEDIATE + p * len(STATUSES) + s]
                if count:
                    immediate.add_metric([processor, phase, str(status)], count)
        yield immediate
        errors = CounterMetricFamily(
            "extproc_hook_errors_total", "Hooks that raised (or returned something else than "
            "None or an ImmediateResponse), by phase and outcome.",
            labels=["processor", "phase", "outcome"])
        for p, phase in enumerate(PHASES):
            for o, outcome in enumerate(OUTCOMES):
                count = v[ERRORS + p * len(OUTCOMES) + o]
                if count:
                    errors.add_metric([processor, phase, outcome], count)
        yield errors
        active = GaugeMetricFamily("extproc_active_streams", "Process streams in progress.",
                                   labels=["processor"])
        active.add_metric([processor], v[ACTIVE])
        yield active
        body = CounterMetricFamily("extproc_body_bytes_total",
                                   "Body bytes received from Envoy, by direction.",
                                   labels=["processor", "direction"])
        for i, direction in enumerate(DIRECTIONS):
            body.add_metric([processor, direction], v[BODY + i])
        yield body
        extended = CounterMetricFamily(
            "extproc_timeouts_extended_total", "Message timeouts a hook extended "
            "(extend_timeout), by phase.", labels=["processor", "phase"])
        for i, phase in enumerate(PHASES):
            if v[EXTENDED + i]:
                extended.add_metric([processor, phase], v[EXTENDED + i])
        yield extended
        yield GaugeMetricFamily("extproc_serving", "Server processes whose gRPC health "
                                "service says SERVING (0 while draining).", value=v[SERVING])


def _histogram(v: list[float], base: int,
               bounds: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative ``(le, count)`` buckets and the sum, from per-bucket counts at ``base``."""
    buckets, total = [], 0.0
    for i, bound in enumerate((*bounds, float("inf"))):
        total += v[base + i]
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return buckets, v[base + len(bounds) + 1]


def registry(collector: Collector) -> Any:
    from prometheus_client import CollectorRegistry

    made = CollectorRegistry(auto_describe=False)
    made.register(collector)
    return made


# -- workers > 1 ------------------------------------------------------------------------------

# Values that describe a process now rather than count what it did: not summed into the counts
# a worker leaves behind when it exits.
_NOT_COUNTS = (ACTIVE, SERVING, PID, HEARTBEAT)
_HEADER = 64  # the sequence number of moves (see SharedValues.retire), padded


def _memory_file(size: int) -> int:
    """An anonymous memory file of ``size`` bytes, or -1 where there is none."""
    create = getattr(os, "memfd_create", None)
    if create is None:
        return -1
    try:
        fd: int = create("extproc-metrics", os.MFD_CLOEXEC)
    except OSError:
        return -1
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        return -1
    return fd


class SharedValues:
    """Every worker's array in one shared mapping of an anonymous memory file, made before the
    supervisor forks, so the workers and the admin process all see it (and a program a worker
    starts, given ``fd``). Slot 0 holds the counts of workers that exited, slot ``1 + i``
    worker ``i``'s values."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        size = _HEADER + (workers + 1) * _BYTES
        self.fd = _memory_file(size)
        # without a memory file (not Linux, or a sandbox refusing it): an anonymous mapping,
        # which forked processes share all the same (fd -1: no program can be handed it)
        self._map = mmap.mmap(self.fd, size)
        view = memoryview(self._map)
        self._sequence = view[:8].cast("Q")
        self._slots: list[Any] = [view[_HEADER + i * _BYTES:_HEADER + (i + 1) * _BYTES].cast("d")
                       for i in range(workers + 1)]

    def slot(self, worker: int) -> Slot:
        """Worker ``worker``'s values (what its :class:`Metrics` writes)."""
        return Slot(self._slots[1 + worker], self.fd, _HEADER + (1 + worker) * _BYTES)

    def retire(self, worker: int) -> None:
        """Worker ``worker`` exited (the supervisor reaped it): its counts join those of
        earlier workers, its slot is emptied for the next one. A reader that overlaps the
        move sees the sequence change and reads again, so a scrape never counts twice."""
        slot, retired = self._slots[1 + worker], self._slots[0]
        self._sequence[0] += 1  # odd: moving
        for i, value in enumerate(slot):
            if value and i not in _NOT_COUNTS:
                retired[i] += value
        offset = _HEADER + (1 + worker) * _BYTES
        self._map[offset:offset + _BYTES] = bytes(_BYTES)
        self._sequence[0] += 1

    def totals(self) -> list[float]:
        """The sum over every slot (the not-count values of live workers only)."""
        for _ in range(1000):  # a move takes microseconds; bounded all the same
            before = self._sequence[0]
            totals = list(self._slots[0])
            for slot in self._slots[1:]:
                for i, value in enumerate(slot):
                    if value:
                        totals[i] += value
            if before % 2 == 0 and self._sequence[0] == before:
                break
        totals[PID] = totals[HEARTBEAT] = 0.0
        return totals

    def close(self) -> None:
        self._slots.clear()
        self._sequence.release()
        with contextlib.suppress(BufferError):
            self._map.close()
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
