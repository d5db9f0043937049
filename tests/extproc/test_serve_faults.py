"""``extctl serve`` under what operators and hostile peers do: a hook that blocks the loop, a
hook that raises anything or answers garbage, signals to the whole process group, a parent
killed outright, a flood of half-sent admin requests, idle health watches. Real processes,
real signals, a real Envoy; assertions on what an operator sees."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc import ServerConfig
from tests.helpers.common import ROOT, alive, http, process_name, wait_for_socket
from tests.helpers.oci import free_port
from tests.helpers.procs import MISBEHAVIOURS, Misbehaving
from tests.helpers.serve import (
    _envoy_for,
    _headers_request,
    _health,
    _process_once,
    _wait_not_serving,
    wait_for_path,
)

pytestmark = pytest.mark.envoy

SERVING = health_pb2.HealthCheckResponse.SERVING


def _get(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path on a fresh connection: (status, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _until(condition, timeout: float, what: str):
    """Poll ``condition()`` until it returns something true; its value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.05)




def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


# -- probes that tell the truth -----------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_hook_that_blocks_the_loop_fails_liveness_and_readiness(sock_dir, extctl, workers,
                                                                  transport):
    port = free_port()
    path = sock_dir / "b.sock"
    proc = extctl("serve", "tests.helpers.procs:Blocking", "--uds", str(path), "--workers",
                  str(workers), "--transport", transport,
                  "--admin", f"127.0.0.1:{port}", "--stall-timeout", "1")
    sockets = ServerConfig(uds=str(path), workers=workers).addresses()
    for worker_socket in sockets:
        wait_for_socket(Path(worker_socket), proc)
    _until(lambda: _get(port, "/readyz")[0] == 200, 20, "ready")
    assert _get(port, "/healthz") == (200, "ok\n")

    # The last worker's loop is blocked for 5 s; the others (if any) serve on.
    blocked = threading.Thread(target=_process_once, args=(
        f"unix:{sockets[-1]}", _headers_request(**{"x-block-ms": "5000"})), daemon=True)
    blocked.start()
    try:
        status, body = _until(lambda: (lambda r: r if r[0] == 503 else None)(
            _get(port, "/healthz")), 4, "/healthz failing")
        assert "has not turned for" in body and "stall timeout 1s" in body
        assert f"worker {workers - 1}" in body if workers > 1 else "server" in body
        status, body = _get(port, "/readyz")
        assert status == 503 and "has not turned for" in body
        if workers > 1:  # the other worker still answers
            assert _process_once(f"unix:{sockets[0]}", _headers_request(), timeout=5)
    finally:
        blocked.join(30)
    # The loop turns again: both probes recover.
    _until(lambda: _get(port, "/healthz")[0] == 200 and _get(port, "/readyz")[0] == 200, 5,
           "probes recovered")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_the_admin_endpoint_survives_a_flood_of_half_sent_requests(sock_dir, started):
    """300 connections that never finish their request, to a server allowed 256 files: the
    probes, a scrape and the gRPC health check still answer, and the connections are closed."""
    port = free_port()
    path = sock_dir / "a.sock"

    # prlimit(1), not a preexec_fn: this process runs gRPC's threads, and forking it to run
    # Python before exec is not safe with threads.
    proc = subprocess.Popen(
        ["prlimit", "--nofile=256:256", "--", sys.executable, "-m", "extctl", "serve",
         "tests.helpers.procs:HeadersOnly", "--uds", str(path), "--admin", f"127.0.0.1:{port}",
         "--log-format", "json"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    started.append(proc)
    wait_for_socket(path, proc)
    _until(lambda: _get(port, "/readyz")[0] == 200, 20, "ready")
    flood = []
    try:
        for _ in range(300):
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never ends the head
            flood.append(conn)
        assert _get(port, "/healthz") == (200, "ok\n")
        assert _get(port, "/readyz")[0] == 200
        assert "grpc_server_started_total" in _get(port, "/metrics")[1]
        assert _health(f"unix:{path}") == SERVING
        open_files = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert open_files < 150, open_files
        # A scrape aborted mid-answer (RST), and a head too large: answered or dropped
        # quietly.
        for _ in range(20):
            abort = socket.create_connection(("127.0.0.1", port), timeout=5)
            abort.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            abort.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            abort.close()
        big = socket.create_connection(("127.0.0.1", port), timeout=5)
        big.sendall(b"GET / HTTP/1.1\r\nx: " + b"a" * 20000 + b"\r\n\r\n")
        assert big.recv(100).startswith(b"HTTP/1.1 431 ")
        big.close()
        # The deadline: every half-sent request is closed by the server within 5 s.
        closed = _until(lambda: all(c.recv(1) == b"" for c in flood[-64:]), 10,
                        "half-sent requests closed")
        assert closed
    finally:
        for conn in flood:
            conn.close()
    assert _get(port, "/healthz") == (200, "ok\n")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    stderr = proc.communicate(timeout=15)[1]
    for line in stderr.splitlines():
        json.loads(line)  # under --log-format json, every line is JSON: no raw traceback


# -- hook failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
def test_whatever_a_hook_raises_or_returns_follows_the_class_policy(sock_dir, extctl,
                                                                    fail_open):
    port = free_port()
    path = sock_dir / "m.sock"
    name = "MisbehavingOpen" if fail_open else "Misbehaving"
    proc = extctl("serve", f"tests.helpers.procs:{name}", "--uds", str(path), "--admin",
                  f"127.0.0.1:{port}",
                  "--transport", "grpcio")
    wait_for_socket(path, proc)
    cases = [*MISBEHAVIOURS, "cancelled"]
    with _envoy_for([str(path)], sock_dir / "envoy", Misbehaving) as envoy:
        for what in cases:
            reply = http(envoy.port, "/", headers={"x-do": what})
            if fail_open:  # the request goes on, unchanged
                assert reply.status == 200, (what, reply)
                assert "x-worker-pid" in reply.headers, what
            else:  # the class's error status, not Envoy's 500 for a broken stream
                assert (reply.status, reply.body) == (503, b"processor error\n"), (what, reply)
        assert proc.poll() is None
        assert _health(f"unix:{path}") == SERVING
        assert http(envoy.port, "/").status == 200
    metrics = _get(port, "/metrics")[1]
    outcome = "fail_open" if fail_open else "fail_closed"
    assert (f'extproc_hook_errors_total{{outcome="{outcome}",phase="request_headers",'
            f'processor="{name}"}} {float(len(cases))}') in metrics
    assert 'grpc_server_handled_total{grpc_code="INTERNAL"' not in metrics
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    stderr = proc.communicate(timeout=15)[1]
    for exception in ("SystemExit", "KeyboardInterrupt", "GeneratorExit", "_UserBaseException",
                      "CancelledError", "MutationError"):
        assert exception in stderr


# -- signals to the whole group, and orphans ----------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_whole_group_drains_every_worker(sock_dir, extctl, sig):
    """systemd's default kill mode, ``timeout``, a runtime signalling the group: each worker
    gets the signal twice (directly, then from the supervisor); in-flight requests finish."""
    path = sock_dir / "g.sock"
    proc = extctl("serve", "tests.helpers.procs:Slow", "--uds", str(path), "--workers", "2",
                  "--grace-period", "30", start_new_session=True)
    sockets = ServerConfig(uds=str(path), workers=2).addresses()
    for worker_socket in sockets:
        wait_for_socket(Path(worker_socket), proc)
    try:
        with _envoy_for(sockets, sock_dir / "envoy") as envoy:
            replies: list[object] = []
            marks = [sock_dir / f"in-{i}" for i in range(4)]
            threads = [threading.Thread(target=lambda m=m: replies.append(http(
                envoy.port, "/", headers={"x-sleep-ms": "2000", "x-mark": str(m)})),
                daemon=True) for m in marks]
            for thread in threads:
                thread.start()
            for mark in marks:
                wait_for_path(mark)
            os.killpg(proc.pid, sig)
            for thread in threads:
                thread.join(30)
            assert [r.status for r in replies] == [200] * 4  # type: ignore[attr-defined]
            assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not any(Path(s).exists() for s in sockets)


def test_workers_and_the_admin_process_do_not_outlive_a_killed_supervisor(sock_dir, extctl):
    path = sock_dir / "o.sock"
    port = free_port()
    proc = extctl("serve", "tests.helpers.procs:HeadersOnly", "--uds", str(path), "--workers", "2",
                  "--admin", f"127.0.0.1:{port}", "--grace-period", "2")
    sockets = ServerConfig(uds=str(path), workers=2).addresses()
    for worker_socket in sockets:
        wait_for_socket(Path(worker_socket), proc)
    _until(lambda: _get(port, "/readyz")[0] == 200, 20, "ready")
    children = _children(proc.pid)
    assert len(children) == 3  # two workers and the admin process
    proc.kill()
    proc.wait(10)
    _until(lambda: not any(alive(c) for c in children), 10, "children gone")
    assert not any(Path(s).exists() for s in sockets)
    # The same command starts again at once, on the same paths and port.
    again = extctl("serve", "tests.helpers.procs:HeadersOnly", "--uds", str(path), "--workers", "2",
                   "--admin", f"127.0.0.1:{port}")
    for worker_socket in sockets:
        wait_for_socket(Path(worker_socket), again)
    assert all(_health(f"unix:{s}") == SERVING for s in sockets)
    again.send_signal(signal.SIGTERM)
    assert again.wait(20) == 0


def test_the_reload_child_does_not_outlive_a_killed_reloader(sock_dir, extctl, tmp_path):
    path = sock_dir / "r.sock"
    proc = extctl("serve", "tests.helpers.procs:HeadersOnly", "--uds", str(path), "--reload",
                  "--reload-dir", str(tmp_path))
    wait_for_socket(path, proc)
    descendants = _children(proc.pid)
    assert descendants  # the serving child and a warm standby
    proc.kill()
    proc.wait(10)
    _until(lambda: not any(alive(c) for c in descendants), 15, "reload children gone")
    assert not path.exists()


@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGKILL])
def test_extctl_dev_leaves_no_envoy_behind(extctl, how):
    port = free_port()
    proc = extctl("dev", "--port", str(port))
    line = _until(lambda: next((ln for ln in iter(proc.stderr.readline, "")
                                if ln.startswith("try: curl")), None), 60, "dev started")
    assert line
    envoys = [pid for pid in _children(proc.pid)
              if "envoy" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(envoys) == 1
    proc.send_signal(how)
    proc.wait(20)
    _until(lambda: not alive(envoys[0]), 15, "Envoy gone")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# -- pyvoy: health watches and the debug route ------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_health_watches_cost_no_cpu_on_pyvoy(sock_dir, extctl):
    path = sock_dir / "w.sock"
    proc = extctl("serve", "tests.helpers.procs:HeadersOnly", "--uds", str(path), "--transport",
                  "pyvoy")
    wait_for_socket(path, proc)
    (envoy_pid,) = _children(proc.pid)
    channel = grpc.insecure_channel(f"unix:{path}")
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
                   for _ in range(300)]
        for watch in watches:
            assert next(watch).status == SERVING
        before = _cpu_seconds(envoy_pid)
        started = time.monotonic()
        threading.Event().wait(3)  # a window of idleness, measured, not synchronisation
        used = _cpu_seconds(envoy_pid) - before
        elapsed = time.monotonic() - started
        assert used < 0.1 * elapsed, f"{used:.2f}s CPU in {elapsed:.1f}s for idle watches"
        # and every watch still learns of the drain at once
        proc.send_signal(signal.SIGTERM)
        for watch in watches:
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        channel.close()
    assert proc.wait(20) == 0


