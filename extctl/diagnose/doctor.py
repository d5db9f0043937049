"""What a running Envoy really does with the extensions: read from its admin endpoint.

    report = doctor("http://127.0.0.1:19000", processor=Redact, wasm=["tag"])
    print(report.text())          # report.ok: everything expected is there

From ``/config_dump``: which listeners carry ext_proc and Wasm filters, and which routes run
them, in their effective order (a filter that Envoy Gateway installs ``disabled`` runs only on
routes whose ``typed_per_filter_config`` turns it on; a route can also turn one off). From
``/clusters``: the ext_proc cluster's endpoints, their health and connections. From ``/stats``:
the ext_proc stream counters and Wasm's remote-load counters. With the processor class, the
processing mode Envoy has is compared with the one the class asks for.

Everything read is untrusted: bounded reads (:mod:`.admin`), and the text report escapes
control characters.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from extproc import ProcessingMode, Processor

from .admin import Admin

EXT_PROC = "envoy.filters.http.ext_proc"
WASM = "envoy.filters.http.wasm"
_KINDS = {
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor": EXT_PROC,
    "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm": WASM,
}
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
       "HttpConnectionManager"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _safe(value: object, limit: int = 300) -> str:
    """Text from Envoy, safe for a terminal: control characters escaped, bounded length."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class Filter:
    """One HTTP filter of a listener's connection manager."""

    name: str
    kind: str
    """``envoy.filters.http.ext_proc``, ``envoy.filters.http.wasm``, or the filter's type."""
    disabled: bool
    """Installed but off unless a route turns it on (how Envoy Gateway installs policies)."""
    config: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Route:
    """One route and the HTTP filters that run on it, in order."""

    listener: str
    route_config: str
    virtual_host: str
    match: str
    filters: list[str]


@dataclass
class Endpoint:
    cluster: str
    address: str
    health: str
    active_connections: int
    connections: int
    connect_failures: int


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
        data = dataclasses.asdict(self)
        data["listeners"] = {name: [{"name": f.name, "kind": f.kind, "disabled": f.disabled}
                                    for f in filters]
                             for name, filters in self.listeners.items()}
        data["ok"] = self.ok
        return data

    def text(self) -> str:
        lines = [f"Envoy admin {_safe(self.admin)}"]
        for listener, filters in self.listeners.items():
            shown = [f"{_safe(f.name)}{' (disabled)' if f.disabled else ''}" for f in filters]
            lines.append(f"listener {_safe(listener)}: {', '.join(shown) or '(no HTTP filters)'}")
        for route in self.routes:
            lines.append(f"  route {_safe(route.route_config)}/{_safe(route.virtual_host)} "
                         f"{_safe(route.match)}: {' -> '.join(map(_safe, route.filters))}")
        for endpoint in self.endpoints:
            lines.append(f"ext_proc cluster {_safe(endpoint.cluster)}: "
                         f"{_safe(endpoint.address)} {_safe(endpoint.health)}, "
                         f"{endpoint.active_connections} open connection(s), "
                         f"{endpoint.connect_failures} failed connection attempt(s)")
        for module in self.wasm:
            state = {True: "loaded", False: "NOT LOADED", None: "load state unknown"}
            lines.append(f"wasm {_safe(module.name)} ({_safe(module.source)}): "
                         f"{state[module.loaded]}")
        counted = {k: v for k, v in self.counters.items() if v}
        if counted:
            lines.append("counters: " + ", ".join(f"{_safe(k)}={v}" for k, v in counted.items()))
        if self.mode is not None:
            verdict = "matches" if self.mode["match"] else "DIFFERS"
            lines.append(f"processing mode of {_safe(self.mode['processor'])}: {verdict}")
        lines += [f"note: {_safe(n, 500)}" for n in self.notes]
        lines += [f"problem: {_safe(p, 500)}" for p in self.problems]
        lines.append("ok: everything expected is there" if self.ok else
                     f"{len(self.problems)} problem(s)")
        return "\n".join(lines) + "\n"


def doctor(admin: str | Admin, processor: type[Processor] | None = None,
           wasm: Sequence[str] = (), timeout: float = 10.0) -> Report:
    """Read Envoy's admin endpoint and diagnose it (see :func:`diagnose`)."""
    client = admin if isinstance(admin, Admin) else Admin(admin, timeout=timeout)
    return diagnose(client.json("/config_dump?include_eds"), client.text("/stats"),
                    client.json("/clusters?format=json"), processor=processor, wasm=wasm,
                    admin=client.url)


