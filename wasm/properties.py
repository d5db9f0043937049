"""Properties a filter reads with ``proxy_get_property``, as Envoy 1.40 gives them in the
configuration ``extctl gen envoy`` writes: first the ones given to the emulator
(``properties=``, by exact path), then Envoy's attributes, then, for any other first name,
what the filter set on the stream (Envoy's filter state).

A path is segments (``request``, ``headers``, ``x-user``): the first names an attribute, the
rest look inside it as Envoy's CEL does (a key of a map, a field of a protobuf message, an index
of a list). The value reaches the filter serialised as Envoy serialises it: text and bytes as
they are, an int (durations and timestamps in nanoseconds) as 8 little-endian bytes, a bool as
one byte, a map or a list as a header map's pairs (a list's items as names with empty values),
a message in protobuf's wire format. Read whole, an attribute Envoy looks into by name but
cannot list (``request``, ``xds``, ``filter_state`` ...) is SERIALIZATION_FAILURE, as in Envoy.

What Envoy's value depends on the run for (addresses and ports, connection ids, request ids,
times and durations) is a stand-in of the same type: :data:`STAND_INS`. Which attribute
exists in which callback follows Envoy: the request's headers (and what is read from them) only
in the request headers callback and ``proxy_on_log``, the upstream's address once the request
reached it, the root context only the plugin's names and ``xds.node``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Union

from .abi import MapType, Status, serialize_map
from .configured import METADATA, Configured, Scalar
from .headers import HeaderMap
from .state import PluginState, StreamState

Value = Union[bytes, str, bool, int, float, "Message", "Opaque", "Headers", list["Value"],
              dict[bytes, "Value"]]

SOURCE = ("127.0.0.1", 40000)
DESTINATION = ("127.0.0.1", 10000)
UPSTREAM = ("127.0.0.1", 20000)
UPSTREAM_LOCAL = ("127.0.0.1", 40001)
STAND_INS = {
    "source.address / .port": "127.0.0.1:40000, the client",
    "destination.address / .port": "127.0.0.1:10000, Envoy's listener",
    "upstream.address / .port": "127.0.0.1:20000, once the request reached the upstream",
    "upstream.local_address": "127.0.0.1:40001",
    "connection.id, connection_id": "the stream's context id (one connection a request)",
    "request.id": "the x-request-id header; without one, a UUID made of the context id",
    "request.time": "the clock (clock=) when the request headers came",
    "request.duration": "the monotonic clock (monotonic=) from the request headers to the log",
    "upstream.cx_pool_ready_duration, response.backend_latency": "0 (a scripted upstream "
                                                                  "answers at once)",
    "xds.node": "id, cluster and metadata as given (properties=), else empty; "
                "user_agent_name envoy, version 1.40.0; no build metadata and no extensions "
                "list (Envoy lists the ones compiled in)",
}
"""Attributes whose value the emulator makes up, and what it is."""

UPSTREAM_CLUSTER = "upstream"  # the route's cluster in the configuration extctl generates
VIRTUAL_HOST = "any"


def lookup(state: PluginState, path: tuple[bytes, ...]) -> bytes | Status:
    """The serialised value of ``path``, or the status Envoy answers."""
    given = state.properties.get(path)
    if given is not None:
        return given
    attribute = _ATTRIBUTES.get(path[0].decode("utf-8", "replace"))
    if attribute is None:
        stream = state.stream
        found = stream.filter_state.get(b"\0".join(path)) if stream is not None else None
        return Status.NOT_FOUND if found is None else found
    value = attribute(state)
    for segment in path[1:]:
        if value is None:
            break
        value = _inside(value, segment)
    return Status.NOT_FOUND if value is None else serialize(value)


def encode(value: str | int | float | bool | bytes) -> bytes:
    """A property value as Envoy serialises it: bytes as they are, a bool as one byte, an int
    as 8 little-endian bytes, a float as a little-endian double, text as UTF-8."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return bytes([value])
    if isinstance(value, int):
        return struct.pack("<q" if value < 1 << 63 else "<Q", value)
    if isinstance(value, float):
        return struct.pack("<d", value)
    return str(value).encode()


def serialize(value: Value) -> bytes | Status:
    if isinstance(value, Opaque):
        return Status.SERIALIZATION_FAILURE
    if isinstance(value, Message):
        return value.wire()
    if isinstance(value, Headers):
        return serialize_map(value.pairs)
    if isinstance(value, (dict, list)):
        pairs = []
        items = value.items() if isinstance(value, dict) else ((v, b"") for v in value)
        for key, item in items:
            parts = [serialize(key), serialize(item)]
            for part in parts:
                if isinstance(part, Status):
                    return part
            pairs.append((bytes(parts[0]), bytes(parts[1])))
        return serialize_map(pairs)
    return encode(value)