def test_the_message_counts_route_is_not_served_to_peers_on_pyvoy(sock_dir, extctl):
    from extproc.transports.pyvoy_app import COUNTS_PATH, COUNTS_TOKEN_HEADER

    path = sock_dir / "c.sock"
    proc = extctl("serve", "tests.helpers.procs:HeadersOnly", "--uds", str(path), "--transport",
                  "pyvoy")
    wait_for_socket(path, proc)
    with grpc.insecure_channel(f"unix:{path}") as channel:
        call = channel.unary_unary(COUNTS_PATH, request_serializer=None,
                                   response_deserializer=None)
        for metadata in ([], [(COUNTS_TOKEN_HEADER, "0" * 32)]):
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=10, metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0



# -- what a hostile review of the above found -------------------------------------------------


def test_a_signal_while_the_supervisor_forks_its_workers_still_stops_it(sock_dir, extctl):
    """SIGTERM as soon as the first worker exists: every worker, forked before or after it,
    drains; nothing is left waiting for a signal that was already sent."""
    path = sock_dir / "s.sock"
    port = free_port()
    proc = extctl("serve", "tests.helpers.procs:HeadersOnly", "--uds", str(path), "--workers", "3",
                  "--admin", f"127.0.0.1:{port}", "--grace-period", "1")
    _until(lambda: _children(proc.pid), 20, "a first child")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def test_of_two_servers_started_on_one_path_one_serves_and_the_other_exits_3(sock_dir,
                                                                           extctl):
    """The second starts while the first is still in on_startup (not bound yet) and binds
    first; the first then finds the path taken: one server, reachable, and one clear exit."""
    path = sock_dir / "p.sock"
    first = extctl("serve", "tests.helpers.procs:SlowLifecycle", "--uds", str(path), env={
        "EXTKIT_START_S": "3", "EXTKIT_MARK": str(sock_dir / "first")})
    wait_for_path(sock_dir / "first")
    second = extctl("serve", "tests.helpers.procs:SlowLifecycle", "--uds", str(path))
    assert first.wait(30) == 3
    assert "something is already listening on" in first.communicate(timeout=15)[1]
    answers = _process_once(f"unix:{path}", _headers_request())
    served_by = answers[0].request_headers.response.header_mutation.set_headers[0].header
    assert served_by.raw_value.decode() == str(second.pid)
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0
    assert not path.exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_forcing_signal_cuts_a_hung_on_startup(sock_dir, extctl, workers):
    path = sock_dir / "h.sock"
    marks = [sock_dir / f"mark-{i}" for i in range(int(workers))]
    proc = extctl("serve", "tests.helpers.procs:SlowLifecycle", "--uds", str(path), "--workers",
                  workers,
                  env={"EXTKIT_START_S": "600", "EXTKIT_MARK": str(marks[0])})
    wait_for_path(marks[0])  # in on_startup (with workers: one of them is)
    proc.send_signal(signal.SIGQUIT)
    assert proc.wait(15) == 1
    assert "stopped while starting" in proc.communicate(timeout=15)[1]