def diagnose(config_dump: Any, stats: str, clusters: Any,
             processor: type[Processor] | None = None, wasm: Sequence[str] = (),
             admin: str = "") -> Report:
    """The report from what the admin endpoint answered; ``processor`` and ``wasm`` (module
    names) are what must be there."""
    report = Report(admin)
    route_configs = _route_configs(config_dump)
    ext_proc: list[Filter] = []
    for listener, manager in _managers(config_dump):
        filters = [_filter(f) for f in _list(manager.get("http_filters"))]
        report.listeners[listener] = filters
        ext_proc += [f for f in filters if f.kind == EXT_PROC]
        for config_name, config in _manager_routes(manager, route_configs, report):
            report.routes += _routes(listener, config_name, config, filters)
    _check_filters(report, processor, wasm)
    counters = _counters(stats)
    report.counters = {k: v for k, v in counters.items()
                       if k.startswith(("ext_proc.", "wasm.remote_load"))}
    seen = set()
    for f in ext_proc:
        cluster = _dig(f.config, "grpc_service", "envoy_grpc", "cluster_name")
        if isinstance(cluster, str) and cluster not in seen:
            seen.add(cluster)
            _check_cluster(report, cluster, clusters)
        elif cluster is None:
            report.notes.append(f"{f.name}: not an envoy_grpc cluster; endpoints not checked")
    _check_wasm(report, counters)
    if processor is not None:
        _check_mode(report, processor, ext_proc)
    failed = counters.get("ext_proc.streams_failed", 0)
    if failed:
        report.notes.append(f"{failed} ext_proc stream(s) failed (the processor was "
                            "unreachable, answered with an error, or timed out)")
    return report


# -- config_dump ----------------------------------------------------------------------------

def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _configs(dump: Any, suffix: str) -> Iterator[dict[str, Any]]:
    for config in _list(_dig(dump, "configs")):
        if isinstance(config, dict) and str(config.get("@type", "")).endswith(suffix):
            yield config


