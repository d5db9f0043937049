"""``extctl serve`` as a real process: signals, sockets, health, workers, TLS, bad input."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extctl.config import Deployment
from extctl.testing import EnvoyProcess
from extproc import SERVICE_NAME
from extproc.testing import ServerThread
from tests.helpers.common import http, wait_for_socket
from tests.helpers.procs import HeadersOnly, Slow
from tests.helpers.serve import (
    NOT_SERVING,
    SERVING,
    _envoy_for,
    _health,
    _wait_not_serving,
    serve,
    wait_for_path,
)


def _server_pids(pid: int) -> set[str]:
    """The process and its children (the pyvoy transport serves from a child Envoy)."""
    pids = {str(pid)}
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids.update((task / "children").read_text().split())
    return pids


def test_health_answers_serving_over_the_unix_socket(sock_dir, extctl, transport):
    path = sock_dir / "h.sock"
    proc = serve(extctl, transport, "tests.helpers.procs:HeadersOnly", "--uds", str(path),
                 "--socket-mode", "600")
    try:
        wait_for_socket(path, proc)
        assert _health(f"unix:{path}") == SERVING
        assert _health(f"unix:{path}", SERVICE_NAME) == SERVING
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert not path.exists()


def test_health_reports_not_serving_while_draining(sock_dir, transport):
    server = ServerThread(HeadersOnly, uds=str(sock_dir / "d.sock"), transport=transport).start()
    channel = grpc.insecure_channel(server.target)
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=20)
        assert next(watch).status == SERVING
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 2})
        stopper.start()
        assert next(watch).status == NOT_SERVING
        stopper.join(20)
        assert not stopper.is_alive()
    finally:
        channel.close()


class _Stderr:
    """A running process's stderr, read as it comes (os.read: no line is left in a buffer
    that select cannot see); ``rest()`` adds what it writes until it exits."""

    def __init__(self, proc) -> None:
        self.proc = proc
        self.text = ""

    def wait_for(self, text: str, count: int = 1, timeout: float = 20) -> None:
        """Until ``text`` has been logged ``count`` times."""
        fd = self.proc.stderr.fileno()
        deadline = time.monotonic() + timeout
        while self.text.count(text) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not logged {count} times: {self.text}"
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                assert chunk, f"the process exited: {self.text}"
                self.text += chunk.decode(errors="replace")

    def rest(self) -> str:
        return self.text + self.proc.communicate(timeout=15)[1]


def _held(envoy_port: int, sock_dir: Path, name: str) -> tuple[threading.Thread, dict, Path]:
    """A request held in Slow's hook until the file it returns exists (the thread has not
    started: start it, then wait for ``sock_dir / name``, created once the request is in)."""
    result: dict[str, object] = {}
    release = sock_dir / f"{name}.release"

    def request() -> None:
        try:
            result["reply"] = http(envoy_port, "/", headers={"x-mark": str(sock_dir / name),
                                                             "x-release": str(release)})
        except OSError as exc:
            result["error"] = exc

    return threading.Thread(target=request, daemon=True), result, release


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT),
                                           (signal.SIGTERM, signal.SIGQUIT)],
                         ids=["ctrl-c-twice", "sigquit"])
def test_an_explicit_second_signal_cuts_in_flight_streams_and_exits_1(
        sock_dir, extctl, transport, first, second):
    path = sock_dir / "f.sock"
    proc = serve(extctl, transport, "tests.helpers.procs:Slow", "--uds", str(path),
                 "--grace-period", "60")
    try:
        wait_for_socket(path, proc)
        with _envoy_for([str(path)], sock_dir / "envoy") as envoy:
            slow, result, release = _held(envoy.port, sock_dir, "inside")
            slow.start()
            wait_for_path(sock_dir / "inside")
            proc.send_signal(first)
            _wait_not_serving(f"unix:{path}")
            proc.send_signal(second)
            # The hook is never released and the grace is 60 s: only a cut ends it now.
            assert proc.wait(15) == 1
            slow.join(20)
            assert not release.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not path.exists()
    # The cut stream fails the request closed: the hook never answered it.
    assert result["reply"].status == 500, result  # type: ignore[attr-defined]


def _wait_serving(target: str, proc, timeout: float = 20) -> None:
    """Until the server answers SERVING on ``target``."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate(timeout=15)
        try:
            if _health(target) == SERVING:
                return
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, f"{target} never answered SERVING"
        time.sleep(0.02)