def test_a_hung_on_shutdown_is_bounded_by_the_grace_period_and_cut_by_a_force(sock_dir,
                                                                              extctl):
    path = sock_dir / "d.sock"
    bounded = extctl("serve", "tests.helpers.procs:SlowLifecycle", "--uds", str(path),
                     "--grace-period",
                     "1", env={"EXTKIT_STOP_S": "600"})
    wait_for_socket(path, bounded)
    bounded.send_signal(signal.SIGTERM)
    assert bounded.wait(15) == 0
    assert "on_shutdown did not finish within 1s" in bounded.communicate(timeout=15)[1]
    forced = extctl("serve", "tests.helpers.procs:SlowLifecycle", "--uds", str(path),
                    "--grace-period",
                    "600", env={"EXTKIT_STOP_S": "600"})
    wait_for_socket(path, forced)
    forced.send_signal(signal.SIGTERM)
    _until(lambda: not path.exists(), 10, "draining")
    forced.send_signal(signal.SIGQUIT)
    assert forced.wait(15) == 1


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
def test_a_processor_whose_constructor_raises_follows_the_class_policy(sock_dir, extctl,
                                                                      fail_open):
    path = sock_dir / "c.sock"
    name = "ConstructorFailsOpen" if fail_open else "ConstructorFails"
    proc = extctl("serve", f"tests.helpers.procs:{name}", "--uds", str(path))
    wait_for_socket(path, proc)
    from tests.helpers.procs import ConstructorFails

    with _envoy_for([str(path)], sock_dir / "envoy", ConstructorFails) as envoy:
        for _ in range(3):
            reply = http(envoy.port, "/")
            assert reply.status == (200 if fail_open else 503), reply
    assert proc.poll() is None and _health(f"unix:{path}") == SERVING
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert f"{name}() failed" in proc.communicate(timeout=15)[1]


