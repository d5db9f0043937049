"""The ext_proc cluster's endpoints as Envoy sees them (``/clusters`` and the health-check
counters of ``/stats``), and, for one that is a Unix socket on this machine, as the processor
itself answers (``grpc.health.v1``). ``healthy`` needs evidence: Envoy's active health check
passes, or a connection is open and none failed."""

from __future__ import annotations

import os
import re
import stat
import time
from typing import Any

from extproc import SERVICE_NAME

from .report import Endpoint, Report
from .shapes import as_list as _list
from .shapes import count_of as _count
from .shapes import dig as _dig
from .shapes import text_of as _str

MAX_COUNTERS = 1000
MAX_ASKED = 16
"""Most local endpoints asked directly."""

# An endpoint's ``health``: these are fine, these are not known; any other is a problem.
_FINE = ("healthy", "reachable")
_UNKNOWN = ("unknown", "pending")
# What a local endpoint may answer without it being a problem (it answers: it is up).
_ANSWERS_UP = ("SERVING", "UNIMPLEMENTED", "NOT_FOUND")

# One candidate per line, no nested repetition: linear in the answer's size whatever it holds.
_STAT = re.compile(rb"^((?:http|wasm|cluster)\.[^:\s]{1,400}): ([0-9]{1,20})\r?$", re.M)
_HEALTH_CHECK = b".health_check."


def counters(stats: bytes | bytearray) -> dict[str, int]:
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


def check_cluster(report: Report, name: str, status: Any, checked: bool) -> None:
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
            e.address, max(0.0, deadline - time.monotonic()), SERVICE_NAME), local))
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
                                f"SERVING for {SERVICE_NAME} ({endpoint.answer})")