@pytest.mark.parametrize("signals", [
    (signal.SIGTERM,),
    # systemd, `timeout`, a container runtime: SIGTERM to the process and then to the group
    (signal.SIGTERM, signal.SIGTERM, signal.SIGTERM),
    # a closed terminal
    (signal.SIGHUP, signal.SIGHUP, signal.SIGTERM),
], ids=["sigterm", "sigterm-repeated", "sighup"])
def test_sigterm_or_sighup_lets_the_in_flight_request_finish_then_exits_0(
        sock_dir, extctl, transport, signals):
    """However often they come, none of these cuts the request in flight."""
    path = sock_dir / "r.sock"
    proc = serve(extctl, transport, "tests.helpers.procs:Slow", "--uds", str(path),
                 "--grace-period", "30")
    log = _Stderr(proc)
    try:
        wait_for_socket(path, proc)
        pids = _server_pids(proc.pid)
        with _envoy_for([str(path)], sock_dir / "envoy") as envoy:
            slow, result, release = _held(envoy.port, sock_dir, "inside")
            slow.start()
            wait_for_path(sock_dir / "inside")  # the request is inside the processor's hook
            proc.send_signal(signals[0])
            _wait_not_serving(f"unix:{path}")
            log.wait_for("draining")
            for count, sig in enumerate(signals[1:], 1):
                proc.send_signal(sig)
                log.wait_for("again: the drain goes on", count)  # taken, while held
            assert proc.poll() is None
            release.touch()  # every signal is in: now the hook may end
            slow.join(20)
            assert result["reply"].status == 200  # type: ignore[attr-defined]
            assert result["reply"].headers["x-worker-pid"] in pids  # type: ignore[attr-defined]
            assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not path.exists()
    stderr = log.rest()
    assert "draining" in stderr
    assert stderr.count("again: the drain goes on") == len(signals) - 1


def test_stale_socket_file_is_replaced(sock_dir, extctl, transport):
    path = sock_dir / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays; nothing listens
    assert path.exists()
    proc = serve(extctl, transport, "tests.helpers.procs:HeadersOnly", "--uds", str(path))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if _health(f"unix:{path}") == SERVING:
                    break
            except grpc.RpcError:
                time.sleep(0.1)
        assert _health(f"unix:{path}") == SERVING
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_socket_in_use_is_refused_with_exit_3(sock_dir, extctl, transport):
    path = sock_dir / "busy.sock"
    busy = socket.socket(socket.AF_UNIX)
    busy.bind(str(path))
    busy.listen()
    try:
        proc = serve(extctl, transport, "tests.helpers.procs:HeadersOnly", "--uds", str(path))
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 3
        assert "already listening" in err and str(path) in err
        assert "Traceback" not in err
        assert path.exists()  # the other server's socket is left alone
    finally:
        busy.close()


def test_not_a_socket_is_refused(sock_dir, extctl, transport):
    path = sock_dir / "file.sock"
    path.write_text("data")
    proc = serve(extctl, transport, "tests.helpers.procs:HeadersOnly", "--uds", str(path))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert "is not a socket" in err
    assert path.read_text() == "data"


@pytest.mark.parametrize(("spec", "message"), [
    ("no_such_module:Thing", "module 'no_such_module' not found"),
    ("tests.helpers.procs:Missing", "has no attribute 'Missing'"),
    ("tests.helpers.procs:asyncio", "not an extproc.Processor subclass"),
    ("tests.helpers.procs", "is not module:Class"),
])
def test_bad_module_class_spec_exits_4_with_one_line(sock_dir, spec, message, extctl):
    proc = extctl("serve", spec, "--uds", str(sock_dir / "x.sock"))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 4
    assert message in err
    assert err.strip().count("\n") == 0
    assert "Traceback" not in err


def test_import_error_inside_the_users_module_is_shown_as_is(sock_dir, tmp_path, extctl):
    (tmp_path / "broken_app.py").write_text("import not_installed_dependency\n")
    proc = extctl("serve", "broken_app:P", "--uds", str(sock_dir / "x.sock"),
                  "--app-dir", str(tmp_path))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "No module named 'not_installed_dependency'" in err
    assert "module 'broken_app' not found" not in err


