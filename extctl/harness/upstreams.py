"""Scripted upstreams served for real, for :func:`extctl.testing.compare_with_envoy`: the same
handler that answers a filter's callouts in the emulator answers them through Envoy, as an
HTTP server (a plain handler) or a grpcio server (gRPC calls and streams, through
:func:`wasm.calls.dispatch`, the emulator's own). What each upstream received is recorded
in the form both runs are compared in; what a real upstream cannot do (time out or reset
on cue, send what gRPC refuses) is collected in ``failures``, not half-done.
:class:`HttpUpstream` is the exchanges' own upstream, trailers both ways.
"""

from __future__ import annotations

import base64
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from extproc.exchange import HeaderView, Message, Upstream, answer_of, call_upstream
from wasm.calls import Call, GrpcStream, Handler, ScriptedUpstream, dispatch, reply_of
from wasm.errors import CalloutFailure

from .echo import ServedOnThread
from .framing import chunk, last_chunk

Headers = Sequence[tuple[str, str]] | Mapping[str, str]
Ours = Callable[[Headers], dict[str, str]]

# What Envoy's gRPC client and the emulator add around a handler's metadata, and what grpcio
# writes on its own: not written again.
_OWN = frozenset({":status", "content-type", "x-envoy-upstream-service-time", "grpc-status",
                  "grpc-message", "grpc-accept-encoding", "grpc-encoding"})
_METADATA_NAME = re.compile(r"^[0-9a-z_.-]+$")
_MAX_GRPC_STATUS = 16
NOT_ON_CUE = ("a real upstream cannot be made to time out or reset on cue; test that with "
              "ProxyWasm alone")
CHUNK_DELAY = 0.15
"""Seconds between an answer's chunks: each its own read, so Envoy frames each alone."""

Pairs = list[tuple[str, str]]


def call_view(cluster: str, headers: Sequence[tuple[str, str]], body: bytes,
              ours: Ours) -> dict[str, Any]:
    """An HTTP callout as its upstream received it."""
    found = dict(headers)
    return {"cluster": cluster, "method": found.get(":method"), "path": found.get(":path"),
            "authority": found.get(":authority"), "headers": ours(headers), "body": body}


def stream_view(cluster: str, service: str, method: str, metadata: Sequence[tuple[str, str]],
                messages: Sequence[bytes], ours: Ours) -> dict[str, Any]:
    """A gRPC call or stream as its upstream received it (binary metadata by name only:
    its value is text in the filter and bytes to a gRPC server)."""
    shown = [(k, "(binary)" if k.endswith("-bin") else v) for k, v in metadata]
    return {"cluster": cluster, "service": service, "method": method,
            "metadata": ours(shown), "messages": list(messages)}


def http_answer(cluster: str, handler: Handler, calls: list[dict[str, Any]],
                failures: list[str], ours: Ours) -> Any:
    """``handler`` as a real HTTP upstream's answer function (:mod:`extctl.harness.echo`)."""

    def answer(method: str, target: str, headers: list[tuple[str, str]],
               body: bytes) -> tuple[int, dict[str, str], bytes, dict[str, str]]:
        pseudo = [(":method", method), (":path", target),
                  (":authority", next((v for k, v in headers if k.lower() == "host"), ""))]
        pairs = pseudo + [(k.lower(), v) for k, v in headers]
        calls.append(call_view(cluster, pairs, body, ours))
        try:
            reply = reply_of(handler(Call("http", cluster, pairs, body, [], 0, 0, 0)))
        except CalloutFailure as failure:
            failures.append(f"the scripted upstream for cluster {cluster!r} raised "
                            f"{type(failure).__name__}: {NOT_ON_CUE}")
            return 500, {}, b"", {}
        except Exception as exc:
            failures.append(f"the scripted upstream for cluster {cluster!r} raised "
                            f"{type(exc).__name__}: {exc}")
            return 500, {}, b"", {}
        return reply.http_status(), dict(reply.header_pairs()), reply.body, {}

    return answer


