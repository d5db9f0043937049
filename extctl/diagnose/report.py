"""What the doctor found (:class:`Report`) and how it prints: the text report escapes every
non-printable character of what Envoy answered."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from registry.untrusted import escape


def safe(value: object, limit: int = 300) -> str:
    """Text from Envoy, safe for a terminal: non-printable characters escaped, bounded."""
    return escape(str(value), limit)


@dataclass(slots=True)
class Filter:
    """One HTTP filter of a listener's connection manager."""

    name: str
    kind: str
    """``envoy.filters.http.ext_proc``, ``envoy.filters.http.wasm``, or the filter's type."""
    disabled: bool
    """Installed but off unless a route turns it on (how Envoy Gateway installs policies)."""
    config: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(slots=True)
class Route:
    """One route and the HTTP filters that run on it, in order."""

    listener: str
    route_config: str
    virtual_host: str
    match: str
    filters: list[str]


@dataclass(slots=True)
class Endpoint:
    """One endpoint of an ext_proc cluster: Envoy's view, and a local processor's own word."""

    cluster: str
    address: str
    health: str
    """Envoy's view: ``healthy`` (its active health check passes, or a connection is open, and
    no connection attempt failed), ``reachable`` (connected after failed attempts),
    ``unhealthy``, ``unreachable``, ``pending``, ``unknown`` (not checked, no traffic), or
    Envoy's EDS health status in lower case."""
    detail: str
    """Why, in words."""
    active_connections: int
    connections: int
    connect_failures: int
    unix: bool = False
    """A Unix socket path (asked directly when it is on this machine)."""
    answer: str | None = None
    """What the processor answered the doctor's own ``grpc.health.v1`` Check (``SERVING``,
    ``NOT_SERVING``, ``UNREACHABLE (why)`` ...); None: not asked (not a local socket)."""


@dataclass
class WasmStatus:
    name: str
    source: str
    loaded: bool | None
    """None: Envoy does not say per module (see the report's notes)."""


@dataclass
class Report:
    """What the doctor found; ``problems`` empty means everything expected is there."""

    admin: str
    listeners: dict[str, list[Filter]] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    wasm: list[WasmStatus] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    mode: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        # Field by field: dataclasses.asdict would also copy each filter's whole config.
        return {
            "admin": self.admin,
            "listeners": {name: [{"name": f.name, "kind": f.kind, "disabled": f.disabled}
                                 for f in filters]
                          for name, filters in self.listeners.items()},
            "routes": [dataclasses.asdict(r) for r in self.routes],
            "endpoints": [dataclasses.asdict(e) for e in self.endpoints],
            "wasm": [dataclasses.asdict(w) for w in self.wasm],
            "counters": dict(self.counters), "mode": self.mode,
            "problems": list(self.problems), "notes": list(self.notes), "ok": self.ok}

    def text(self) -> str:
        lines = [f"Envoy admin {safe(self.admin)}"]
        for listener, filters in self.listeners.items():
            shown = [f"{safe(f.name)}{' (disabled)' if f.disabled else ''}" for f in filters]
            lines.append(f"listener {safe(listener)}: {', '.join(shown) or '(no HTTP filters)'}")
        for route in self.routes:
            lines.append(f"  route {safe(route.route_config)}/{safe(route.virtual_host)} "
                         f"{safe(route.match)}: {' -> '.join(map(safe, route.filters))}")
        for endpoint in self.endpoints:
            asked = "" if endpoint.answer is None else \
                f"; asked on its socket: {safe(endpoint.answer)}"
            lines.append(f"ext_proc cluster {safe(endpoint.cluster)}: "
                         f"{safe(endpoint.address)} {safe(endpoint.health, 40)} "
                         f"({safe(endpoint.detail)}), "
                         f"{endpoint.active_connections} open connection(s), "
                         f"{endpoint.connect_failures} failed connection attempt(s){asked}")
        for module in self.wasm:
            state = {True: "loaded", False: "NOT LOADED", None: "load state unknown"}
            lines.append(f"wasm {safe(module.name)} ({safe(module.source)}): "
                         f"{state[module.loaded]}")
        counted = {k: v for k, v in self.counters.items() if v}
        if counted:
            lines.append("counters: " + ", ".join(f"{safe(k)}={v}" for k, v in counted.items()))
        if self.mode is not None:
            verdict = "matches" if self.mode["match"] else "DIFFERS"
            lines.append(f"processing mode of {safe(self.mode['processor'])}: {verdict}")
        lines += [f"note: {safe(n, 500)}" for n in self.notes]
        lines += [f"problem: {safe(p, 500)}" for p in self.problems]
        lines.append("ok: everything expected is there" if self.ok else
                     f"{len(self.problems)} problem(s)")
        return "\n".join(lines) + "\n"
