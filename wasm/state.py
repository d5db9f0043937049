"""State the host keeps across calls for the emulator: shared data and metrics, with Envoy's
rules (one CAS counter for all keys; metric ids that carry their type)."""

from __future__ import annotations

from .abi import MetricType, Status

_TYPE_MASK = 3
_ID_STEP = 4


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
