"""What a user reads when something fails: one error line (never a log line and the same error
again), gRPC's own log lines kept out, flags named as flags (the libraries name parameters),
the user's own frames when their module or hook raised, the module to give for a file path,
and the workers' sockets ``health`` finds next to the path it was given."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import extproc
import registry
from extctl.config import Deployment, GatewayError, GatewayOptions, Policy, Target
from tests.helpers.common import ROOT, wait_for_socket
from tests.helpers.procs import HeadersOnly

# Every line a command prints, on each stream: nothing more may be there.
Run = subprocess.CompletedProcess


def _extctl(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> Run[str]:
    import os

    return subprocess.run([sys.executable, "-m", "extctl", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@contextlib.contextmanager
def _taken_port() -> Iterator[int]:
    """A loopback port another process's socket listens on, the port below it free."""
    for _ in range(50):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port - 1))
            except OSError:
                holder.close()
                continue
        holder.listen()
        try:
            yield port
        finally:
            holder.close()
        return
    raise AssertionError("no pair of loopback ports")


def test_a_taken_port_is_one_error_line_without_grpc_s_own(tmp_path):
    with _taken_port() as port:
        alone = _extctl("serve", "tests.helpers.procs:HeadersOnly", "--address",
                        f"127.0.0.1:{port}")
        # The second worker's port is the taken one: the supervisor says so once.
        workers = _extctl("serve", "tests.helpers.procs:HeadersOnly", "--address",
                          f"127.0.0.1:{port - 1}", "--workers", "2", "--log-level", "warning")
    assert alone.returncode == 3
    assert alone.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert alone.stdout == ""
    assert workers.returncode == 3
    assert workers.stderr == (f"error: cannot listen on 127.0.0.1:{port}: Address already in "
                              "use\n")


def test_option_names_are_flags_on_the_command_line_and_parameters_in_the_library():
    neither = _extctl("serve", "tests.helpers.procs:HeadersOnly")
    assert (neither.returncode, neither.stderr) == (
        2, "error: give exactly one of --uds (a Unix socket path) or --address (host:port)\n")
    with pytest.raises(extproc.ServeError) as raised:
        extproc.ServerConfig()
    assert str(raised.value) == ("give exactly one of uds (a Unix socket path) or address "
                                 "(host:port)")

    hops = _extctl("gen", "gateway", "tests.helpers.procs:HeadersOnly", "--route", "r",
                   "--uds", "/run/x/p.sock", "--xff-trusted-hops", "1")
    assert (hops.returncode, hops.stderr) == (
        2, "error: X-Forwarded-For trusted hops (--xff-trusted-hops) are set on a Gateway "
           "(ClientTrafficPolicy): name it (--client-gateway) or target one\n")
    # The README's Deployment(...) example, with the same mistake, in Python.
    with pytest.raises(GatewayError) as raised_gateway:
        Deployment(HeadersOnly, addresses=["/run/x/p.sock"], policy=Policy(xff_trusted_hops=1),
                   gateway=GatewayOptions(targets=[Target("HTTPRoute", "r")])).render()
    assert str(raised_gateway.value) == (
        "X-Forwarded-For trusted hops (xff_trusted_hops) are set on a Gateway "
        "(ClientTrafficPolicy): name it (client_gateway) or target one")

    sidecar = _extctl("gen", "gateway", "tests.helpers.procs:HeadersOnly", "--route", "r",
                      "--address", "10.0.0.1:9000", "--sidecar-image", "registry.example/p:1")
    assert (sidecar.returncode, sidecar.stderr) == (
        2, "error: a sidecar is reached over a Unix socket: give --uds as the socket's "
           "absolute path (Envoy Gateway refuses loopback IPs)\n")

    plain = _extctl("pull", "http://example.com/m.wasm", "-o", "/nonexistent/m.wasm")
    assert (plain.returncode, plain.stderr) == (
        9, "error: http://example.com/m.wasm: plain http:// is refused; use https:// (plain "
           "HTTP only to loopback, with --insecure)\n")
    with pytest.raises(registry.InvalidReference) as raised_registry:
        registry.pull_http("http://example.com/m.wasm", "/nonexistent/m.wasm", sha256=None)
    assert str(raised_registry.value).endswith("(plain HTTP only to loopback, with insecure)")


