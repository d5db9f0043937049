"""Both ends of a request through Envoy, byte for byte: a client that sends exactly the body
chunks and trailers it is given (HTTP/1.1 chunked, or HTTP/2 frames with the ``h2`` package),
and a scripted upstream that answers each request as told and records what it received.

No pauses between chunks: Envoy may join or split them, so what is compared must not depend
on where the chunks were cut.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

Pairs = list[tuple[str, str]]
CASE = "x-case"
"""The header that tags a request with its case: the upstream answers and records by it."""
DEADLINE = 20.0


@dataclass
class Seen:
    """One HTTP message as one end received it."""

    headers: Pairs
    body: bytes = b""
    trailers: Pairs | None = None
    complete: bool = True
    """False when the message was cut off (a reset stream, a closed connection)."""

    def get(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    @property
    def status(self) -> int:
        return int(self.get(":status") or 0)


@dataclass
class Message:
    """What one end sends: the body as chunks (an empty list: no body at all), trailers or
    None, and whether an HTTP/1.1 body goes chunked (else with its content-length)."""

    headers: Pairs
    chunks: list[bytes] = field(default_factory=list)
    trailers: Pairs | None = None
    chunked: bool = False
    gate: threading.Event | None = None
    """(An upstream's answer) sent up to its first chunk, the rest once this is set."""

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def framing(self, h2: bool = False) -> Pairs:
        """The headers that frame the body as the sender sends them. HTTP/1.1: chunked (asked
        for, or for trailers), else a content-length when there is a body (``[b""]``:
        ``content-length: 0``), else none. HTTP/2: a content-length when the body is not
        empty and not ``chunked`` (``[b""]`` is an empty DATA frame that ends the stream)."""
        if h2:
            return ([("content-length", str(len(self.body)))]
                    if any(self.chunks) and not self.chunked else [])
        if self.chunked or self.trailers is not None:
            return [("transfer-encoding", "chunked")]
        return [("content-length", str(len(self.body)))] if self.chunks else []

    def double_body(self, h2: bool = False) -> list[bytes]:
        """The body as ``extproc.testing.run`` takes it for the same message: the chunks that
        carry bytes, or ``[b""]`` for an HTTP/2 empty DATA frame (a chunked message's empty
        body follows from its transfer-encoding header)."""
        if h2 and self.chunks == [b""]:
            return [b""]
        return [c for c in self.chunks if c]


# -- HTTP/1.1 framing ------------------------------------------------------------------------

def _h1_body(message: Message) -> tuple[Pairs, bytes]:
    framing = message.framing()
    headers = list(message.headers) + framing
    if framing and framing[0][0] == "transfer-encoding":
        out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in message.chunks if c)
        out += b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode("latin-1")
                                   for k, v in message.trailers or []) + b"\r\n"
        return headers, out
    return headers, message.body


class Cut(EOFError):
    """The connection closed mid-body: ``data`` is what had arrived."""

    def __init__(self, data: bytes) -> None:
        super().__init__("connection closed mid-body")
        self.data = data


def _read_line(stream: socket.SocketIO | object, limit: int = 65536) -> bytes:
    line = stream.readline(limit)  # type: ignore[attr-defined]
    if not line.endswith(b"\n"):
        raise EOFError("connection closed mid-line")
    return bytes(line)


def _read_fields(stream: object) -> Pairs:
    pairs: Pairs = []
    while (line := _read_line(stream)) not in (b"\r\n", b"\n"):
        name, _, value = line.decode("latin-1").partition(":")
        pairs.append((name.strip().lower(), value.strip()))
    return pairs


def _read_h1_body(stream: object, headers: Pairs, bodiless: bool,
                  request: bool = False) -> tuple[bytes, Pairs | None]:
    """A body as its framing says: chunked (and trailers), a content-length, else a request
    has none and a response runs to the close."""
    names = dict(headers)
    if bodiless or (request and "content-length" not in names
                    and names.get("transfer-encoding", "").lower() != "chunked"):
        return b"", None
    if names.get("transfer-encoding", "").lower() == "chunked":
        data = bytearray()
        while True:
            try:
                size = int(_read_line(stream).split(b";")[0], 16)
                if size == 0:
                    trailers = _read_fields(stream)
                    return bytes(data), trailers or None
            except (EOFError, OSError):
                raise Cut(bytes(data)) from None
            chunk = stream.read(size + 2)  # type: ignore[attr-defined]
            data += chunk[:size]
            if len(chunk) != size + 2:
                raise Cut(bytes(data))
    if "content-length" in names:
        length = int(names["content-length"])
        data = stream.read(length)  # type: ignore[attr-defined]
        if len(data) != length:
            raise Cut(bytes(data))
        return bytes(data), None
    return bytes(stream.read()), None  # type: ignore[attr-defined]


def send_h1(port: int, request: Message, method: str = "POST", path: str = "/",
            on_headers: Callable[[], None] | None = None) -> Seen:
    """One request on a new HTTP/1.1 connection; the response as received (``complete`` False
    when Envoy closed the connection before its end). ``on_headers`` is called once the
    response's headers are in."""
    headers, body = _h1_body(request)
    head = f"{method} {path} HTTP/1.1\r\nhost: example.com\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        # Envoy may answer (and close) before the whole request went: read the answer.
        with contextlib.suppress(OSError):
            sock.sendall(head.encode("latin-1") + body)
        stream = sock.makefile("rb")
        try:
            status_line = _read_line(stream).decode("latin-1").split()
            response = [(":status", status_line[1]), *_read_fields(stream)]
        except (EOFError, OSError):
            return Seen([], complete=False)
        if on_headers is not None:
            on_headers()
        try:
            data, trailers = _read_h1_body(stream, response, method == "HEAD"
                                           or status_line[1] in ("204", "304"))
        except Cut as cut:
            return Seen(response, cut.data, None, complete=False)
        return Seen(response, data, trailers)