def test_a_task_a_hook_started_that_raises_systemexit_does_not_end_the_server(sock_dir,
                                                                             extctl):
    path = sock_dir / "t.sock"
    proc = extctl("serve", "tests.helpers.procs:BackgroundExit", "--uds", str(path))
    wait_for_socket(path, proc)
    for _ in range(3):
        assert _process_once(f"unix:{path}", _headers_request())
    assert proc.poll() is None and _health(f"unix:{path}") == SERVING
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert "a task raised SystemExit(5); serving on" in proc.communicate(timeout=15)[1]


def test_probes_and_admin_connections_through_a_slow_on_shutdown(sock_dir, extctl):
    """An on_shutdown that awaits is no stalled loop (/healthz stays 200, /readyz 503), and
    admin connections still open when the endpoint stops end quietly (stderr all JSON)."""
    path = sock_dir / "q.sock"
    port = free_port()
    proc = extctl("serve", "tests.helpers.procs:SlowLifecycle", "--uds", str(path), "--admin",
                  f"127.0.0.1:{port}", "--stall-timeout", "0.5", "--log-format", "json",
                  env={"EXTKIT_STOP_S": "2"})
    wait_for_socket(path, proc)
    _until(lambda: _get(port, "/readyz")[0] == 200, 20, "ready")
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(10)]
    try:
        proc.send_signal(signal.SIGTERM)
        _until(lambda: not path.exists(), 10, "draining")
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # well past the stall timeout
            assert _get(port, "/healthz")[0] == 200
            assert _get(port, "/readyz")[0] == 503
        assert proc.wait(20) == 0
    finally:
        for conn in idle:
            conn.close()
    for line in proc.communicate(timeout=15)[1].splitlines():
        assert "Task" not in json.loads(line)["message"], line