def test_a_module_that_fails_to_import_shows_its_own_frames_and_exits_4(tmp_path, sock_dir):
    (tmp_path / "guard.py").write_text("import extproc\n\nfrom helpers import KEY\n")
    (tmp_path / "helpers.py").write_text("import os\n\nraise LookupError('GUARD_KEY is not set')\n")
    done = _extctl("serve", "guard:Guard", "--uds", str(sock_dir / "g.sock"), "--app-dir",
                   str(tmp_path))
    assert done.returncode == 4
    assert done.stderr.splitlines() == [
        "error: importing module 'guard' failed: LookupError: GUARD_KEY is not set",
        f'  File "{tmp_path}/guard.py", line 3, in <module>',
        "    from helpers import KEY",
        f'  File "{tmp_path}/helpers.py", line 3, in <module>',
        "    raise LookupError('GUARD_KEY is not set')",
    ]
    assert done.stdout == ""

    (tmp_path / "typo.py").write_text("import extproc\n\nclass Guard(extproc.Processor:\n")
    syntax = _extctl("serve", "typo:Guard", "--uds", str(sock_dir / "g.sock"), "--app-dir",
                     str(tmp_path))
    assert syntax.returncode == 4
    assert syntax.stderr.startswith("error: importing module 'typo' failed: SyntaxError: ")
    assert syntax.stderr.splitlines()[1:3] == [f'  File "{tmp_path}/typo.py", line 3',
                                               "    class Guard(extproc.Processor:"]


def test_a_failing_on_startup_is_said_once_with_its_frames(tmp_path, sock_dir):
    (tmp_path / "bad_start.py").write_text(
        "import extproc\n"
        "class P(extproc.Processor):\n"
        "    @classmethod\n"
        "    async def on_startup(cls):\n"
        "        raise ConnectionError('cache unreachable')\n")
    frames = [f'  File "{tmp_path}/bad_start.py", line 5, in on_startup',
              "    raise ConnectionError('cache unreachable')"]
    alone = _extctl("serve", "bad_start:P", "--uds", str(sock_dir / "b.sock"), "--app-dir",
                    str(tmp_path))
    assert alone.returncode == 3
    assert alone.stderr.splitlines() == [
        "error: P.on_startup failed: ConnectionError: cache unreachable", *frames]
    workers = _extctl("serve", "bad_start:P", "--uds", str(sock_dir / "w.sock"), "--app-dir",
                      str(tmp_path), "--workers", "2", "--log-level", "warning")
    assert workers.returncode == 3
    first, *rest = workers.stderr.splitlines()
    assert first in [f"error: worker on {sock_dir}/w-{i}.sock: P.on_startup failed: "
                     "ConnectionError: cache unreachable" for i in (0, 1)]
    assert rest == frames


def test_a_file_path_for_module_class_is_answered_with_the_module(tmp_path, sock_dir):
    given = _extctl("serve", "examples/header_auth.py:HeaderAuth", "--uds",
                    str(sock_dir / "h.sock"))
    assert (given.returncode, given.stderr) == (
        4, "error: 'examples/header_auth.py' is a file path; give its module and directory: "
           "header_auth:HeaderAuth with --app-dir examples\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "guard.py").write_text("import extproc\n")
    in_package = _extctl("serve", "app/guard.py:Guard", "--uds", str(sock_dir / "h.sock"),
                         cwd=tmp_path)
    assert (in_package.returncode, in_package.stderr) == (
        4, "error: 'app/guard.py' is a file path; give its module: app.guard:Guard\n")


def test_the_module_suggested_for_a_file_path_serves(tmp_path, sock_dir, started):
    import os

    path = sock_dir / "h.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "extctl", "serve", "header_auth:HeaderAuth", "--app-dir",
         "examples", "--uds", str(path)], cwd=ROOT, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "EXTKIT_AUTH_KEY": "k" * 32})
    started.append(proc)
    wait_for_socket(path, proc)
    assert _extctl("health", "--uds", str(path)).returncode == 0


def test_health_says_each_worker_once_and_names_the_sockets_it_found(sock_dir, started):
    import os

    base = sock_dir / "p.sock"
    proc = subprocess.Popen([sys.executable, "-m", "extctl", "serve",
                             "tests.helpers.procs:HeadersOnly", "--uds", str(base), "--workers",
                             "2"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    started.append(proc)
    for index in (0, 1):
        wait_for_socket(sock_dir / f"p-{index}.sock", proc)
    without = _extctl("health", "--uds", str(base))
    assert without.returncode == 11
    assert without.stdout == (f"{base}: UNREACHABLE (no socket there, but {sock_dir}/p-0.sock "
                              f"and {sock_dir}/p-1.sock are: a server's workers; check them "
                              "with --workers 2)\n")
    assert without.stderr == ""  # the line above says it: no error line repeats it
    with_workers = _extctl("health", "--uds", str(base), "--workers", "2")
    assert (with_workers.returncode, with_workers.stderr) == (0, "")
    assert with_workers.stdout == f"{sock_dir}/p-0.sock: SERVING\n{sock_dir}/p-1.sock: SERVING\n"

    gone = _extctl("health", "--uds", str(sock_dir / "other.sock"))
    assert (gone.returncode, gone.stdout, gone.stderr) == (
        11, f"{sock_dir}/other.sock: UNREACHABLE (no socket there)\n", "")