def _inside(value: Value, segment: bytes) -> Value | None:
    if isinstance(value, Opaque):
        return value.get(segment.decode("utf-8", "replace"))
    if isinstance(value, Message):
        return value.get(segment.decode("utf-8", "replace"))
    if isinstance(value, Headers):
        return value.get(segment)
    if isinstance(value, dict):
        return value.get(segment)
    if isinstance(value, list):
        index = int(segment) if segment.isdigit() else -1
        return value[index] if 0 <= index < len(value) else None
    return None  # a scalar has nothing inside


@dataclass(frozen=True)
class Opaque:
    """A map Envoy's CEL looks into by name but cannot list."""

    get: Callable[[str], Value | None]


@dataclass(frozen=True)
class Headers:
    """A header map as a CEL map: one pair per name, repeated values joined with ","."""

    pairs: list[tuple[bytes, bytes]]

    def get(self, name: bytes) -> Value | None:
        return dict(self.pairs).get(name.lower())


@dataclass(frozen=True)
class Field:
    number: int
    kind: str
    """``string``, ``uint``, ``message``, ``struct`` (a google.protobuf.Struct, which CEL reads
    as a map), ``structs`` (a map of Structs by name, as Metadata's ``filter_metadata``) or
    ``list``."""
    default: Value


@dataclass(frozen=True)
class Message:
    """A protobuf message as Envoy's CEL reads it: a field by name (its default when unset),
    the whole in the wire format."""

    schema: Mapping[str, Field]
    values: Mapping[str, Value] = field(default_factory=dict)

    def get(self, name: str) -> Value | None:
        described = self.schema.get(name)
        return None if described is None else self.values.get(name, described.default)

    def wire(self) -> bytes:
        out = bytearray()
        for name, described in sorted(self.schema.items(), key=lambda item: item[1].number):
            value = self.values.get(name)
            if isinstance(value, Message):
                out += _tag(described.number, 2) + _length_prefixed(value.wire())
            elif isinstance(value, str) and value:
                out += _tag(described.number, 2) + _length_prefixed(value.encode())
            elif isinstance(value, int) and value:
                out += _tag(described.number, 0) + _varint(value)
            elif isinstance(value, dict) and described.kind == "struct":
                out += _tag(described.number, 2) + _length_prefixed(_struct(value))
            elif isinstance(value, dict) and described.kind == "structs":
                for key, inner in value.items():
                    if isinstance(inner, dict):
                        out += _tag(described.number, 2) + _length_prefixed(_entry(
                            key, _tag(2, 2) + _length_prefixed(_struct(inner))))
            # the emulator's lists are empty: nothing to write
        return bytes(out)


def _struct(fields: dict[bytes, Value]) -> bytes:
    """A google.protobuf.Struct in the wire format: its fields in the order given (Envoy
    writes a map in its own order, so a Struct of more than one field may differ in order)."""
    out = bytearray()
    for key, value in fields.items():
        if isinstance(value, bool):
            one = _tag(4, 0) + _varint(int(value))
        elif isinstance(value, float):
            one = _tag(2, 1) + struct.pack("<d", value)
        elif isinstance(value, dict):
            one = _tag(5, 2) + _length_prefixed(_struct(value))
        else:
            one = _tag(3, 2) + _length_prefixed(value if isinstance(value, bytes)
                                               else str(value).encode())
        out += _tag(1, 2) + _length_prefixed(_entry(key, _tag(2, 2) + _length_prefixed(one)))
    return bytes(out)


def _entry(key: bytes, value_field: bytes) -> bytes:
    """A map entry: its key (field 1), then its value field as given."""
    return _tag(1, 2) + _length_prefixed(key) + value_field


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _length_prefixed(data: bytes) -> bytes:
    return _varint(len(data)) + data


def _message(fields: str, **values: Value) -> Message:
    """A message type from ``"name number kind ..."``, with ``values`` set."""
    defaults: dict[str, Value] = {"string": "", "uint": 0, "struct": {}, "structs": {},
                                  "list": []}
    words = fields.split()
    schema = {}
    for name, number, kind in zip(words[::3], words[1::3], words[2::3], strict=True):
        default = _TYPES[kind] if kind in _TYPES else defaults[kind]
        schema[name] = Field(int(number), "message" if kind in _TYPES else kind, default)
    return Message(schema, values)