def test_a_restart_right_after_the_supervisor_is_killed_gets_the_admin_port(sock_dir, extctl):
    """Draining orphans hold no listening socket of the admin endpoint, and when they finish
    they leave the new server's sockets (at the same paths) alone."""
    path = sock_dir / "k.sock"
    port = free_port()
    args = ("serve", "tests.helpers.procs:Slow", "--uds", str(path), "--workers", "2", "--admin",
            f"127.0.0.1:{port}", "--grace-period", "20")
    proc = extctl(*args)
    sockets = ServerConfig(uds=str(path), workers=2).addresses()
    for worker_socket in sockets:
        wait_for_socket(Path(worker_socket), proc)
    workers = _children(proc.pid)
    marks = [sock_dir / f"in-{i}" for i in range(2)]
    answered: list[object] = []
    held = [threading.Thread(target=lambda s=s, m=m: answered.append(_process_once(
        f"unix:{s}", _headers_request(**{"x-sleep-ms": "4000", "x-mark": str(m)}))),
        daemon=True) for s, m in zip(sockets, marks, strict=True)]
    for thread in held:
        thread.start()
    for mark in marks:
        wait_for_path(mark)  # each old worker holds a request
    proc.kill()
    proc.wait(10)
    again = extctl(*args)
    _until(lambda: _get(port, "/readyz")[0] == 200, 20, "the new server ready")
    assert any(alive(pid) for pid in workers)  # the old ones still drain meanwhile
    for thread in held:
        thread.join(30)
    assert len(answered) == 2  # the orphans finished what they held
    _until(lambda: not any(alive(pid) for pid in workers), 20, "the orphans gone")
    for worker_socket in sockets:  # and the new server's sockets are still there
        assert _health(f"unix:{worker_socket}") == SERVING
    again.send_signal(signal.SIGTERM)
    assert again.wait(20) == 0


def test_a_worker_killed_while_draining_is_exit_1(sock_dir, extctl):
    path = sock_dir / "w.sock"
    proc = extctl("serve", "tests.helpers.procs:Slow", "--uds", str(path), "--workers", "2",
                  "--grace-period", "20")
    sockets = ServerConfig(uds=str(path), workers=2).addresses()
    for worker_socket in sockets:
        wait_for_socket(Path(worker_socket), proc)
    mark = sock_dir / "in"
    failed: list[grpc.RpcError] = []

    def hold() -> None:
        try:
            _process_once(f"unix:{sockets[0]}", _headers_request(
                **{"x-sleep-ms": "10000", "x-mark": str(mark)}))
        except grpc.RpcError as exc:
            failed.append(exc)

    held = threading.Thread(target=hold, daemon=True)
    held.start()
    wait_for_path(mark)
    proc.send_signal(signal.SIGTERM)
    _wait_not_serving(f"unix:{sockets[0]}")
    os.kill(int(mark.read_text()), signal.SIGKILL)
    assert proc.wait(20) == 1
    held.join(30)
    assert failed  # the request the killed worker held was cut


