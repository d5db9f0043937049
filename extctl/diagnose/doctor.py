"""What a running Envoy really does with the extensions: read from its admin endpoint.

    report = doctor("http://127.0.0.1:19000", processor=Redact, wasm=["tag"])
    print(report.text())          # report.ok: everything expected is there

From ``/config_dump`` (listeners and routes only): which listeners carry ext_proc and Wasm
filters, and which routes run them, in their effective order (a filter that Envoy Gateway
installs ``disabled`` runs only on routes whose ``typed_per_filter_config`` turns it on; a route
can also turn one off). From ``/clusters``: the ext_proc cluster's endpoints, their health and
connections. From ``/stats``: the ext_proc stream counters, the ext_proc cluster's active health
check and Wasm's remote-load counters. With the processor class, the processing mode Envoy has
is compared with the one the class asks for. An endpoint that is a Unix socket on this machine
is also asked directly (``grpc.health.v1``), within the same deadline.

Everything read is untrusted: bounded reads (:mod:`.admin`); any JSON shape is read (a value of
the wrong type counts as absent); the work and the strings kept are bounded; the text report
escapes every non-printable character.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from extproc import ProcessingMode, Processor
from registry.untrusted import escape

from ..errors import AdminError
from .admin import Admin, Budget

EXT_PROC = "envoy.filters.http.ext_proc"
WASM = "envoy.filters.http.wasm"
_KINDS = {
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor": EXT_PROC,
    "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm": WASM,
}
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
       "HttpConnectionManager"
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
"""What a local endpoint is asked about: the service Envoy's generated health check asks for."""
LISTENERS = "/config_dump?mask=static_listeners,dynamic_listeners"
ROUTES = "/config_dump?mask=static_route_configs,dynamic_route_configs"
STATS = "/stats?filter=%5C.ext_proc%5C.%7C%5Ewasm%5C.remote_load%7C%5C.health_check%5C."
"""``\\.ext_proc\\.|^wasm\\.remote_load|\\.health_check\\.``: only the counters read."""
CLUSTERS = "/clusters?format=json"
MAX_TEXT = 1024
"""Longest string kept from an answer (a name, a path, a regex)."""
ROUTE_WORK = 5_000_000
"""Most (route, filter) pairs examined: a real gateway has some 10^5; the pairs multiply
(listeners x routes x filters), so the answer's size alone does not bound them."""
MAX_ROUTES = 20_000
"""Most routes listed in the report (all examined, up to :data:`ROUTE_WORK`)."""
MAX_COUNTERS = 1000
MAX_ASKED = 16
"""Most local endpoints asked directly."""

# An endpoint's ``health``: these are fine, these are not known; any other is a problem.
_FINE = ("healthy", "reachable")
_UNKNOWN = ("unknown", "pending")
# What a local endpoint may answer without it being a problem (it answers: it is up).
_ANSWERS_UP = ("SERVING", "UNIMPLEMENTED", "NOT_FOUND")


def _safe(value: object, limit: int = 300) -> str:
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
        lines = [f"Envoy admin {_safe(self.admin)}"]
        for listener, filters in self.listeners.items():
            shown = [f"{_safe(f.name)}{' (disabled)' if f.disabled else ''}" for f in filters]
            lines.append(f"listener {_safe(listener)}: {', '.join(shown) or '(no HTTP filters)'}")
        for route in self.routes:
            lines.append(f"  route {_safe(route.route_config)}/{_safe(route.virtual_host)} "
                         f"{_safe(route.match)}: {' -> '.join(map(_safe, route.filters))}")
        for endpoint in self.endpoints:
            asked = "" if endpoint.answer is None else \
                f"; asked on its socket: {_safe(endpoint.answer)}"
            lines.append(f"ext_proc cluster {_safe(endpoint.cluster)}: "
                         f"{_safe(endpoint.address)} {_safe(endpoint.health, 40)} "
                         f"({_safe(endpoint.detail)}), "
                         f"{endpoint.active_connections} open connection(s), "
                         f"{endpoint.connect_failures} failed connection attempt(s){asked}")
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
    """Read Envoy's admin endpoint and diagnose it (see :func:`diagnose`), then ask the
    endpoints that are Unix sockets on this machine. One deadline, ``timeout`` (an
    :class:`Admin`'s own when one is given), bounds all of it, and one size and JSON value
    limit all the answers (:class:`~.admin.Budget`)."""
    client = admin if isinstance(admin, Admin) else Admin(admin, timeout=timeout)
    budget = client.budget()
    try:
        dump = {"configs": [*_answer(client, LISTENERS, budget, "configs"),
                            *_answer(client, ROUTES, budget, "configs")]}
        stats = client.get(STATS, budget)
        clusters = {"cluster_statuses": _answer(client, CLUSTERS, budget, "cluster_statuses")}
    finally:
        if client is not admin:
            client.close()
    report = diagnose(dump, stats, clusters, processor=processor, wasm=wasm, admin=client.url)
    ask_endpoints(report, budget.deadline)
    return report


