"""5,000 requests through a real Envoy: no errors, and the server's memory and fds stay flat."""

from __future__ import annotations

import http.client
import signal
import threading
from pathlib import Path

from extctl.config import Deployment
from extctl.testing import EnvoyProcess
from tests.helpers.common import wait_for_socket
from tests.helpers.procs import Soak

TOTAL = 5000
WARMUP = 500
THREADS = 4
RSS_GROWTH_LIMIT_KIB = 16 * 1024  # after warm-up; a leak of ~3 KiB per request would exceed it
FD_GROWTH_LIMIT = 4


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _drive(port: int, count: int, offset: int, statuses: list[int], errors: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for i in range(count):
            n = offset + i
            headers = {"x-deny": "1"} if n % 50 == 0 else {}
            try:
                conn.request("GET", f"/soak/{n}", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                statuses.append(resp.status)
                if resp.status == 200 and (b'"method": "get"' not in body
                                           or resp.getheader("x-soak-response") != "1"):
                    errors.append(f"request {n}: unprocessed answer")
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"request {n}: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    finally:
        conn.close()


def _round(port: int, total: int, offset: int) -> tuple[list[int], list[str]]:
    statuses: list[int] = []
    errors: list[str] = []
    per_thread = total // THREADS
    threads = [threading.Thread(target=_drive,
                                args=(port, per_thread, offset + t * per_thread, statuses, errors))
               for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return statuses, errors


def _serving_pid(pid: int, transport: str) -> int:
    """The process that runs the processor: the server, or the Envoy it started (pyvoy)."""
    if transport == "grpcio":
        return pid
    children = [c for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    assert len(children) == 1, children
    return int(children[0])


def test_5000_requests_no_errors_and_flat_rss_and_fds(sock_dir, echo, extctl, transport):
    path = sock_dir / "soak.sock"
    proc = extctl("serve", "tests.helpers.procs:Soak", "--uds", str(path), "--log-level", "warning",
                  "--transport", transport)
    wait_for_socket(path, proc)
    server = _serving_pid(proc.pid, transport)
    config = Deployment.build(Soak, addresses=[str(path)], upstreams=[echo.address])
    with EnvoyProcess(config.envoy_bootstrap(), sock_dir / "envoy") as envoy:
        statuses, errors = _round(envoy.port, WARMUP, 0)
        assert not errors and len(statuses) == WARMUP
        rss_before, fds_before = _rss_kib(server), _fds(server)
        statuses, errors = _round(envoy.port, TOTAL - WARMUP, WARMUP)
        rss_after, fds_after = _rss_kib(server), _fds(server)
        stats = envoy.stats("http.ingress.ext_proc.")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert errors == []
    assert len(statuses) == TOTAL - WARMUP
    denied = sum(1 for n in range(WARMUP, TOTAL) if n % 50 == 0)
    assert statuses.count(403) == denied
    assert statuses.count(200) == TOTAL - WARMUP - denied
    assert stats["http.ingress.ext_proc.streams_started"] == TOTAL
    for counter in ("streams_failed", "message_timeouts", "rejected_header_mutations",
                    "spurious_msgs_received", "failure_mode_allowed"):
        assert stats[f"http.ingress.ext_proc.{counter}"] == 0, counter
    assert rss_after - rss_before <= RSS_GROWTH_LIMIT_KIB, (rss_before, rss_after)
    assert fds_after - fds_before <= FD_GROWTH_LIMIT, (fds_before, fds_after)
