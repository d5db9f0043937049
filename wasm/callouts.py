"""Host functions for callouts: ``proxy_http_call``, ``proxy_grpc_call`` (unary),
``proxy_grpc_cancel``/``proxy_grpc_close`` and ``proxy_get_status``, with Envoy's checks
(the cluster must exist; an HTTP call needs ``:method``, ``:path`` and ``:authority``; a
negative timeout is refused). A call is recorded and answered once the running callback
returns, as Envoy's dispatcher would (:mod:`wasm.context` delivers it)."""

from __future__ import annotations

from .abi import Status, deserialize_map
from .calls import Call
from .memory import Memory
from .state import PluginState

_REQUIRED = (":method", ":path", ":authority")


class CalloutFunctions:
    def __init__(self, state: PluginState, memory: Memory) -> None:
        self.state = state
        self.memory = memory

    def _pairs(self, function: str, ptr: int, size: int) -> list[tuple[str, str]]:
        try:
            pairs = deserialize_map(self.memory.read(function, ptr, size))
        except ValueError:
            pairs = []
        return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in pairs]

    def proxy_http_call(self, upstream_ptr: int, upstream_size: int, headers_ptr: int,
                        headers_size: int, body_ptr: int, body_size: int, trailers_ptr: int,
                        trailers_size: int, timeout_ms: int, token_ptr: int) -> int:
        name = "proxy_http_call"
        cluster = self.memory.text(name, upstream_ptr, upstream_size)
        headers = self._pairs(name, headers_ptr, headers_size)
        body = self.memory.read(name, body_ptr, body_size)
        trailers = self._pairs(name, trailers_ptr, trailers_size)
        if timeout_ms >= 1 << 31 or cluster not in self.state.upstreams:
            return Status.BAD_ARGUMENT  # a negative timeout, or no such cluster
        if not all(any(k == required for k, _ in headers) for required in _REQUIRED):
            return Status.BAD_ARGUMENT
        if body:  # Envoy's async client sends the body with its length
            headers = [(k, v) for k, v in headers if k != "content-length"]
            headers.append(("content-length", str(len(body))))
        token = self.state.next_http_token
        self.state.next_http_token += 1
        self._record(Call("http", cluster, headers, body, trailers, timeout_ms, token,
                          self.state.context_id))
        self.memory.put_u32(name, token_ptr, token)
        return Status.OK

    def proxy_grpc_call(self, service_ptr: int, service_size: int, service_name_ptr: int,
                        service_name_size: int, method_ptr: int, method_size: int,
                        metadata_ptr: int, metadata_size: int, request_ptr: int,
                        request_size: int, timeout_ms: int, token_ptr: int) -> int:
        name = "proxy_grpc_call"
        service = self.memory.read(name, service_ptr, service_size)
        service_name = self.memory.text(name, service_name_ptr, service_name_size)
        method = self.memory.text(name, method_ptr, method_size)
        metadata = self._pairs(name, metadata_ptr, metadata_size)
        request = self.memory.read(name, request_ptr, request_size)
        # Call tokens are odd (stream tokens would be even), as in Envoy.
        token = self.state.next_grpc_token | 1
        self.state.next_grpc_token = token + 2
        self._record(Call("grpc", cluster_of(service), metadata, request, [], timeout_ms,
                          token, self.state.context_id, service_name, method))
        self.memory.put_u32(name, token_ptr, token)
        return Status.OK

    def _record(self, call: Call) -> None:
        self.state.calls.append(call)
        self.state.pending.append((call.kind, call.token, call.context_id))

    def _cancel(self, token: int) -> int:
        event = next((e for e in self.state.pending if e[0] == "grpc" and e[1] == token), None)
        if event is None:
            return Status.NOT_FOUND
        self.state.pending.remove(event)  # cancelled before its reply: no callback
        return Status.OK

    def proxy_grpc_cancel(self, token: int) -> int:
        return self._cancel(token)

    def proxy_grpc_close(self, token: int) -> int:
        return self._cancel(token)

    def proxy_get_status(self, code_ptr: int, message_ptr_ptr: int, message_size_ptr: int) -> int:
        code, message = self.state.status
        self.memory.put_u32("proxy_get_status", code_ptr, code)
        return self.memory.hand_back("proxy_get_status", message.encode(), message_ptr_ptr,
                                     message_size_ptr)


def cluster_of(service: bytes) -> str:
    """The cluster a gRPC call goes to: a serialised ``GrpcService`` names it in
    ``envoy_grpc.cluster_name`` (field 1 of field 1); SDKs that pass a plain name get it
    taken as the cluster, as Envoy does."""
    inner = _field(service, 1)
    name = _field(inner, 1) if inner is not None else None
    if name:
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return service.decode("utf-8", "replace")


def _field(data: bytes, number: int) -> bytes | None:
    """The first length-delimited field ``number`` of a protobuf message; None when ``data``
    does not parse as one."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        if key < 0:
            return None
        wire = key & 7
        if wire == 2:
            size, at = _varint(data, at)
            if size < 0 or at + size > len(data):
                return None
            if key >> 3 == number:
                return data[at:at + size]
            at += size
        elif wire == 0:
            _, at = _varint(data, at)
        else:
            return None
    return None


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    return -1, at
