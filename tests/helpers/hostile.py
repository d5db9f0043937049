"""Small misbehaving HTTP servers on loopback (stdlib only), and ``extctl`` run as a measured
subprocess: exit code, output, peak RSS."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

Handler = Callable[["Request"], None]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Server:
    origin: str  # http(s)://127.0.0.1:PORT
    host: str  # 127.0.0.1:PORT
    seen: list[Seen] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


class Request(BaseHTTPRequestHandler):
    """The handler a test writes: ``self.reply(...)`` or raw writes to ``self.wfile``."""

    protocol_version = "HTTP/1.1"
    route: Handler
    server_info: Server

    def log_message(self, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.server_info.seen.append(Seen(self.command, self.path,
                                          {k.lower(): v for k, v in self.headers.items()}))
        with suppress(BrokenPipeError, ConnectionResetError):
            type(self).route(self)
        self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _handle

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
              ) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@contextmanager
def serve(route: Handler, *, tls: dict[str, Path] | None = None) -> Iterator[Server]:
    """A threaded server on 127.0.0.1 answering with ``route``; stopped even when a test
    fails."""
    handler = type("Route", (Request,), {"route": staticmethod(route)})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    port = httpd.server_address[1]
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls["server.pem"], tls["server.key"])
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    info = Server(f"{'https' if tls else 'http'}://127.0.0.1:{port}", f"127.0.0.1:{port}")
    handler.server_info = info
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield info
    finally:
        httpd.shutdown()
        httpd.server_close()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_for(layers: list[dict[str, Any]], config: bytes = b"{}",
                 media_type: str = "application/vnd.oci.image.manifest.v1+json") -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": len(config)},
        "layers": layers}).encode()


def layer(data: bytes, media_type: str = "application/vnd.oci.image.layer.v1.tar+gzip",
          size: int | None = None) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest(data),
            "size": len(data) if size is None else size}


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mib: float
    seconds: float


_MEASURE = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(rc)\n"
)


def extctl(*args: str, tmp: Path, stdin: str | None = None, env: dict[str, str] | None = None,
           timeout: float = 90) -> Run:
    """``extctl ARGS`` in a subprocess whose only child it is: the peak RSS that
    ``getrusage(RUSAGE_CHILDREN)`` reports around it is extctl's alone."""
    rss_file = tmp / f"rss-{time.monotonic_ns()}"
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(rss_file), sys.executable, "-m", "extctl", *args],
        input=stdin, capture_output=True, text=True, timeout=timeout, env=full_env,
        errors="replace")
    seconds = time.monotonic() - started
    peak = int(rss_file.read_text()) / 1024 if rss_file.exists() else -1.0
    return Run(done.returncode, done.stdout, done.stderr, peak, seconds)


def assert_clean_failure(run: Run, code: int, out: Path | None = None) -> None:
    """The visible contract of a refused input: the exit code, one ``error:`` line and no
    traceback on stderr, nothing at ``-o``, no temporary file beside it."""
    assert run.returncode == code, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "\x1b" not in run.stderr and "\x07" not in run.stderr
    if out is not None:
        assert not out.exists()
        assert [p.name for p in out.parent.glob(f".{out.name}*")] == []


def fake_registry(manifests: dict[str, tuple[bytes, str]], blobs: dict[str, bytes]
                  ) -> Handler:
    """A read-only registry from memory: ``manifests[reference] = (bytes, media type)``,
    ``blobs[digest] = bytes``; manifests are also served by their digest."""
    by_digest = {digest(data): (data, kind) for data, kind in manifests.values()}

    def route(req: Request) -> None:
        path = req.path.split("?")[0]
        if path == "/v2/":
            req.reply(200, b"{}")
            return
        if "/manifests/" in path:
            ref = path.rsplit("/manifests/", 1)[1]
            found = manifests.get(ref) or by_digest.get(ref)
            if found:
                req.reply(200, found[0], {"Content-Type": found[1]})
                return
        if "/blobs/" in path:
            data = blobs.get(path.rsplit("/blobs/", 1)[1])
            if data is not None:
                req.reply(200, data, {"Content-Type": "application/octet-stream"})
                return
        req.reply(404, b'{"errors":[{"code":"NOT_FOUND"}]}')

    return route
