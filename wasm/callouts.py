"""Host functions for callouts: ``proxy_http_call``, ``proxy_grpc_call`` (unary),
``proxy_grpc_stream``/``proxy_grpc_send``, ``proxy_grpc_cancel``/``proxy_grpc_close`` and
``proxy_get_status``, with Envoy's checks (an HTTP call's cluster must exist and it needs
``:method``, ``:path`` and ``:authority``; a negative timeout is refused; a gRPC service
given as a plain cluster name must name one; tokens count in fours, their two low bits the
kind, as proxy-wasm-cpp-host hands them out: HTTP calls 4, 8, ..., gRPC calls 5, 9, ...,
gRPC streams 6, 10, ...; each function takes only its kinds). A call is recorded and
answered once the running callback returns, as Envoy's dispatcher would
(:mod:`wasm.context` delivers it); so is what a stream's upstream is told and answers.

A stream follows Envoy's wasm context: ``proxy_grpc_close`` half-closes it (the upstream
may still answer, and the filter still gets its messages and close); ``proxy_grpc_cancel``
resets it (no callback after); a send with end of stream half-closes it too; the token
stays valid until the filter has cancelled it, or closed it with the upstream's close
delivered (in either order); until then a send after the upstream's end goes nowhere, as in
Envoy."""

from __future__ import annotations

from collections import deque

from .abi import MapType, Status, deserialize_map
from .calls import GRPC_UNAVAILABLE, NO_CLUSTER, Call, Delivery, GrpcStream
from .headers import HeaderMap
from .memory import Memory
from .state import GRPC_CALL, GRPC_STREAM, HTTP_CALL, KIND_MASK, PluginState

_REQUIRED = (":method", ":path", ":authority")


