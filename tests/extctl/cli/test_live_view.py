"""``extctl dev``'s live view as a user reads it: every request line complete (method, path and
status from Envoy's access log, matched to the processor's stream by x-request-id) whatever
phases the processor handles, a body changed at the same length said to be changed, and a
request that never reached the processor shown with what Envoy says."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.common import FAILING_START, ROOT, http

APP = '''
import extproc


class ResponseOnly(extproc.Processor):
    async def on_response_headers(self, headers):
        headers["x-answered"] = "1"


class RequestOnly(extproc.Processor):
    async def on_request_headers(self, headers):
        headers["x-asked"] = "1"


class Bodies(extproc.Processor):
    request_body_mode = extproc.BodyMode.BUFFERED

    async def on_request_body(self, body):
        if body.data == b"abc":
            body.data = b"ABC"  # the same length, other bytes
        elif body.data == b"same":
            body.data = b"same"  # assigned, unchanged
        else:
            body.data = body.data + b"!!"
'''

MS = r"[\d.]+"


class _Dev:
    """``extctl dev`` as a user runs it, its two streams read as they come."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "extctl", "dev", *args, "--port", "0"], cwd=cwd, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=lambda s=s, lines=lines: lines.extend(
            line.rstrip("\n") for line in s), daemon=True)
            for s, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()
        # "try:" once a request would succeed ("not ready yet" while the processor does not
        # start)
        self.wait(self.err, r"^(try: curl|not ready yet)")
        self.port = int(self.wait(self.err, r"^envoy: http://127\.0\.0\.1:(\d+)").group(1))

    def wait(self, lines: list[str], pattern: str, count: int = 1,
             timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in map(re.compile(pattern).search, list(lines)) if m]
            if len(found) >= count:
                return found[count - 1]
            assert self.proc.poll() is None, self.err
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r}: {self.out} {self.err}")

    def stop(self) -> list[str]:
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(30) == 0, self.err
        for reader in self.readers:
            reader.join(10)
        return self.out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(15)
        for reader in self.readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def dev(tmp_path):
    (tmp_path / "live_app.py").write_text(APP)
    running: list[_Dev] = []

    def start(*args: str) -> _Dev:
        made = _Dev(*args, "--app-dir", str(tmp_path), cwd=tmp_path)
        running.append(made)
        return made

    yield start
    for made in running:
        made.kill()


def _matches(lines: list[str], patterns: list[str]) -> None:
    assert len(lines) == len(patterns), lines
    for line, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)


def test_a_processor_without_a_request_hook_shows_envoy_s_method_and_path(dev):
    running = dev("live_app:ResponseOnly")
    assert http(running.port, "/orders?id=7", method="DELETE").status == 200
    # A later request is shown as it completes too (Envoy writes its access log in batches,
    # every 10 s by default).
    assert http(running.port, "/second").status == 200
    running.wait(running.out, r"^GET /second ", timeout=3)
    _matches(running.stop(), [
        r"DELETE /orders\?id=7 -> 200 in \d+ ms \(sent: response_headers\)",
        rf"  response_headers {MS} ms: set x-answered",
        r"GET /second -> 200 in \d+ ms \(sent: response_headers\)",
        rf"  response_headers {MS} ms: set x-answered",
    ])


def test_a_processor_without_a_response_hook_shows_envoy_s_status(dev):
    running = dev("live_app:RequestOnly", "--output", "json")
    assert http(running.port, "/missing", headers={"x-request-id": "ignored"}).status == 200
    running.wait(running.out, r"^\{")
    (line,) = running.stop()
    view = json.loads(line)
    assert (view["method"], view["path"], view["status"]) == ("GET", "/missing", 200)
    assert view["sent"] == ["request_headers"]
    assert view["hooks"][0]["set"] == ["x-asked"]
    assert re.fullmatch(r"[0-9a-f-]{36}", view["request_id"])  # Envoy's, not the client's
    assert isinstance(view["ms"], int) and isinstance(view["processor_ms"], float)


def test_a_body_changed_at_the_same_length_is_said_to_be_changed(dev):
    running = dev("live_app:Bodies")
    for body in (b"abc", b"same", b"abc!"):
        assert http(running.port, "/b", method="POST", body=body).status == 200
        running.wait(running.out, r"^  request_body ", count=[b"abc", b"same", b"abc!"].index(
            body) + 1)
    _matches(running.stop(), [
        r"POST /b -> 200 in \d+ ms \(sent: request_body\)",
        rf"  request_body {MS} ms: body changed \(3 bytes\)",
        r"POST /b -> 200 in \d+ ms \(sent: request_body\)",
        rf"  request_body {MS} ms: no change",
        r"POST /b -> 200 in \d+ ms \(sent: request_body\)",
        rf"  request_body {MS} ms: body 4 -> 6 bytes",
    ])


def test_a_request_the_processor_never_saw_is_shown_with_envoy_s_reason(dev, tmp_path):
    # The first code does not start (on_startup raises): no child serves, Envoy answers itself.
    app = tmp_path / "live_app.py"
    asked = '        headers["x-asked"] = "1"\n'
    app.write_text(APP.replace(asked, asked + FAILING_START, 1))
    running = dev("live_app:RequestOnly", "--reload")
    running.wait(running.err, r"^not ready yet")
    assert http(running.port, "/broken").status == 500
    running.wait(running.out, r"^GET /broken ")
    app.write_text(APP)  # fixed: the processor serves, and dev says so
    running.wait(running.err, r"^try: curl")
    assert http(running.port, "/ok").status == 200
    running.wait(running.out, r"^GET /ok -> 200 ")
    _matches(running.stop(), [
        r"GET /broken -> 500 in \d+ ms \(no stream to the processor\) \[envoy: "
        r"ext_proc_error_gRPC_error_14\{.*No_such_file_or_directory.*\]",
        r"GET /ok -> 200 in \d+ ms \(sent: request_headers\)",
        rf"  request_headers {MS} ms: set x-asked",
    ])