_TYPES: dict[str, Message] = {}
_TYPES["Locality"] = _message("region 1 string zone 2 string sub_zone 3 string")
_TYPES["SemanticVersion"] = _message("major_number 1 uint minor_number 2 uint patch 3 uint")
_TYPES["BuildVersion"] = _message("version 1 SemanticVersion metadata 2 struct")
# typed_filter_metadata (a map of Any) stays empty: no configuration here sets it
_TYPES["Metadata"] = _message("filter_metadata 1 structs typed_filter_metadata 2 structs")
_NODE_FIELDS = """id 1 string cluster 2 string metadata 3 struct locality 4 Locality
    user_agent_name 6 string user_agent_version 7 string user_agent_build_version 8 BuildVersion
    extensions 9 list client_features 10 list listening_addresses 11 list
    dynamic_parameters 12 structs"""  # a map of ContextParams, never set here: empty
NODE = _message(_NODE_FIELDS, user_agent_name="envoy", user_agent_build_version=Message(
    _TYPES["BuildVersion"].schema, {"version": Message(
        _TYPES["SemanticVersion"].schema, {"major_number": 1, "minor_number": 40})}))
"""What ``xds.node`` stands in with: Envoy 1.40 started without a node id or cluster."""
EMPTY_METADATA = _TYPES["Metadata"]


# the attributes, by first name

Attribute = Callable[[PluginState], Value | None]


def _on_stream(read: Callable[[PluginState, StreamState, str], Value | None]) -> Attribute:
    """An attribute of the stream (none in the root context), looked into by name."""
    def attribute(state: PluginState) -> Value | None:
        stream = state.stream
        if stream is None:
            return None
        return Opaque(lambda name: read(state, stream, name))
    return attribute


def _request(state: PluginState, stream: StreamState, name: str) -> Value | None:
    headers = stream.map_for(MapType.REQUEST_HEADERS, write=False)
    size = headers.byte_size() if headers is not None else 0
    if name == "headers":
        return Headers(headers.joined() if headers is not None else [])
    if name == "headers_bytes":
        return size
    if name == "time":
        return stream.started[0] if stream.started is not None else None
    if name == "duration":  # once the stream is complete
        if stream.logging and stream.started is not None:
            return state.monotonic() - stream.started[1]
        return None
    if name == "protocol":
        return "HTTP/1.1"
    if name == "size":
        length = headers.get(b"content-length") if headers is not None else None
        if length is not None:
            return int(length) if length.isdigit() else None
        return stream.received
    if name == "total_size":
        return stream.received + size
    if headers is None:
        return None
    if name in _FROM_HEADERS:
        value = headers.get(_FROM_HEADERS[name])
        if value is None and name == "id":
            return f"00000000-0000-4000-8000-{stream.context_id:012x}"
        return value
    path = headers.get(b":path") or b""
    if name == "url_path":
        return path.partition(b"?")[0]
    if name == "query":
        return path.partition(b"?")[2].partition(b"#")[0]
    return None


_FROM_HEADERS = {"path": b":path", "host": b":authority", "scheme": b":scheme",
                 "method": b":method", "id": b"x-request-id", "useragent": b"user-agent",
                 "referer": b"referer"}


def _response(state: PluginState, stream: StreamState, name: str) -> Value | None:
    headers = stream.map_for(MapType.RESPONSE_HEADERS, write=False)
    trailers = stream.map_for(MapType.RESPONSE_TRAILERS, write=False)
    size = sum(m.byte_size() for m in (headers, trailers) if m is not None)
    if name == "code":
        return stream.response_code
    if name == "code_details":
        if stream.code_details is not None:  # a local response's
            return stream.code_details
        reached = stream.upstream_reached and stream.response_code is not None
        return "via_upstream" if reached else None
    if name == "flags":
        return 0
    if name == "grpc_status":
        return _grpc_status(headers, trailers, stream.response_code)
    if name == "headers":
        return Headers(headers.joined() if headers is not None else [])
    if name == "headers_bytes":
        return headers.byte_size() if headers is not None else 0
    if name == "trailers":
        return Headers(trailers.joined() if trailers is not None else [])
    if name == "size":
        return stream.sent
    if name == "total_size":
        return stream.sent + size
    if name == "backend_latency":  # once the upstream's answer is all in
        ended = stream.upstream_ended or stream.logging
        return 0 if stream.upstream_reached and ended else None
    return None


# Envoy's gRPC status for an HTTP status, when the response carries none.
_GRPC_OF_HTTP = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
_GRPC_UNKNOWN, _GRPC_INVALID = 2, -1