def _managers(dump: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(listener name, HTTP connection manager) for every filter chain of every listener."""
    for config in _configs(dump, ".ListenersConfigDump"):
        listeners = [_dig(s, "listener") for s in _list(config.get("static_listeners"))]
        listeners += [_dig(d, "active_state", "listener")
                      for d in _list(config.get("dynamic_listeners"))]
        for listener in listeners:
            if not isinstance(listener, dict):
                continue
            chains = [*_list(listener.get("filter_chains")), listener.get("default_filter_chain")]
            for chain in chains:
                for network_filter in _list(_dig(chain, "filters")):
                    manager = _dig(network_filter, "typed_config")
                    if isinstance(manager, dict) and manager.get("@type") == _HCM:
                        yield str(listener.get("name", "")), manager


def _route_configs(dump: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for config in _configs(dump, ".RoutesConfigDump"):
        for entry in [*_list(config.get("static_route_configs")),
                      *_list(config.get("dynamic_route_configs"))]:
            route_config = _dig(entry, "route_config")
            if isinstance(route_config, dict):
                found[str(route_config.get("name", ""))] = route_config
    return found


def _manager_routes(manager: dict[str, Any], configs: dict[str, dict[str, Any]],
                    report: Report) -> list[tuple[str, dict[str, Any]]]:
    inline = manager.get("route_config")
    if isinstance(inline, dict):
        return [(str(inline.get("name", "")), inline)]
    name = _dig(manager, "rds", "route_config_name")
    if isinstance(name, str):
        if name in configs:
            return [(name, configs[name])]
        report.notes.append(f"route configuration {name} not received yet (RDS)")
    elif "scoped_routes" in manager:
        report.notes.append("scoped routes are not inspected")
    return []


def _filter(entry: Any) -> Filter:
    name = str(_dig(entry, "name") or "")
    config = _dig(entry, "typed_config")
    config = config if isinstance(config, dict) else {}
    kind = _KINDS.get(str(config.get("@type", "")))
    if kind is None:  # e.g. ECDS: the name says the type
        kind = name.partition("/")[0]
    return Filter(name, kind, bool(_dig(entry, "disabled")), config)


def _per_filter(entry: Any) -> dict[str, bool]:
    """Filter name -> on (True) or off (False), from a route or virtual host."""
    found = {}
    for name, value in (_dig(entry, "typed_per_filter_config") or {}).items():
        if not isinstance(value, dict):
            continue
        # FilterConfig and ExtProcPerRoute say ``disabled``; any other override turns it on.
        found[str(name)] = not bool(value.get("disabled"))
    return found


def _match(route: dict[str, Any]) -> str:
    match = route.get("match") if isinstance(route.get("match"), dict) else {}
    assert isinstance(match, dict)
    for key in ("prefix", "path", "path_separated_prefix"):
        if key in match:
            text = f"{key} {match[key]}"
            break
    else:
        regex = _dig(match, "safe_regex", "regex")
        text = f"regex {regex}" if regex is not None else "(other match)"
    return f"{route['name']}: {text}" if route.get("name") else text


def _routes(listener: str, config_name: str, config: dict[str, Any],
            filters: list[Filter]) -> list[Route]:
    routes = []
    for host in _list(config.get("virtual_hosts")):
        host_settings = _per_filter(host)
        for route in _list(_dig(host, "routes")):
            if not isinstance(route, dict):
                continue
            settings = {**host_settings, **_per_filter(route)}
            running = [f.name for f in filters if settings.get(f.name, not f.disabled)]
            routes.append(Route(listener, config_name, str(_dig(host, "name") or ""),
                                _match(route), running))
    return routes


def _check_filters(report: Report, processor: type[Processor] | None,
                   wasm: Sequence[str]) -> None:
    extensions = [f for filters in report.listeners.values() for f in filters
                  if f.kind in (EXT_PROC, WASM)]
    if not extensions:
        report.problems.append("no ext_proc or Wasm filter on any listener")
    running = {name for route in report.routes for name in route.filters}
    for f in extensions:
        if f.name not in running:
            report.problems.append(f"{f.name} is on a listener but no route runs it (not "
                                   "attached to the route, or disabled there)")
    names = {_wasm_name(f) for f in extensions if f.kind == WASM}
    for module in wasm:
        if module not in names:
            report.problems.append(f"Wasm module {module} is not configured in Envoy (for "
                                   "Envoy Gateway: see the controller's log for the policy)")
    if processor is not None and not any(f.kind == EXT_PROC for f in extensions):
        report.problems.append(f"no ext_proc filter, expected one for {processor.__name__}")


def _wasm_name(f: Filter) -> str:
    name = _dig(f.config, "config", "name")
    return str(name) if name else f.name.partition("/")[2]


# -- stats and clusters ---------------------------------------------------------------------

_STAT = re.compile(r"^http\.[^:\s]+?\.ext_proc\.(?:[^:\s]+\.)?(\w+): (\d+)$")


def _counters(stats: str) -> dict[str, int]:
    """ext_proc counters summed over connection managers, and the ``wasm.*`` counters."""
    found: dict[str, int] = {}
    for line in stats.splitlines():
        matched = _STAT.match(line)
        if matched:
            key = f"ext_proc.{matched.group(1)}"
            found[key] = found.get(key, 0) + int(matched.group(2))
            continue
        name, sep, value = line.partition(": ")
        if sep and name.startswith("wasm.") and value.strip().isdigit():
            found[name] = int(value)
    return found


def _address(host: Any) -> str:
    pipe = _dig(host, "address", "pipe", "path")
    if pipe is not None:
        return str(pipe)
    socket = _dig(host, "address", "socket_address")
    return f"{_dig(socket, 'address')}:{_dig(socket, 'port_value')}"


def _health(status: Any) -> str:
    if not isinstance(status, dict):
        return "unknown"
    failed = sorted(k for k, v in status.items() if k.startswith("failed_") and v is True)
    if failed:
        return "unhealthy (" + ", ".join(failed) + ")"
    eds = str(status.get("eds_health_status", "HEALTHY"))
    return "healthy" if eds == "HEALTHY" else eds.lower()


def _check_cluster(report: Report, name: str, clusters: Any) -> None:
    status = next((c for c in _list(_dig(clusters, "cluster_statuses"))
                   if isinstance(c, dict) and c.get("name") == name), None)
    if status is None:
        report.problems.append(f"ext_proc cluster {name} does not exist")
        return
    hosts = _list(status.get("host_statuses"))
    if not hosts:
        report.problems.append(f"ext_proc cluster {name} has no endpoints")
    for host in hosts:
        values = {str(s.get("name")): int(s.get("value", 0)) for s in _list(_dig(host, "stats"))
                  if isinstance(s, dict) and str(s.get("value", "0")).isdigit()}
        endpoint = Endpoint(name, _address(host), _health(_dig(host, "health_status")),
                            values.get("cx_active", 0), values.get("cx_total", 0),
                            values.get("cx_connect_fail", 0))
        report.endpoints.append(endpoint)
        if endpoint.health != "healthy":
            report.problems.append(f"ext_proc endpoint {endpoint.address}: {endpoint.health}")
        elif endpoint.connect_failures and not endpoint.active_connections:
            report.problems.append(
                f"ext_proc endpoint {endpoint.address}: Envoy cannot connect "
                f"({endpoint.connect_failures} failed attempt(s), no open connection): is the "
                "processor running, and is its socket where Envoy looks?")
    if hosts and not any(_dig(h, "stats") and _connections(h) for h in hosts):
        report.notes.append(f"ext_proc cluster {name}: no connection made yet (no traffic), "
                            "so whether Envoy reaches the processor is not known")


def _connections(host: Any) -> int:
    return sum(int(s.get("value", 0)) for s in _list(_dig(host, "stats"))
               if isinstance(s, dict) and s.get("name") == "cx_total"
               and str(s.get("value", "0")).isdigit())


def _check_wasm(report: Report, counters: dict[str, int]) -> None:
    remote = []
    for filters in report.listeners.values():
        for f in filters:
            if f.kind != WASM or any(m.name == _wasm_name(f) for m in report.wasm):
                continue
            code = _dig(f.config, "config", "vm_config", "code") or {}
            if "remote" in code:
                source = f"remote {_dig(code, 'remote', 'http_uri', 'uri')}"
                remote.append(_wasm_name(f))
            elif "local" in code:
                source = f"local {_dig(code, 'local', 'filename') or 'inline'}"
            else:
                source = "unknown"
            # Envoy refuses a config whose local module does not load: a local one loaded.
            report.wasm.append(WasmStatus(_wasm_name(f), source,
                                          True if "local" in code else None))
    failures = counters.get("wasm.remote_load_fetch_failures", 0)
    if failures:
        report.problems.append(
            f"{failures} remote Wasm module fetch(es) failed or did not match the sha256, so "
            f"a module did not load (remote: {', '.join(remote) or 'none listed'}; Envoy's log "
            "names it: 'Plugin NAME failed to load')")
    elif remote:
        for module in report.wasm:
            if module.name in remote and counters.get("wasm.remote_load_fetch_successes"):
                module.loaded = True


# -- processing mode ------------------------------------------------------------------------

def _mode_text(mode: ProcessingMode) -> dict[str, str]:
    return {f.name: (value.name if hasattr(value, "name") else
                     "SEND" if value is True else "SKIP" if value is False else "NONE")
            for f in dataclasses.fields(mode) for value in [getattr(mode, f.name)]}


def _check_mode(report: Report, processor: type[Processor], filters: list[Filter]) -> None:
    from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
    from google.protobuf import json_format

    from extproc import FilterSpec

    expected = FilterSpec.of(processor).mode
    configured: dict[str, dict[str, str]] = {}
    for f in filters:
        message = processing_mode_pb2.ProcessingMode()
        json_format.ParseDict(f.config.get("processing_mode") or {}, message,
                              ignore_unknown_fields=True)
        mode = ProcessingMode.from_proto(message, ProcessingMode())
        configured[f.name] = _mode_text(mode)
        if mode != expected:
            differ = [k for k, v in _mode_text(expected).items() if configured[f.name][k] != v]
            report.problems.append(
                f"{f.name}: Envoy's processing mode differs from what {processor.__name__} "
                "asks for: " + ", ".join(f"{k} {configured[f.name][k]} (class: "
                                         f"{_mode_text(expected)[k]})" for k in differ))
    report.mode = {"processor": processor.__name__, "expected": _mode_text(expected),
                   "configured": configured,
                   "match": bool(filters) and all(c == _mode_text(expected)
                                                  for c in configured.values())}
