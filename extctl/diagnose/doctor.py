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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from extproc import ProcessingMode, Processor

from ..errors import AdminError
from .admin import Admin, Budget
from .endpoints import ask_endpoints, check_cluster
from .endpoints import counters as read_counters
from .report import Endpoint, Filter, Report, Route, WasmStatus, safe
from .shapes import as_list as _list
from .shapes import dig as _dig
from .shapes import text_of as _str

__all__ = ["CLUSTERS", "EXT_PROC", "LISTENERS", "ROUTES", "STATS", "WASM", "Endpoint",
           "Filter", "Report", "Route", "WasmStatus", "diagnose", "doctor"]

EXT_PROC = "envoy.filters.http.ext_proc"
WASM = "envoy.filters.http.wasm"
_KINDS = {
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor": EXT_PROC,
    "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm": WASM,
}
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
       "HttpConnectionManager"
LISTENERS = "/config_dump?mask=static_listeners,dynamic_listeners"
ROUTES = "/config_dump?mask=static_route_configs,dynamic_route_configs"
STATS = "/stats?filter=%5C.ext_proc%5C.%7C%5Ewasm%5C.remote_load%7C%5C.health_check%5C."
"""``\\.ext_proc\\.|^wasm\\.remote_load|\\.health_check\\.``: only the counters read."""
CLUSTERS = "/clusters?format=json"
ROUTE_WORK = 5_000_000
"""Most (route, filter) pairs examined: a real gateway has some 10^5; the pairs multiply
(listeners x routes x filters), so the answer's size alone does not bound them."""
MAX_ROUTES = 20_000
"""Most routes listed in the report (all examined, up to :data:`ROUTE_WORK`)."""


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
    counters = read_counters(stats.encode("utf-8") if isinstance(stats, str) else stats)
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
            check_cluster(report, cluster, statuses.get(cluster),
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
                                   f"({safe(exc, 200)})")
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