class GrpcUpstream:
    """A grpcio server on 127.0.0.1 serving every method of ``cluster`` with ``handler``."""

    def __init__(self, cluster: str, handler: ScriptedUpstream, failures: list[str],
                 tokens: Iterator[int]) -> None:
        from concurrent import futures

        import grpc

        self.cluster = cluster
        self.handler = handler
        self.failures = failures
        self.tokens = tokens  # one numbering for every server of a run, the emulator's
        self.streams: list[GrpcStream] = []
        self.active = 0
        self._lock = threading.Lock()
        self._codes = {code.value[0]: code for code in grpc.StatusCode}
        upstream = self

        class Generic(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: Any) -> Any:
                return grpc.stream_stream_rpc_method_handler(
                    lambda requests, context: upstream._talk(details.method, requests,
                                                             context))

        self._pool = futures.ThreadPoolExecutor(8, thread_name_prefix="extkit-grpc-upstream")
        self.server = grpc.server(self._pool)
        self.server.add_generic_rpc_handlers([Generic()])
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def start(self) -> GrpcUpstream:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(0).wait(5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def settle(self, timeout: float = 5.0, quiet: float = 0.1) -> None:
        """Wait until no call is in flight and none has started for ``quiet`` seconds (a
        stream the filter cancelled may reach the server after the client's response)."""
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline:
            with self._lock:
                active, started = self.active, len(self.streams)
            if active == 0 and started == seen:
                return
            seen = started if active == 0 else -1
            time.sleep(quiet)

    def _fail(self, why: str) -> None:
        self.failures.append(f"the scripted upstream for cluster {self.cluster!r} {why}")

    def _talk(self, full_method: str, requests: Any, context: Any) -> Any:
        import grpc

        service, _, method = full_method.lstrip("/").rpartition("/")
        woken: queue.SimpleQueue[None] = queue.SimpleQueue()
        metadata = [(m.key, m.value if isinstance(m.value, str)
                     else base64.b64encode(m.value).decode()) for m in
                    context.invocation_metadata()]
        with self._lock:
            self.active += 1
            token = next(self.tokens)
        stream = GrpcStream(self.cluster, service, method, metadata, token, 0,
                            wake=lambda s: woken.put(None))
        with self._lock:
            self.streams.append(stream)

        def read() -> None:
            cancelled = False
            try:
                dispatch(self.handler, stream, "open", b"")
                for message in requests:
                    if stream.status is not None:
                        break
                    stream.received.append(message)
                    dispatch(self.handler, stream, "message", message)
                if stream.status is None and context.is_active():
                    stream.half_closed = True
                    dispatch(self.handler, stream, "half_close", b"")
            except grpc.RpcError:
                cancelled = True  # the call ended under the iteration: the filter reset it
            except CalloutFailure as failure:
                self._fail(f"raised {type(failure).__name__}: {NOT_ON_CUE}")
                _end(stream)
            except Exception as exc:
                self._fail(f"raised {type(exc).__name__}: {exc}")
                _end(stream)
            finally:
                if stream.status is None and (cancelled or not context.is_active()):
                    stream.cancelled = True
                    try:
                        dispatch(self.handler, stream, "cancel", b"")
                    except Exception as exc:
                        self._fail(f"raised {type(exc).__name__}: {exc}")
                woken.put(None)

        context.add_callback(lambda: woken.put(None))  # the call ended: stop waiting
        reader = threading.Thread(target=read, daemon=True, name="extkit-grpc-upstream")
        reader.start()
        try:
            while context.is_active():
                woken.get()
                messages, closed = self._write(stream, context)
                yield from messages
                if closed:
                    return
                if (not reader.is_alive() and stream.half_closed and stream.status is None
                        and not stream.to_filter):
                    self._fail(f"never ended gRPC stream {service}/{method} after the filter "
                               "ended its side (close it in half_closed)")
                    context.set_code(grpc.StatusCode.INTERNAL)
                    return
        finally:
            with self._lock:
                self.active -= 1

    def _write(self, stream: GrpcStream, context: Any) -> tuple[list[bytes], bool]:
        """What the handler sent since the last turn: metadata and the close written on
        ``context``, the messages returned (for the call's generator to yield), and whether
        the stream is closed."""
        import grpc

        messages: list[bytes] = []
        while stream.to_filter:
            event = stream.to_filter.popleft()
            try:
                if event.kind == "metadata" and event.pairs:
                    context.send_initial_metadata(self._metadata(event.pairs))
                elif event.kind == "message":
                    messages.append(event.data)
                elif event.kind == "close":
                    code, message = stream.status or (0, "")
                    if not event.pairs and code == 13 and not message:
                        self._fail(f"reset a stream: {NOT_ON_CUE}")
                    if code > _MAX_GRPC_STATUS:
                        self._fail(f"closed a stream with status {code}, which gRPC cannot "
                                   f"send (0..{_MAX_GRPC_STATUS})")
                    context.set_trailing_metadata(self._metadata(event.pairs))
                    context.set_code(self._codes.get(code, grpc.StatusCode.UNKNOWN))
                    context.set_details(message)
                    return messages, True
            except ValueError as exc:
                self._fail(str(exc))
                context.set_code(grpc.StatusCode.INTERNAL)
                return messages, True
        return messages, False

    @staticmethod
    def _metadata(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str | bytes]]:
        """What a handler gave, as grpcio writes it; ValueError for what gRPC refuses."""
        written: list[tuple[str, str | bytes]] = []
        for name, value in pairs:
            if name in _OWN:
                continue
            if not _METADATA_NAME.match(name) or (name.startswith("grpc-")
                                                  and name != "grpc-status-details-bin"):
                raise ValueError(f"sent metadata {name!r}, a name gRPC refuses (lower-case "
                                 "letters, digits, '_', '.', '-'; not grpc-*)")
            if name.endswith("-bin"):
                written.append((name, value.encode("latin-1")))
            elif not all(" " <= c <= "~" for c in value):
                raise ValueError(f"sent metadata {name}: {value!r}, which gRPC refuses "
                                 "(printable ASCII only, or a -bin name)")
            else:
                written.append((name, value))
        return written