def test_the_admin_process_keeps_answering_through_a_group_sigterm(sock_dir, extctl):
    path = sock_dir / "a.sock"
    port = free_port()
    proc = extctl("serve", "tests.helpers.procs:Slow", "--uds", str(path), "--workers", "2",
                  "--admin",
                  f"127.0.0.1:{port}", "--grace-period", "10", start_new_session=True)
    sockets = ServerConfig(uds=str(path), workers=2).addresses()
    for worker_socket in sockets:
        wait_for_socket(Path(worker_socket), proc)
    _until(lambda: _get(port, "/readyz")[0] == 200, 20, "ready")
    mark = sock_dir / "in"
    held = threading.Thread(target=_process_once, args=(f"unix:{sockets[0]}", _headers_request(
        **{"x-sleep-ms": "2000", "x-mark": str(mark)})), daemon=True)
    held.start()
    wait_for_path(mark)
    for _ in range(3):
        os.killpg(proc.pid, signal.SIGTERM)
    # The drain, told by the same admin process once the workers have taken the signal (the
    # held request keeps one draining for 2 s: long enough to be seen).
    _until(lambda: _get(port, "/readyz")[0] == 503, 10, "not ready while draining")
    held.join(30)
    assert proc.wait(20) == 0
    assert "admin process exited" not in proc.communicate(timeout=15)[1]


def test_the_admin_endpoint_on_every_address_answers_ipv4_too(sock_dir, extctl):
    if not socket.has_dualstack_ipv6():
        pytest.fail("this machine has no dual-stack IPv6 sockets")
    path = sock_dir / "v.sock"
    port = free_port()
    proc = extctl("serve", "tests.helpers.procs:HeadersOnly", "--uds", str(path), "--admin",
                  f"[::]:{port}")
    wait_for_socket(path, proc)
    assert _until(lambda: _get(port, "/healthz")[0] == 200, 10, "IPv4 answer")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_an_admin_port_in_use_fails_before_on_startup_runs(sock_dir, extctl):
    path = sock_dir / "b.sock"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = extctl("serve", "tests.helpers.procs:SlowLifecycle", "--uds", str(path), "--admin",
                      f"127.0.0.1:{port}", env={"EXTKIT_START_S": "600"})
        assert proc.wait(15) == 3
    assert f"cannot listen on admin address 127.0.0.1:{port}" in proc.communicate(timeout=15)[1]


def test_the_admin_endpoint_takes_bare_lf_and_says_what_it_allows(sock_dir, extctl):
    path = sock_dir / "l.sock"
    port = free_port()
    proc = extctl("serve", "tests.helpers.procs:HeadersOnly", "--uds", str(path), "--admin",
                  f"127.0.0.1:{port}")
    wait_for_socket(path, proc)
    _until(lambda: _get(port, "/healthz")[0] == 200, 10, "up")
    for request, expected in ((b"GET /healthz HTTP/1.0\n\n", b"HTTP/1.1 200 "),
                              (b"POST /metrics HTTP/1.1\r\n\r\n", b"HTTP/1.1 405 ")):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(request)
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
        assert answer.startswith(expected), answer
    assert b"allow: GET, HEAD\r\n" in answer
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


# -- children that die with us ------------------------------------------------------------

_SPAWNER = """
import subprocess, sys, threading
from extproc.lifecycle import dies_with_us
started = []
if sys.argv[1] == "thread":  # off the main thread, unless asked: the thread may end first
    t = threading.Thread(target=lambda: started.append(dies_with_us(["sleep", "60"])))
    t.start(); t.join()
    command = started[0]
else:
    command = dies_with_us(["sleep", "60"])
child = subprocess.Popen(command)
print(child.pid, command[0] == "sleep", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("where", ["main", "thread"])
def test_a_child_started_from_the_main_thread_dies_with_its_parent(where):
    """What Envoy, the reload standby and pyvoy's Envoy are started with: a SIGKILLed parent
    takes its child along (no preexec_fn: nothing runs in the child before exec)."""
    with subprocess.Popen([sys.executable, "-c", _SPAWNER, where], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, cwd=ROOT) as spawner:
        assert spawner.stdout is not None
        pid_text, plain = spawner.stdout.readline().split()
        child = int(pid_text)
        try:
            assert plain == ("True" if where == "thread" else "False")
            if where == "thread":
                return  # started as is: nothing ties it to a thread that may end first
            # (a parent gone before the exec stops it there)
            _until(lambda: process_name(child) == "sleep", 10, "the command exec'd")
            spawner.kill()
            spawner.wait(10)
            _until(lambda: not alive(child), 10, "the child gone with its parent")
        finally:
            if alive(child):
                os.kill(child, signal.SIGKILL)