@pytest.mark.parametrize("args", [
    ["--uds", "/tmp/a.sock", "--address", "127.0.0.1:9000"],
    [],
    ["--address", "127.0.0.1:0", "--workers", "2"],
    ["--uds", "/tmp/" + "x" * 120 + ".sock"],
])
def test_contradictory_options_exit_2(args, extctl):
    proc = extctl("serve", "tests.helpers.procs:HeadersOnly", *args)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.startswith("error: ")


def test_two_workers_both_serve_through_envoy(sock_dir, extctl, transport):
    path = sock_dir / "w.sock"
    proc = serve(extctl, transport, "tests.helpers.procs:Slow", "--uds", str(path), "--workers",
                 "2")
    sockets = [sock_dir / "w-0.sock", sock_dir / "w-1.sock"]
    try:
        for worker_socket in sockets:
            wait_for_socket(worker_socket, proc)
        with _envoy_for([str(s) for s in sockets], sock_dir / "envoy") as envoy:
            pids = {http(envoy.port, "/").headers["x-worker-pid"] for _ in range(20)}
        assert len(pids) == 2
        assert str(proc.pid) not in pids  # the supervisor only supervises
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not any(s.exists() for s in sockets)


def test_tcp_address_in_use_exits_3(extctl, transport):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve(extctl, transport, "tests.helpers.procs:HeadersOnly", "--address",
                     f"127.0.0.1:{port}")
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert "cannot listen on 127.0.0.1:" in err


def test_env_vars_configure_serve(sock_dir, extctl):
    path = sock_dir / "env.sock"
    proc = extctl("serve", "tests.helpers.procs:HeadersOnly",
                  env={"EXTCTL_SERVE_UDS": str(path), "EXTCTL_SERVE_SOCKET_MODE": "640"})
    try:
        wait_for_socket(path, proc)
        _wait_serving(f"unix:{path}", proc)
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_on_startup_and_on_shutdown_run_in_the_server_process(sock_dir, tmp_path, extctl,
                                                              transport):
    marker = tmp_path / "lifecycle.log"
    (tmp_path / "life_app.py").write_text(
        "import extproc\n"
        f"LOG = {str(marker)!r}\n"
        "class P(extproc.Processor):\n"
        "    @classmethod\n"
        "    async def on_startup(cls):\n"
        "        open(LOG, 'a').write('startup\\n')\n"
        "    @classmethod\n"
        "    async def on_shutdown(cls):\n"
        "        open(LOG, 'a').write('shutdown\\n')\n"
        "    async def on_request_headers(self, headers):\n"
        "        pass\n")
    path = sock_dir / "life.sock"
    proc = serve(extctl, transport, "life_app:P", "--uds", str(path), "--app-dir", str(tmp_path))
    wait_for_socket(path, proc)
    assert marker.read_text() == "startup\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0
    assert marker.read_text() == "startup\nshutdown\n"


def test_failing_on_startup_exits_3(sock_dir, tmp_path, extctl, transport):
    (tmp_path / "bad_start.py").write_text(
        "import extproc\n"
        "class P(extproc.Processor):\n"
        "    @classmethod\n"
        "    async def on_startup(cls):\n"
        "        raise ConnectionError('cache unreachable')\n")
    path = sock_dir / "bad.sock"
    proc = serve(extctl, transport, "bad_start:P", "--uds", str(path), "--app-dir", str(tmp_path))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert "cache unreachable" in err
    assert not path.exists()


def test_serve_async_api_in_process(sock_dir, transport):
    import extproc

    async def main() -> int:
        config = extproc.ServerConfig(uds=str(sock_dir / "api.sock"),
                                        transport=transport)
        async with extproc.make_server(HeadersOnly, config) as server:
            channel = grpc.aio.insecure_channel(server.target)
            async with channel:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=5)
            return int(response.status)

    assert asyncio.run(main()) == SERVING
    assert not (sock_dir / "api.sock").exists()


def test_out_of_order_messages_get_invalid_argument_and_the_server_keeps_serving(sock_dir,
                                                                                 transport):
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    headers = pb.ProcessingRequest(request_headers=pb.HttpHeaders(end_of_stream=False))
    # Slow also handles response headers, so the stream stays open after request headers.
    with ServerThread(Slow, uds=str(sock_dir / "o.sock"), transport=transport) as server, \
            grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            list(stub.Process(iter([headers, headers]), timeout=10))
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request_headers received twice" in failure.value.details()
        with pytest.raises(grpc.RpcError) as empty:
            list(stub.Process(iter([pb.ProcessingRequest()]), timeout=10))
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        answers = list(stub.Process(iter([headers]), timeout=10))
        assert [a.WhichOneof("response") for a in answers] == ["request_headers"]
        mutation = answers[0].request_headers.response.header_mutation
        assert [(h.header.key, h.header.raw_value) for h in mutation.set_headers] == [
            ("x-slept", b"1")]