def _answer(client: Admin, path: str, budget: Budget, key: str) -> list[Any]:
    """The list at ``key`` of an answer: what is not Envoy's answer at all is an error (deeper,
    a value of the wrong type counts as absent)."""
    answer = client.json(path, budget)
    found = answer.get(key, []) if isinstance(answer, dict) else None
    if not isinstance(found, list):
        what = f"its {key!r} is a JSON {_kind(found)}" if isinstance(answer, dict) else \
            f"it is a JSON {_kind(answer)}"
        raise AdminError(f"{client.url}{path}: not what Envoy's admin answers ({what})")
    return found


def _kind(value: Any) -> str:
    for kind, name in ((dict, "object"), (list, "list"), (str, "string"), (bool, "boolean"),
                       (int, "number"), (float, "number")):
        if isinstance(value, kind):
            return name
    return "null"


def diagnose(config_dump: Any, stats: str | bytes | bytearray, clusters: Any,
             processor: type[Processor] | None = None, wasm: Sequence[str] = (),
             admin: str = "") -> Report:
    """The report from what the admin endpoint answered; ``processor`` and ``wasm`` (module
    names) are what must be there."""
    report = Report(admin)
    route_configs = _route_configs(config_dump)
    ext_proc: list[Filter] = []
    scan = _Scan()
    seen_managers: set[tuple[object, ...]] = set()
    for listener, manager in _managers(config_dump):
        filters = [_filter(f) for f in _list(manager.get("http_filters"))]
        report.listeners[listener] = filters
        ext_proc += [f for f in filters if f.kind == EXT_PROC]
        signature = tuple((f.name, f.disabled) for f in filters)
        for config_name, config in _manager_routes(manager, route_configs, report):
            # Filter chains of one listener often share a route configuration: listed once.
            key = (listener, config_name, id(config), signature)
            if key not in seen_managers:
                seen_managers.add(key)
                _routes(report, listener, config_name, config, filters, scan)
    if scan.work < 0:
        report.notes.append(f"more routes than the doctor examines ({ROUTE_WORK} route-filter "
                            "pairs): whether a filter runs on some route is not checked")
    elif scan.unlisted:
        report.notes.append(f"{scan.unlisted} more route(s) examined but not listed (the "
                            f"report lists {MAX_ROUTES})")
    _check_filters(report, processor, wasm, scan.running if scan.work >= 0 else None)
    counters = _counters(stats.encode("utf-8") if isinstance(stats, str) else stats)
    report.counters = {k: v for k, v in counters.items()
                       if k.startswith(("ext_proc.", "wasm.remote_load"))}
    statuses: dict[str, Any] = {}
    for status in _list(_dig(clusters, "cluster_statuses")):
        name = _dig(status, "name")
        if isinstance(name, str):
            statuses.setdefault(name, status)
    checks: dict[str, dict[str, int]] = {}  # cluster -> its health check's counters
    for counter, value in counters.items():
        if counter.startswith("cluster."):
            cluster_name = counter[len("cluster."):].rpartition(".health_check.")[0]
            checks.setdefault(cluster_name, {})[counter] = value
    seen: set[str] = set()
    for f in ext_proc:
        cluster = _dig(f.config, "grpc_service", "envoy_grpc", "cluster_name")
        if isinstance(cluster, str) and cluster not in seen:
            seen.add(cluster)
            report.counters.update(checks.get(cluster, {}))
            _check_cluster(report, cluster, statuses.get(cluster),
                           checked=f"cluster.{cluster}.health_check.attempt" in counters)
        elif not isinstance(cluster, str):
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


def _str(value: Any, default: str = "") -> str:
    """A string of the answer, cut at :data:`MAX_TEXT`; ``default`` for any other type."""
    if not isinstance(value, str):
        return default
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "..."


def _configs(dump: Any, suffix: str) -> Iterator[dict[str, Any]]:
    for config in _list(_dig(dump, "configs")):
        if isinstance(config, dict) and _str(config.get("@type")).endswith(suffix):
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
                        yield _str(listener.get("name")), manager


