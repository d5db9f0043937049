"""An HTTP/1.1 upstream that answers with what it received, as JSON: for tests and ``extctl dev``.

Request headers steer the answer (the processor under test sees them too):

- ``x-echo-chunks: ["a", "b"]`` answer with these chunks (chunked encoding) instead of JSON,
  flushing each and pausing ``x-echo-chunk-delay-ms`` (default 50) between them;
- ``x-echo-trailers: {"name": "value"}`` end a chunked answer with these trailers;
- ``x-echo-delay-ms: N`` wait N ms before answering (a slow in-flight request);
- ``x-echo-status: N`` answer with status N.

Every answer carries ``x-echo-server: HOST:PORT``, this server's address, so a test with several
upstreams can tell which one answered.

``EchoServer(answer=fn)`` answers with ``fn(method, path, headers, body) -> (status, headers,
body, trailers)`` instead: ``body`` as bytes goes out with a content-length, a list of chunks
chunked (each flushed, 150 ms apart), trailers (a dict, may be empty) at the end of a chunked
body.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .framing import chunk, last_chunk

if TYPE_CHECKING:
    from typing_extensions import Self

Answer = Callable[[str, str, list[tuple[str, str]], bytes],
                  tuple[int, dict[str, str], "bytes | list[bytes]", dict[str, str]]]
"""A scripted upstream: (method, path, headers, body) -> (status, headers, body or chunks,
trailers)."""

logger = logging.getLogger("extctl.upstream")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "extctl-echo"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
    # and delayed ACKs add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        if getattr(self.server, "verbose", False):
            logger.info(format, *args)

    def _read_body(self) -> tuple[bytes, bool, list[list[str]]]:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    trailers = []
                    while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                        name, _, value = line.decode("latin-1").partition(":")
                        trailers.append([name.strip().lower(), value.strip()])
                    return bytes(data), True, trailers
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b"", False, []

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        address = self.server.server_address
        assert isinstance(address, tuple)
        self.send_header("x-echo-server", f"{address[0]!s}:{address[1]}")

    def _end_chunked(self) -> None:
        trailers = json.loads(self.headers.get("x-echo-trailers") or "{}")
        self.wfile.write(last_chunk(trailers.items()))
        self.wfile.flush()

    def _scripted(self, answer: Answer, body: bytes) -> None:
        status, headers, content, trailers = answer(
            self.command, self.path, [(k.lower(), v) for k, v in self.headers.items()], body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if isinstance(content, bytes):
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for index, data in enumerate(content):
            if index:
                # each chunk its own read (even on a busy machine), so Envoy frames it alone
                time.sleep(0.15)
            self.wfile.write(chunk(data))
            self.wfile.flush()
        self.wfile.write(last_chunk(trailers.items()))
        self.wfile.flush()

    def _handle(self) -> None:
        body, chunked, trailers = self._read_body()
        answer = getattr(self.server, "answer", None)
        if answer is not None:
            self._scripted(answer, body)
            return
        delay = int(self.headers.get("x-echo-delay-ms") or 0)
        if delay:
            time.sleep(delay / 1000)
        status = int(self.headers.get("x-echo-status") or 200)
        chunks = self.headers.get("x-echo-chunks")
        if chunks is not None:
            pause = int(self.headers.get("x-echo-chunk-delay-ms") or 50) / 1000
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for index, text in enumerate(json.loads(chunks)):
                self.wfile.write(chunk(text.encode()))
                self.wfile.flush()
                if index < len(json.loads(chunks)) - 1:
                    time.sleep(pause)
            self._end_chunked()
            return
        answer = json.dumps({
            "method": self.command,
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body": body.decode("latin-1"),
            "body_length": len(body),
            "chunked": chunked,
            "trailers": trailers,
        }).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if self.headers.get("x-echo-trailers"):
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.wfile.write(chunk(answer))
            self._end_chunked()
            return
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class ServedOnThread:
    """An HTTP server answering on its own thread: ``address`` (``"127.0.0.1:PORT"``),
    ``start``/``stop``, or a ``with`` block."""

    def __init__(self, server: ThreadingHTTPServer, name: str) -> None:
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True, name=name)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EchoServer(ServedOnThread):
    """``with EchoServer() as echo: echo.address`` -> ``"127.0.0.1:PORT"``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, verbose: bool = False,
                 answer: Answer | None = None) -> None:
        server = ThreadingHTTPServer((host, port), _Handler)
        server.verbose = verbose  # type: ignore[attr-defined]
        server.answer = answer  # type: ignore[attr-defined]
        super().__init__(server, "extctl-echo")