@pytest.mark.parametrize(("loop", "expected"), [("auto", "uvloop"), ("uvloop", "uvloop"),
                                                ("asyncio", "asyncio")])
def test_event_loop_choice(sock_dir, extctl, echo, loop, expected, transport):
    from tests.helpers.procs import LoopKind

    path = sock_dir / "loop.sock"
    proc = serve(extctl, transport, "tests.helpers.procs:LoopKind", "--uds", str(path), "--loop",
                 loop)
    try:
        wait_for_socket(path, proc)
        config = Deployment.build(LoopKind, addresses=[str(path)], upstreams=[echo.address])
        with EnvoyProcess(config.envoy_bootstrap(), sock_dir / "envoy") as envoy:
            reply = http(envoy.port, "/")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert reply.upstream_headers()["x-loop"] == [expected]


def test_unknown_loop_is_a_config_error():
    import extproc

    with pytest.raises(extproc.ServeError, match="loop must be auto, uvloop or asyncio"):
        extproc.ServerConfig(uds="/tmp/x.sock", loop="trio")


def test_a_message_over_max_message_bytes_gets_resource_exhausted(sock_dir, transport):
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    big = pb.ProcessingRequest(request_body=pb.HttpBody(body=b"x" * 8192, end_of_stream=True))
    with ServerThread(HeadersOnly, uds=str(sock_dir / "m.sock"), max_message_bytes=4096,
                      transport=transport) as server, \
            grpc.insecure_channel(server.target) as channel, \
            pytest.raises(grpc.RpcError) as failure:
        list(pb_grpc.ExternalProcessorStub(channel).Process(iter([big]), timeout=10))
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_pyvoy_missing_is_a_one_line_config_error(monkeypatch, tmp_path):
    import extproc

    monkeypatch.setenv("EXTPROC_PYVOY_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(extproc.ServeError, match=r"needs pyvoy 1\.3\.0 in .*nowhere; install it "
                       r"with: .* -m extproc\.transports\.pyvoy_install --target .*nowhere$"):
        extproc.ServerConfig(uds="/tmp/x.sock", transport="pyvoy")


def test_pyvoy_refuses_a_processor_it_cannot_import_by_name():
    import extproc

    class Local(extproc.Processor):
        async def on_request_headers(self, headers):
            pass

    config = extproc.ServerConfig(uds="/tmp/x.sock", transport="pyvoy")
    with pytest.raises(extproc.ServeError, match="imports Local by name in the Envoy process"):
        extproc.make_server(Local, config)


def _workers_in_own_group(sock_dir, extctl):
    """``extctl serve --workers 2`` in its own process group, as a shell runs it."""
    path = sock_dir / "g.sock"
    proc = extctl("serve", "tests.helpers.procs:Slow", "--uds", str(path), "--workers", "2",
                  "--grace-period", "30", start_new_session=True)
    sockets = [sock_dir / "g-0.sock", sock_dir / "g-1.sock"]
    for worker_socket in sockets:
        wait_for_socket(worker_socket, proc)
    return proc, sockets


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_on_workers_drains_and_a_second_one_forces(sock_dir, extctl, presses):
    """Ctrl-C (SIGINT to the whole group) once: the in-flight request finishes, exit 0, the
    sockets removed. Twice: the hook is never released and the grace is 30 s, so only the cut
    ends it: exit 1, the request failed closed (500)."""
    proc, sockets = _workers_in_own_group(sock_dir, extctl)
    try:
        with _envoy_for([str(s) for s in sockets], sock_dir / "envoy") as envoy:
            slow, result, release = _held(envoy.port, sock_dir, "inside")
            slow.start()
            wait_for_path(sock_dir / "inside")  # inside a worker's hook
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole group
            for worker_socket in sockets:  # the supervisor took it and told both workers
                _wait_not_serving(f"unix:{worker_socket}")
            assert proc.poll() is None
            if presses == 1:
                release.touch()
            else:
                os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(15) == presses - 1
            slow.join(20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert result["reply"].status == (200 if presses == 1 else 500), result  # type: ignore[attr-defined]
    if presses == 1:
        assert not any(s.exists() for s in sockets)