def _route_configs(dump: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for config in _configs(dump, ".RoutesConfigDump"):
        for entry in [*_list(config.get("static_route_configs")),
                      *_list(config.get("dynamic_route_configs"))]:
            route_config = _dig(entry, "route_config")
            if isinstance(route_config, dict):
                found[_str(route_config.get("name"))] = route_config
    return found


def _manager_routes(manager: dict[str, Any], configs: dict[str, dict[str, Any]],
                    report: Report) -> list[tuple[str, dict[str, Any]]]:
    inline = manager.get("route_config")
    if isinstance(inline, dict):
        return [(_str(inline.get("name")), inline)]
    name = _dig(manager, "rds", "route_config_name")
    if isinstance(name, str):
        name = _str(name)
        if name in configs:
            return [(name, configs[name])]
        report.notes.append(f"route configuration {name} not received yet (RDS)")
    elif "scoped_routes" in manager:
        report.notes.append("scoped routes are not inspected")
    return []


def _filter(entry: Any) -> Filter:
    name = _str(_dig(entry, "name"))
    config = _dig(entry, "typed_config")
    config = config if isinstance(config, dict) else {}
    kind = _KINDS.get(_str(config.get("@type")))
    if kind is None:  # e.g. ECDS: the name says the type
        kind = name.partition("/")[0]
    return Filter(name, kind, _dig(entry, "disabled") is True, config)


def _per_filter(entry: Any) -> dict[str, bool]:
    """Filter name -> on (True) or off (False), from a route or virtual host."""
    found = {}
    overrides = _dig(entry, "typed_per_filter_config")
    for name, value in (overrides.items() if isinstance(overrides, dict) else ()):
        if not isinstance(value, dict):
            continue
        # FilterConfig and ExtProcPerRoute say ``disabled``; any other override turns it on.
        found[_str(name)] = value.get("disabled") is not True
    return found


def _match(route: dict[str, Any]) -> str:
    match = route.get("match")
    match = match if isinstance(match, dict) else {}
    for key in ("prefix", "path", "path_separated_prefix"):
        if key in match:
            text = f"{key} {_str(match[key], '?')}"
            break
    else:
        regex = _dig(match, "safe_regex", "regex")
        text = f"regex {_str(regex, '?')}" if regex is not None else "(other match)"
    name = _str(route.get("name"))
    return f"{name}: {text}" if name else text


@dataclass
class _Scan:
    """The walk over routes: work left, the filters some route runs, routes not listed."""

    work: int = ROUTE_WORK
    running: set[str] = field(default_factory=set)
    unlisted: int = 0
    matches: dict[int, str] = field(default_factory=dict)
    """Each route's match text by the route's id: listeners sharing routes share the text."""


def _routes(report: Report, listener: str, config_name: str, config: dict[str, Any],
            filters: list[Filter], scan: _Scan) -> None:
    """List the routes of ``config`` and the filters that run on each; the walk stops when
    :attr:`_Scan.work` runs out."""
    for host in _list(config.get("virtual_hosts")):
        host_settings = _per_filter(host)
        for route in _list(_dig(host, "routes")):
            if not isinstance(route, dict):
                continue
            settings = {**host_settings, **_per_filter(route)}
            scan.work -= 1 + len(filters) + len(settings)
            if scan.work < 0:
                return
            running = [f.name for f in filters if settings.get(f.name, not f.disabled)]
            scan.running.update(running)
            if len(report.routes) >= MAX_ROUTES:
                scan.unlisted += 1
                continue
            match = scan.matches.get(id(route))
            if match is None:
                match = scan.matches[id(route)] = _match(route)
            report.routes.append(Route(listener, config_name, _str(_dig(host, "name")),
                                       match, running))


def _check_filters(report: Report, processor: type[Processor] | None,
                   wasm: Sequence[str], running: set[str] | None) -> None:
    """``running``: the filters some route runs; None when not all routes were examined."""
    extensions = [f for filters in report.listeners.values() for f in filters
                  if f.kind in (EXT_PROC, WASM)]
    if not extensions:
        report.problems.append("no ext_proc or Wasm filter on any listener")
    for f in extensions:
        if running is not None and f.name not in running:
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
    name = _str(_dig(f.config, "config", "name"))
    return name or f.name.partition("/")[2]


# -- stats and clusters ---------------------------------------------------------------------

# One candidate per line, no nested repetition: linear in the answer's size whatever it holds.
_STAT = re.compile(rb"^((?:http|wasm|cluster)\.[^:\s]{1,400}): ([0-9]{1,20})\r?$", re.M)
_HEALTH_CHECK = b".health_check."


def _counters(stats: bytes | bytearray) -> dict[str, int]:
    """ext_proc counters summed over connection managers, ``wasm.remote_load*`` and every
    cluster's ``health_check`` counters (at most :data:`MAX_COUNTERS` names)."""
    found: dict[str, int] = {}
    for matched in _STAT.finditer(stats):
        name, value = matched.group(1), int(matched.group(2))
        parts = name.split(b".")
        if parts[0] == b"http" and b"ext_proc" in parts[2:-1]:
            key = "ext_proc." + parts[-1].decode("ascii", errors="replace")
        elif parts[0] == b"wasm" and name.startswith(b"wasm.remote_load"):
            key = name.decode("ascii", errors="replace")
        elif parts[0] == b"cluster" and _HEALTH_CHECK in name:
            cluster, _, check = name[len(b"cluster."):].rpartition(_HEALTH_CHECK)
            key = (f"cluster.{cluster.decode('utf-8', errors='replace')}.health_check."
                   f"{check.decode('ascii', errors='replace')}")
        else:
            continue
        if key in found:
            found[key] += value
        elif len(found) < MAX_COUNTERS:
            found[key] = value
    return found


def _count(value: Any) -> int | None:
    """A counter's value, a number or a string of ASCII digits; None for anything else."""
    if isinstance(value, str) and 0 < len(value) <= 20 and value.isascii() \
            and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 64:
        return value
    return None


def _host_stats(host: Any) -> dict[str, int]:
    found: dict[str, int] = {}
    for entry in _list(_dig(host, "stats")):
        name, value = _dig(entry, "name"), _count(_dig(entry, "value"))
        if name in ("cx_active", "cx_total", "cx_connect_fail") and value is not None:
            found[name] = value
    return found


def _address(host: Any) -> tuple[str, bool]:
    """The endpoint's address and whether it is a Unix socket path."""
    pipe = _dig(host, "address", "pipe", "path")
    if isinstance(pipe, str):
        return _str(pipe), True
    socket = _dig(host, "address", "socket_address")
    port = _count(_dig(socket, "port_value"))
    return f"{_str(_dig(socket, 'address'), '?')}:{'?' if port is None else port}", False


def _health(status: Any, cx: dict[str, int], checked: bool) -> tuple[str, str]:
    """Envoy's view of one endpoint: (health, detail); see :attr:`Endpoint.health`."""
    active, failures = cx.get("cx_active", 0), cx.get("cx_connect_fail", 0)
    unreachable = (f"Envoy cannot connect ({failures} failed attempt(s), no open connection): "
                   "is the processor running, and is its socket where Envoy looks?")
    if not isinstance(status, dict):
        return "unknown", "Envoy gives no health status"
    failed = sorted(k for k, v in status.items() if k.startswith("failed_") and v is True)
    if failed:
        why = "Envoy flags it" if "failed_active_health_check" not in failed else \
            "Envoy's active health check fails, so no requests go there"
        why += f" [{', '.join(failed)}]"
        return "unhealthy", why + ("; " + unreachable if failures and not active else "")
    eds = _str(status.get("eds_health_status", "HEALTHY"), "?")
    if eds != "HEALTHY":
        return eds.lower(), "Envoy's EDS health status"
    if failures and not active:
        return "unreachable", unreachable
    if status.get("pending_active_hc") is True:
        return "pending", "Envoy's first active health check has not finished"
    if failures:
        return "reachable", (f"{active} open connection(s) after {failures} failed "
                             "connection attempt(s)")
    if checked:
        return "healthy", "Envoy's active health check passes"
    if active:
        return "healthy", "open connection, no active health check"
    return "unknown", "no active health check and no open connection: not checked"


def _check_cluster(report: Report, name: str, status: Any, checked: bool) -> None:
    if not isinstance(status, dict):
        report.problems.append(f"ext_proc cluster {name} does not exist")
        return
    hosts = _list(status.get("host_statuses"))
    if not hosts:
        report.problems.append(f"ext_proc cluster {name} has no endpoints")
    connected = False
    for host in hosts:
        cx = _host_stats(host)
        connected = connected or cx.get("cx_total", 0) > 0
        address, unix = _address(host)
        health, detail = _health(_dig(host, "health_status"), cx, checked)
        endpoint = Endpoint(name, address, health, detail, cx.get("cx_active", 0),
                            cx.get("cx_total", 0), cx.get("cx_connect_fail", 0), unix)
        report.endpoints.append(endpoint)
        if health not in _FINE + _UNKNOWN:
            report.problems.append(f"ext_proc endpoint {address} is {health}: {detail}")
    if hosts and not connected and not checked:
        report.notes.append(f"ext_proc cluster {name}: no active health check and no "
                            "connection made yet (no traffic), so whether Envoy reaches the "
                            "processor is not known")


def ask_endpoints(report: Report, deadline: float) -> None:
    """Ask each endpoint that is a Unix socket on this machine (``grpc.health.v1`` Check,
    all at once, before ``deadline`` on :func:`time.monotonic`'s clock) and add what it
    answered to the report: a processor that died is seen before Envoy's health check sees
    it, and without traffic."""
    from concurrent.futures import ThreadPoolExecutor

    # The answer names the sockets: only sockets are asked, one health check each, at most
    # MAX_ASKED of them, so a hostile answer can make the doctor send no more than that.
    by_address: dict[str, Endpoint] = {}
    for endpoint in report.endpoints:
        if not endpoint.unix or endpoint.address in by_address:
            continue
        try:
            if stat.S_ISSOCK(os.stat(endpoint.address).st_mode):
                by_address[endpoint.address] = endpoint
        except (OSError, ValueError):  # absent here, not permitted, a NUL in the path
            pass
    local = list(by_address.values())
    if len(local) > MAX_ASKED:
        report.notes.append(f"{len(local) - MAX_ASKED} local ext_proc endpoint(s) not asked "
                            f"(the doctor asks {MAX_ASKED})")
        local = local[:MAX_ASKED]
    if not local:
        return
    if deadline - time.monotonic() < 0.05:
        report.notes.append(f"{len(local)} local ext_proc endpoint(s) not asked: the "
                            "deadline came first")
        return
    from .health import check_one

    with ThreadPoolExecutor(max_workers=len(local)) as pool:
        results = list(pool.map(lambda e: check_one(
            e.address, max(0.0, deadline - time.monotonic()), EXT_PROC_SERVICE), local))
    for endpoint, result in zip(local, results, strict=True):
        # gRPC's detail ends with the cause: "... connect failed: ... error: Connection refused"
        why = result.detail.rpartition("error: ")[2]
        for same in (e for e in report.endpoints if e.address == endpoint.address):
            same.answer = result.status + (f" ({why})" if why else "")
        if result.status == "UNREACHABLE":
            report.problems.append(f"ext_proc endpoint {endpoint.address} is unreachable: "
                                   "asked on its socket here, the processor does not answer"
                                   + (f" ({why})" if why else ""))
        elif result.status not in _ANSWERS_UP:
            report.problems.append(f"ext_proc endpoint {endpoint.address} is unhealthy: asked "
                                   f"on its socket here, the processor answers {endpoint.answer}")
        elif result.status != "SERVING":
            report.notes.append(f"ext_proc endpoint {endpoint.address} answers, but not "
                                f"SERVING for {EXT_PROC_SERVICE} ({endpoint.answer})")


def _check_wasm(report: Report, counters: dict[str, int]) -> None:
    remote = []
    listed: set[str] = set()
    for filters in report.listeners.values():
        for f in filters:
            name = _wasm_name(f)
            if f.kind != WASM or name in listed:
                continue
            listed.add(name)
            code = _dig(f.config, "config", "vm_config", "code")
            code = code if isinstance(code, dict) else {}
            if "remote" in code:
                source = f"remote {_str(_dig(code, 'remote', 'http_uri', 'uri'), '?')}"
                remote.append(name)
            elif "local" in code:
                source = f"local {_str(_dig(code, 'local', 'filename')) or 'inline'}"
            else:
                source = "unknown"
            # Envoy refuses a config whose local module does not load: a local one loaded.
            report.wasm.append(WasmStatus(name, source, True if "local" in code else None))
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

    from extproc import FilterSpec, ProtocolError

    expected = FilterSpec.of(processor).mode
    configured: dict[str, dict[str, str]] = {}
    for f in filters:
        message = processing_mode_pb2.ProcessingMode()
        try:
            json_format.ParseDict(f.config.get("processing_mode") or {}, message,
                                  ignore_unknown_fields=True)
            mode = ProcessingMode.from_proto(message, ProcessingMode())
        except (json_format.ParseError, ProtocolError, TypeError, ValueError,
                AttributeError, RecursionError) as exc:
            report.problems.append(f"{f.name}: Envoy's processing mode cannot be read "
                                   f"({_safe(exc, 200)})")
            configured[f.name] = {}
            continue
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