def _end(stream: GrpcStream) -> None:
    """Close a stream whose handler failed (the failure is reported), so that the call ends."""
    if stream.status is None and not stream.cancelled:
        stream.close(13, "the scripted upstream failed")


class _Answering(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and chunks go out in separate writes
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read(self) -> tuple[list[bytes], Pairs, bool]:
        """The request's body chunks and trailers (chunked, or as long as its
        content-length), and whether it came whole (Envoy resets a request it gave up on)."""
        if self.headers.get("transfer-encoding", "").lower() != "chunked":
            length = int(self.headers.get("content-length") or 0)
            data = self.rfile.read(length) if length else b""
            return ([data] if data else []), [], len(data) == length
        chunks: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            if not line.endswith(b"\n"):
                return chunks, [], False
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if not size:
                break
            chunk = self.rfile.read(size)
            if len(chunk) < size or not self.rfile.readline(3).endswith(b"\n"):
                return [*chunks, chunk] if chunk else chunks, [], False
            chunks.append(chunk)
        trailers: Pairs = []
        while (line := self.rfile.readline(65537)) not in (b"\r\n", b"\n"):
            if not line.endswith(b"\n"):
                return chunks, trailers, False
            name, _, value = line.decode("latin-1").partition(":")
            trailers.append((name.strip().lower(), value.strip()))
        return chunks, trailers, True

    def _answer(self) -> None:
        upstream = self.server.upstream
        headers = [(k.lower(), v) for k, v in self.headers.items()]
        tag = next((v for k, v in headers if k == upstream.tag), None)
        with upstream.changed:
            upstream.started += 1
            upstream.active += 1
        try:
            chunks, trailers, complete = self._read()
        except OSError:
            chunks, trailers, complete = [], [], False
        authority = next((v for k, v in headers if k == "host"), "")
        request = Message(
            HeaderView([(":method", self.command), (":path", self.path),
                        (":authority", authority), (":scheme", "http"),
                        *[(k, v) for k, v in headers if k not in ("host", upstream.tag)]]),
            b"".join(chunks), chunks, HeaderView(trailers) if trailers else None,
            complete=complete)
        with upstream.changed:
            upstream.received.append((tag, request))
            upstream.active -= 1
            upstream.changed.notify_all()
        if not complete:
            self.close_connection = True
            return
        try:
            answer = upstream.answers.get(tag, upstream.answer) if tag else upstream.answer
            status, answer_headers, content, answer_trailers = answer_of(
                call_upstream(answer, request))
        except Exception as exc:  # the test's own callback: reported to the test, not here
            with upstream.changed:
                upstream.failures.append((tag, exc))
            status, answer_headers, content, answer_trailers = 500, [], b"", None
        self.send_response_only(status)  # no Server or Date: only what the answer says
        for name, value in answer_headers:
            self.send_header(name, value)
        if self.command == "HEAD" or status in (204, 304):
            self.end_headers()  # no body, whatever the answer holds
            return
        if isinstance(content, bytes) and answer_trailers is None:
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for index, data in enumerate([content] if isinstance(content, bytes) else content):
            if index:
                time.sleep(CHUNK_DELAY)
            self.wfile.write(chunk(data))
            self.wfile.flush()
        self.wfile.write(last_chunk(answer_trailers or ()))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # every method
            return self._answer
        raise AttributeError(name)


class _Server(ThreadingHTTPServer):
    upstream: HttpUpstream

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Envoy closing a connection it reset (or is done with) is not an error to print
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class HttpUpstream(ServedOnThread):
    """An HTTP/1.1 upstream on 127.0.0.1 answering each request as ``answer(request) ->
    answer`` says (:mod:`extproc.exchange`: the request a Message with ``:method``,
    ``:path``, ``:authority`` from Host; the answer a Message or ``(status, headers, body[,
    trailers])``): a body as bytes with a content-length, as a list of chunks chunked
    (:data:`CHUNK_DELAY` apart) and then the trailers. It sends only those headers and the
    framing one.

    Every request is recorded in ``received`` as it arrived, with the value of its ``tag``
    header (taken out of what the answer and the record see), and answered by
    ``answers[that value]`` when there is one: a request Envoy reset midway is recorded
    with ``complete=False``. ``settle(n)`` waits until ``n`` requests have
    arrived and none is still being read. An exception of ``answer`` is kept in ``failures``
    with the request's tag (the client gets a 500). No body goes with a response to HEAD, a
    204 or a 304; a body with trailers goes chunked.
    """

    def __init__(self, answer: Upstream, tag: str = "") -> None:
        server = _Server(("127.0.0.1", 0), _Answering)
        server.upstream = self
        self.answer = answer
        self.answers: dict[str, Upstream] = {}
        self.tag = tag
        self.started = 0
        self.active = 0
        self.received: list[tuple[str | None, Message]] = []
        self.failures: list[tuple[str | None, Exception]] = []
        self.changed = threading.Condition()
        super().__init__(server, "extkit-http-upstream")

    def settle(self, arrived: int, timeout: float = 10) -> bool:
        """Wait until ``arrived`` requests have come and none is being read; False when that
        does not happen within ``timeout`` seconds."""
        with self.changed:
            return self.changed.wait_for(
                lambda: self.started >= arrived and not self.active, timeout)

    def failure(self, tag: str) -> Exception | None:
        """The exception the answer raised for the request with ``tag``, taken out."""
        with self.changed:
            for index, (failed, exc) in enumerate(self.failures):
                if failed == tag:
                    del self.failures[index]
                    return exc
        return None

    def take(self, tag: str) -> list[Message]:
        """The requests recorded with ``tag``, removed from the record."""
        with self.changed:
            found = [m for t, m in self.received if t == tag]
            self.received = [(t, m) for t, m in self.received if t != tag]
            return found
