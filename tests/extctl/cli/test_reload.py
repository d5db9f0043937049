"""``--reload``: an edit reaches the next request without restarting Envoy; a broken edit is
reported and a fixed one recovers by itself."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from tests.helpers.common import ROOT, http

pytestmark = pytest.mark.envoy

APP = '''import os

import extproc


class App(extproc.Processor):
    async def on_request_headers(self, headers):
        headers["x-version"] = "{version}"
        headers["x-pid"] = str(os.getpid())
{extra}'''

RESPONSE_HOOK = '''
    async def on_response_headers(self, headers):
        headers["x-response-version"] = "{version}"
'''


def _write(path: Path, version: str, extra: str = "") -> None:
    # Write then rename, as editors do: the watcher sees one complete file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(APP.format(version=version, extra=extra))
    os.replace(tmp, path)


class Dev:
    def __init__(self, proc: subprocess.Popen[str], err: Path) -> None:
        self.proc = proc
        self.err = err
        self.port = 0
        self.lines: list[str] = []
        self._read = 0  # of err's text, by wait_for

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The next line of the banner, the reload notices and the logs (stderr) matching
        ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.err.read_text()[self._read:].splitlines(keepends=True):
                if not line.endswith("\n"):
                    break  # being written
                self._read += len(line)
                found = re.search(pattern, line)
                if found:
                    return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in stderr: {self.err.read_text()[-3000:]}")

    def view(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The next line of the live view (stdout, which carries nothing else) matching
        ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            self.lines.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no {pattern!r} in {self.lines}; stderr: "
                             f"{self.err.read_text()[-3000:]}")

    def envoy_pids(self) -> set[int]:
        """The Envoy processes this dev stack started (its descendants)."""
        from tests.helpers.common import _descendants

        envoys = set()
        for pid in _descendants(self.proc.pid):
            try:
                command = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if command[0].endswith(b"/envoy"):
                envoys.add(pid)
        return envoys


@pytest.fixture
def dev(tmp_path) -> Iterator[Any]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> Dev:
        err = tmp_path / f"stderr-{len(started)}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": str(ROOT)}
        with err.open("w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "extctl", *args], text=True,
                                    env=env, stdout=subprocess.PIPE, stderr=stderr,
                                    stdin=subprocess.DEVNULL)
        started.append(proc)
        return Dev(proc, err)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _until(predicate, timeout: float) -> float:
    """Seconds until ``predicate()`` holds (AssertionError after ``timeout``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


def _version(port: int) -> str | None:
    return _served(port)[0]


def _served(port: int) -> tuple[str | None, int | None]:
    """The version that answered a request, and the pid of the process that ran it."""
    reply = http(port, "/")
    if reply.status != 200:
        return None, None
    seen = reply.upstream_headers()
    return seen.get("x-version", [None])[0], int(seen["x-pid"][0]) if "x-pid" in seen else None


def _standbys(reloader: int) -> set[int]:
    """The interpreters the reloader started from extctl.harness.standby (the one serving,
    and the one waiting, imports done, for the next start)."""
    from tests.helpers.common import _descendants

    found = set()
    for pid in _descendants(reloader):
        with contextlib.suppress(OSError):
            if b"extctl.harness.standby" in (Path("/proc") / str(pid) / "cmdline").read_bytes():
                found.add(pid)
    return found


def _gone(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] \
            == "Z"
    except FileNotFoundError:
        return True


def _reload_runs_in_the_warm_interpreter(reloader: int, port: int, app: Path) -> None:
    """Edit ``app`` (from version 1 to 2): the next requests run the new code, in the
    interpreter that was waiting, imports done, before the edit; the old one has stopped."""
    version, old = _served(port)
    assert version == "1" and old is not None
    warm = _standbys(reloader) - {old}
    assert len(warm) == 1, warm
    _write(app, "2")
    _until(lambda: _version(port) == "2", 10)
    version, new = _served(port)
    assert version == "2" and new in warm
    assert _gone(old)


def test_dev_reload_applies_an_edit_and_recovers_from_a_broken_one(dev, tmp_path):
    app = tmp_path / "reloaded_app.py"
    _write(app, "1")
    running = dev("dev", "reloaded_app:App", "--app-dir", str(tmp_path), "--port", "0",
                  "--reload", "--output", "json")
    port = int(running.wait_for(r"try: curl -i http://127\.0\.0\.1:(\d+)/").group(1))
    running.wait_for(r"reload: on")
    _until(lambda: _version(port) == "1", 10)  # the child serves
    envoy_before = running.envoy_pids()
    assert len(envoy_before) == 1

    _reload_runs_in_the_warm_interpreter(running.proc.pid, port, app)
    # The child that serves prints the live view: the request it answered, what it set.
    assert '"set":["x-version","x-pid"]' in running.view(r'^\{"method":"GET".*\}$').group(0)

    app.write_text("import extproc\nclass App(extproc.Processor:\n")  # a syntax error
    _until(lambda: http(port, "/").status >= 500, 5)  # Envoy fails closed meanwhile
    # the error, as one block (printed by the new child, which may come after the old one
    # stopped serving)
    _until(lambda: "SyntaxError: invalid syntax" in running.err.read_text(), 5)
    _until(lambda: "does not import" in running.err.read_text(), 5)

    _write(app, "3")
    _until(lambda: _version(port) == "3", 5)
    assert running.envoy_pids() == envoy_before  # Envoy kept running throughout
    running.proc.send_signal(signal.SIGINT)
    assert running.proc.wait(30) == 0


def test_dev_reload_restarts_envoy_when_the_class_asks_for_other_phases(dev, tmp_path):
    app = tmp_path / "phases_app.py"
    _write(app, "1")
    running = dev("dev", "phases_app:App", "--app-dir", str(tmp_path), "--port", "0",
                  "--reload")
    port = int(running.wait_for(r"try: curl -i http://127\.0\.0\.1:(\d+)/").group(1))
    _until(lambda: _version(port) == "1", 10)
    assert "x-response-version" not in http(port, "/").headers

    _write(app, "2", RESPONSE_HOOK.format(version="2"))
    running.wait_for(r"phases: request_headers, response_headers")
    running.wait_for(r"reload: Envoy restarted on port (\d+)")
    _until(lambda: http(port, "/").headers.get("x-response-version") == "2", 5)


def test_dev_reload_picks_up_a_rebuilt_local_wasm_module(dev, tmp_path):
    source = (ROOT / "tests/helpers/wat/add_header.wat").read_text()
    module = tmp_path / "filter.wasm"
    module.write_bytes(wasmtime.wat2wasm(source))
    running = dev("dev", "--wasm", str(module), "--port", "0", "--reload",
                  "--reload-dir", str(tmp_path))
    port = int(running.wait_for(r"try: curl -i http://127\.0\.0\.1:(\d+)/").group(1))
    before = http(port, "/").headers.get("x-wasm")
    assert before == "added"
    rebuilt = tmp_path / "filter.wasm.new"
    rebuilt.write_bytes(wasmtime.wat2wasm(source.replace('"added"', '"again"')))
    os.replace(rebuilt, module)
    running.wait_for(r"reload: Envoy restarted on port (\d+)")
    assert http(port, "/").headers.get("x-wasm") == "again"


def test_serve_reload_serves_the_new_code_through_envoy(tmp_path):
    from extctl.config import Deployment
    from extctl.harness.echo import EchoServer
    from extctl.testing import EnvoyProcess
    from tests.helpers.procs import HeadersOnly

    app = tmp_path / "served_app.py"
    _write(app, "1")
    sock_dir = Path(tempfile.mkdtemp(prefix="xk-reload-", dir="/tmp"))  # AF_UNIX: short paths
    sock = sock_dir / "r.sock"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    err = tmp_path / "serve.log"
    with err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "extctl", "serve", "served_app:App",
                                 "--uds", str(sock), "--app-dir", str(tmp_path), "--reload"],
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                stdin=subprocess.DEVNULL)
    try:
        _until(sock.exists, 20)
        # Envoy from the config of a class asking for the same phase (request headers).
        config = Deployment(HeadersOnly, [str(sock)])
        with EchoServer() as echo, EnvoyProcess(
                Deployment(HeadersOnly, [str(sock)], upstreams=[echo.address])
                .envoy_bootstrap(), tmp_path / "envoy") as envoy:
            assert config.spec is not None
            _until(lambda: _version(envoy.port) == "1", 10)
            _reload_runs_in_the_warm_interpreter(proc.pid, envoy.port, app)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)