class CalloutFunctions:
    def __init__(self, state: PluginState, memory: Memory) -> None:
        self.state = state
        self.memory = memory

    def _raw_pairs(self, function: str, ptr: int, size: int) -> list[tuple[bytes, bytes]]:
        try:
            return deserialize_map(self.memory.read(function, ptr, size))
        except ValueError:
            return []

    def _pairs(self, function: str, ptr: int, size: int) -> list[tuple[str, str]]:
        return [(k.decode("latin-1").lower(), v.decode("latin-1"))
                for k, v in self._raw_pairs(function, ptr, size)]

    def proxy_http_call(self, upstream_ptr: int, upstream_size: int, headers_ptr: int,
                        headers_size: int, body_ptr: int, body_size: int, trailers_ptr: int,
                        trailers_size: int, timeout_ms: int, token_ptr: int) -> int:
        name = "proxy_http_call"
        cluster = self.memory.text(name, upstream_ptr, upstream_size)
        # Envoy makes the call's headers a request header map: "host" is :authority there,
        # and an inline name's repeated values are joined.
        headers = HeaderMap(self._raw_pairs(name, headers_ptr, headers_size),
                            MapType.REQUEST_HEADERS).text()
        body = self.memory.read(name, body_ptr, body_size)
        trailers = self._pairs(name, trailers_ptr, trailers_size)
        if timeout_ms >= 1 << 31 or cluster not in self.state.upstreams:
            return Status.BAD_ARGUMENT  # a negative timeout, or no such cluster
        if not all(any(k == required for k, _ in headers) for required in _REQUIRED):
            return Status.BAD_ARGUMENT
        if body:  # Envoy's async client sends the body with its length
            headers = [(k, v) for k, v in headers if k != "content-length"]
            headers.append(("content-length", str(len(body))))
        token = self.state.next_token(HTTP_CALL)
        self._record(Call("http", cluster, headers, body, trailers, timeout_ms, token,
                          self.state.context_id))
        self.memory.put_u32(name, token_ptr, token)
        return Status.OK

    def _grpc_target(self, name: str, service_ptr: int, service_size: int,
                     service_name_ptr: int, service_name_size: int, method_ptr: int,
                     method_size: int, metadata_ptr: int, metadata_size: int,
                     ) -> tuple[str, str, str, list[tuple[str, str]]] | Status:
        """What a gRPC call or stream is made to: (cluster, service, method, metadata), or
        PARSE_FAILURE for a plain cluster name that names no cluster."""
        cluster, plain = parse_service(self.memory.read(name, service_ptr, service_size))
        service_name = self.memory.text(name, service_name_ptr, service_name_size)
        method = self.memory.text(name, method_ptr, method_size)
        metadata = self._pairs(name, metadata_ptr, metadata_size)
        if cluster not in self.state.upstreams and plain:
            return Status.PARSE_FAILURE
        return cluster, service_name, method, metadata

    def proxy_grpc_call(self, service_ptr: int, service_size: int, service_name_ptr: int,
                        service_name_size: int, method_ptr: int, method_size: int,
                        metadata_ptr: int, metadata_size: int, request_ptr: int,
                        request_size: int, timeout_ms: int, token_ptr: int) -> int:
        name = "proxy_grpc_call"
        target = self._grpc_target(name, service_ptr, service_size, service_name_ptr,
                                   service_name_size, method_ptr, method_size, metadata_ptr,
                                   metadata_size)
        request = self.memory.read(name, request_ptr, request_size)
        if isinstance(target, Status):
            return target
        cluster, service_name, method, metadata = target
        token = self.state.next_token(GRPC_CALL)
        call = Call("grpc", cluster, metadata, request, [], timeout_ms, token,
                    self.state.context_id, service_name, method)
        self._record(call)
        if cluster not in self.state.upstreams:
            # A GrpcService naming no cluster: Envoy's client closes the call as it starts
            # (UNAVAILABLE "Cluster not available", delivered later) and answers
            # INTERNAL_FAILURE, the token never handed over.
            call.failure = "no cluster"
            return Status.INTERNAL_FAILURE
        self.memory.put_u32(name, token_ptr, token)
        return Status.OK

    def proxy_grpc_stream(self, service_ptr: int, service_size: int, service_name_ptr: int,
                          service_name_size: int, method_ptr: int, method_size: int,
                          metadata_ptr: int, metadata_size: int, token_ptr: int) -> int:
        name = "proxy_grpc_stream"
        target = self._grpc_target(name, service_ptr, service_size, service_name_ptr,
                                   service_name_size, method_ptr, method_size, metadata_ptr,
                                   metadata_size)
        if isinstance(target, Status):
            return target
        cluster, service_name, method, metadata = target
        state = self.state
        token = state.next_token(GRPC_STREAM)
        stream = GrpcStream(cluster, service_name, method, metadata, token, state.context_id,
                            wake=state.wake)
        state.grpc_streams[token] = stream
        if cluster not in state.upstreams:  # as for a call (above)
            stream.status = (GRPC_UNAVAILABLE, NO_CLUSTER)
            stream.forgotten = True
            stream.to_filter.append(Delivery("failed", status=GRPC_UNAVAILABLE,
                                             message=NO_CLUSTER))
            state.wake(stream)
            return Status.INTERNAL_FAILURE
        self.memory.put_u32(name, token_ptr, token)
        stream.to_upstream.append(("open", b""))
        state.wake(stream)
        return Status.OK

    def _stream(self, token: int) -> GrpcStream | Status:
        """A stream the filter may still act on, or the status Envoy answers."""
        if token & KIND_MASK != GRPC_STREAM:
            return Status.BAD_ARGUMENT
        stream = self.state.grpc_streams.get(token)
        if stream is None or stream.forgotten:
            return Status.NOT_FOUND
        return stream

    def proxy_grpc_send(self, token: int, message_ptr: int, message_size: int,
                        end_stream: int) -> int:
        message = self.memory.read("proxy_grpc_send", message_ptr, message_size)
        stream = self._stream(token)
        if isinstance(stream, Status):
            return stream
        if stream.status is None and not stream.half_closed:  # else it goes nowhere
            stream.to_upstream.append(("message", message))
            if end_stream:
                stream.to_upstream.append(("half_close", b""))
            stream.wake(stream)
        if end_stream:
            stream.half_closed = True
        return Status.OK

    def _record(self, call: Call) -> None:
        self.state.calls.append(call)
        self.state.pending.append((call.kind, call.token, call.context_id))

    def _cancel_call(self, token: int) -> int:
        event = next((e for e in self.state.pending if e[0] == "grpc" and e[1] == token), None)
        if event is None:
            return Status.NOT_FOUND
        self.state.pending.remove(event)  # cancelled before its reply: no callback
        return Status.OK

    def proxy_grpc_cancel(self, token: int) -> int:
        if token & KIND_MASK == GRPC_CALL:
            return self._cancel_call(token)
        stream = self._stream(token)
        if isinstance(stream, Status):
            return stream
        stream.cancelled = stream.forgotten = True  # no callback after this
        stream.to_filter.clear()
        if stream.status is None:
            # Reset before its frames went out: what the upstream was not yet told is lost.
            stream.to_upstream = deque(e for e in stream.to_upstream if e[0] == "open")
            stream.to_upstream.append(("cancel", b""))
            stream.wake(stream)
        return Status.OK

    def proxy_grpc_close(self, token: int) -> int:
        if token & KIND_MASK == GRPC_CALL:
            return self._cancel_call(token)
        stream = self._stream(token)
        if isinstance(stream, Status):
            return stream
        if stream.status is None and not stream.half_closed:
            stream.to_upstream.append(("half_close", b""))
            stream.wake(stream)
        stream.half_closed = stream.local_closed = True
        # Envoy forgets the token now if the upstream's close has reached the filter, else
        # once it has.
        stream.forgotten = stream.remote_closed
        return Status.OK

    def proxy_get_status(self, code_ptr: int, message_ptr_ptr: int, message_size_ptr: int) -> int:
        code, message = self.state.status
        self.memory.put_u32("proxy_get_status", code_ptr, code)
        return self.memory.hand_back("proxy_get_status", message.encode(), message_ptr_ptr,
                                     message_size_ptr)


def parse_service(service: bytes) -> tuple[str, bool]:
    """The cluster a gRPC call or stream goes to, and whether ``service`` was a plain name.
    As in Envoy: bytes that parse as a ``GrpcService`` are one (its cluster is
    ``envoy_grpc.cluster_name``, maybe empty); anything else is the cluster's name."""
    from envoy.config.core.v3.grpc_service_pb2 import GrpcService
    from google.protobuf.message import DecodeError

    parsed = GrpcService()
    try:
        parsed.ParseFromString(service)
    except DecodeError:
        return service.decode("utf-8", "replace"), True
    return parsed.envoy_grpc.cluster_name, False