def _grpc_status(headers: HeaderMap | None, trailers: HeaderMap | None,
                 code: int | None) -> int | None:
    for found in (trailers, headers):
        value = found.get(b"grpc-status") if found is not None else None
        if value is not None:
            return int(value) if value.isdigit() and int(value) <= 16 else _GRPC_INVALID
    return None if code is None else _GRPC_OF_HTTP.get(code, _GRPC_UNKNOWN)


def _connection(state: PluginState, stream: StreamState, name: str) -> Value | None:
    # a plain-text connection: no TLS attributes, no termination yet
    known: dict[str, Value] = {"id": stream.context_id, "mtls": False,
                               "requested_server_name": ""}
    return known.get(name)


def _upstream(state: PluginState, stream: StreamState, name: str) -> Value | None:
    if name == "num_endpoints":
        return 1
    if name == "request_attempt_count":
        return int(stream.upstream_reached)
    if not stream.upstream_reached:
        return None
    known: dict[str, Value] = {
        "address": _address(UPSTREAM), "port": UPSTREAM[1],
        "local_address": _address(UPSTREAM_LOCAL), "transport_failure_reason": "",
        "locality": _TYPES["Locality"], "cx_pool_ready_duration": 0}
    return known.get(name)


def _peer(where: tuple[str, int]) -> Callable[[PluginState, StreamState, str], Value | None]:
    def read(state: PluginState, stream: StreamState, name: str) -> Value | None:
        known: dict[str, Value] = {"address": _address(where), "port": where[1]}
        return known.get(name)
    return read


def _address(where: tuple[str, int]) -> str:
    return f"{where[0]}:{where[1]}"


def _node(configured: Configured) -> Message:
    if not configured.node_id and not configured.node_cluster and not configured.node_metadata:
        return NODE
    values = dict(NODE.values)
    values.update(id=configured.node_id, cluster=configured.node_cluster)
    if configured.node_metadata:  # unset, Envoy's node has no metadata field at all
        values["metadata"] = _struct_value(configured.node_metadata)
    return Message(NODE.schema, values)


def _metadata(configured: Configured, name: str) -> Message:
    """The Metadata message of one of wasm.configured.METADATA."""
    namespaces = configured.metadata.get(name)
    if not namespaces:
        return EMPTY_METADATA
    return Message(EMPTY_METADATA.schema, {"filter_metadata": {
        namespace.encode(): _struct_value(fields) for namespace, fields in namespaces.items()}})


def _struct_value(fields: Mapping[str, Scalar]) -> dict[bytes, Value]:
    return {key.encode(): value for key, value in fields.items()}


def _xds(state: PluginState) -> Value | None:
    configured = state.configured

    def read(name: str) -> Value | None:
        if name == "node":
            return _node(configured)
        stream = state.stream
        if stream is None:
            return None
        if name in ("upstream_host_metadata", "upstream_host_locality_metadata"):
            # Envoy's host has no metadata to give: it fails to serialise it
            return Opaque(lambda _: None) if stream.upstream_reached else None
        if name.endswith("_metadata") and f"xds.{name}" in METADATA:
            return _metadata(configured, f"xds.{name}")
        known: dict[str, Value] = {
            "cluster_name": UPSTREAM_CLUSTER, "route_name": configured.route_name,
            "virtual_host_name": VIRTUAL_HOST, "listener_direction": 0,
            "filter_chain_name": ""}
        return known.get(name)
    return Opaque(read)


def _filter_state(state: PluginState, stream: StreamState, name: str) -> Value | None:
    # what the filter set, under the prefix Envoy keeps a Wasm property with
    if not name.startswith("wasm."):
        return None
    return stream.filter_state.get(name.removeprefix("wasm.").encode())


def _upstream_filter_state(state: PluginState) -> Value | None:
    stream = state.stream
    return Opaque(lambda _: None) if stream is not None and stream.upstream_reached else None


def _stream_value(read: Callable[[StreamState], Value]) -> Attribute:
    return lambda state: read(state.stream) if state.stream is not None else None


_ATTRIBUTES: dict[str, Attribute] = {
    "plugin_name": lambda state: state.plugin_name,
    "plugin_root_id": lambda state: state.root_id,
    "plugin_vm_id": lambda state: state.vm_id,
    "xds": _xds,
    "request": _on_stream(_request),
    "response": _on_stream(_response),
    "connection": _on_stream(_connection),
    "upstream": _on_stream(_upstream),
    "source": _on_stream(_peer(SOURCE)),
    "destination": _on_stream(_peer(DESTINATION)),
    "filter_state": _on_stream(_filter_state),
    "upstream_filter_state": _upstream_filter_state,
    "metadata": lambda state: (_metadata(state.configured, "metadata")
                               if state.stream is not None else None),
    "connection_id": _stream_value(lambda stream: stream.context_id),
}