def send_h2(port: int, request: Message, method: str = "POST", path: str = "/",
            on_headers: Callable[[], None] | None = None) -> Seen:
    """One request on a new HTTP/2 connection (prior knowledge): HEADERS, one DATA frame per
    chunk (an empty one when the list holds only ``b""``), then trailers; the response as
    received (``complete`` False when Envoy reset the stream)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                 header_encoding="latin-1"))
    conn.initiate_connection()
    headers = [(":method", method), (":path", path), (":scheme", "http"),
               (":authority", "example.com"), *request.headers, *request.framing(h2=True)]
    ends_at_headers = not request.chunks and request.trailers is None
    conn.send_headers(1, headers, end_stream=ends_at_headers)
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(conn.data_to_send())
        pending = list(request.chunks)
        response: Pairs = []
        trailers: Pairs | None = None
        body = bytearray()
        deadline = time.monotonic() + DEADLINE
        trailers_due = request.trailers is not None
        while True:
            while pending:
                room = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
                if pending[0] and room <= 0:
                    break  # until Envoy opens the window
                piece, rest = pending[0][:room], pending[0][room:]
                if rest:
                    pending[0] = rest
                else:
                    pending.pop(0)
                conn.send_data(1, piece, end_stream=not pending and request.trailers is None)
            if not pending and trailers_due:
                trailers_due = False
                conn.send_headers(1, request.trailers, end_stream=True)
            sock.sendall(conn.data_to_send())
            if time.monotonic() > deadline:
                raise TimeoutError("no end of the HTTP/2 response")
            data = sock.recv(65536)
            if not data:
                return Seen(response, bytes(body), trailers, complete=False)
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    response = [(k, v) for k, v in event.headers]  # type: ignore[misc]
                    if on_headers is not None:
                        on_headers()
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = [(k, v) for k, v in event.headers]  # type: ignore[misc]
                elif isinstance(event, h2.events.StreamEnded):
                    return Seen(response, bytes(body), trailers)
                elif isinstance(event, h2.events.StreamReset):
                    return Seen(response, bytes(body), trailers, complete=False)
            sock.sendall(conn.data_to_send())


# -- the upstream ----------------------------------------------------------------------------

class Upstream:
    """An HTTP/1.1 upstream on 127.0.0.1 that answers each request with the :class:`Message`
    scripted for its ``x-case`` (200 and no body when none) and records what it received,
    by case: a request cut off mid-body is recorded with ``complete`` False."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, Message]] = {}
        self.received: dict[str, Seen] = {}
        self._arrived = threading.Condition()
        upstream = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while upstream._one(self.rfile, self.wfile):
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler,
                                                      bind_and_activate=False)
        self.server.daemon_threads = True
        self.server.allow_reuse_address = True
        self.server.server_bind()
        self.server.server_activate()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _one(self, rfile: object, wfile: object) -> bool:
        try:
            line = _read_line(rfile).decode("latin-1").split()
        except (EOFError, OSError):
            return False
        method, path = line[0], line[1]
        headers = [(":method", method), (":path", path), *_read_fields(rfile)]
        case = dict(headers).get(CASE, "")
        try:
            body, trailers = _read_h1_body(rfile, headers, False, request=True)
        except (EOFError, OSError):
            self._record(case, Seen(headers, b"", None, complete=False))
            return False
        self._record(case, Seen(headers, body, trailers))
        status, answer = self.answers.get(case, (200, Message([])))
        out_headers, out_body = _h1_body(answer)
        if not answer.framing() and "content-length" not in dict(answer.headers):
            out_headers.append(("content-length", "0"))  # else the body ends at the close
        if method == "HEAD" or status in (204, 304):
            out_body = b""  # the headers alone, whatever they say of a body
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in out_headers)
        first = b""
        if answer.gate is not None and answer.chunks:  # the head and the first chunk, then wait
            chunked = out_headers[-1][0] == "transfer-encoding"
            framing = out_body.index(b"\r\n") + 4 if chunked else 0
            first = out_body[:framing + len(answer.chunks[0])]
            out_body = out_body[len(first):]
        try:
            wfile.write(head.encode("latin-1") + b"\r\n" + first)  # type: ignore[attr-defined]
            wfile.flush()  # type: ignore[attr-defined]
            if answer.gate is not None:
                answer.gate.wait(DEADLINE)
            wfile.write(out_body)  # type: ignore[attr-defined]
            wfile.flush()  # type: ignore[attr-defined]
        except OSError:
            return False
        return True

    def _record(self, case: str, seen: Seen) -> None:
        with self._arrived:
            self.received[case] = seen
            self._arrived.notify_all()

    def wait(self, case: str, timeout: float = 5.0) -> Seen | None:
        """What the upstream received for ``case``, once it has (None if nothing within
        ``timeout``: a request Envoy never sent on)."""
        with self._arrived:
            self._arrived.wait_for(lambda: case in self.received, timeout)
            return self.received.get(case)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def pairs_named(pairs: Sequence[tuple[str, str]] | None, names: Sequence[str]) -> Pairs:
    """``pairs`` restricted to ``names``, in their order."""
    return [(k, v) for k, v in pairs or [] if k in names]


def chunks_of(data: bytes, cuts: Sequence[int]) -> Iterator[bytes]:
    """``data`` cut at the given offsets (sorted, within the data)."""
    start = 0
    for cut in sorted(set(cuts)):
        if 0 < cut < len(data):
            yield data[start:cut]
            start = cut
    yield data[start:]
