"""Properties a filter reads with ``proxy_get_property``: the ones given to the emulator (so a
test can set ``source.address``), then Envoy's built-in attributes, then what the filter set
on the stream."""

from __future__ import annotations

import struct
from typing import Any

from .abi import MapType, serialize_map
from .headers import HeaderMap
from .state import PluginState, StreamState


def lookup(state: PluginState, path: tuple[bytes, ...]) -> bytes | None:
    stream = state.stream
    value = state.properties.get(path)
    if value is None:
        value = _builtin(state, path, stream)
    if value is None and stream is not None:
        value = stream.filter_state.get(b"\0".join(path))
    return value


def encode(value: str | int | bool | bytes) -> bytes:
    """A property value as Envoy serialises it: bytes as they are, a bool as one byte, an int
    as 8 little-endian bytes, text as UTF-8."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return bytes([value])
    if isinstance(value, int):
        return struct.pack("<q", value)
    return str(value).encode()


_FIXED = {"source.address": "127.0.0.1:40000", "source.port": 40000,
          "destination.address": "127.0.0.1:10000", "destination.port": 10000,
          "request.protocol": "HTTP/1.1"}
# Request attributes Envoy reads from the request headers while it still lends them.
_FROM_HEADERS = {"request.host": b":authority", "request.scheme": b":scheme",
                 "request.method": b":method", "request.id": b"x-request-id",
                 "request.useragent": b"user-agent", "request.referer": b"referer"}


def _builtin(state: PluginState, path: tuple[bytes, ...],
             stream: StreamState | None) -> bytes | None:
    """One attribute, computed only when asked for (``request.headers`` serialises a map)."""
    name = ".".join(p.decode("utf-8", "replace") for p in path)
    if len(path) == 1:
        fixed = {"plugin_root_id": state.root_id, "plugin_name": state.plugin_name,
                 "plugin_vm_id": state.vm_id}.get(name)
        return fixed.encode() if fixed is not None else None
    if stream is None:
        return None
    value: Any = _FIXED.get(name)
    if name == "response.code":
        value = stream.response_code
    elif name == "response.headers":
        response = stream.map_for(MapType.RESPONSE_HEADERS, write=False)
        value = _map_value(response) if response is not None else None
    elif name.startswith("request."):
        request = stream.map_for(MapType.REQUEST_HEADERS, write=False)
        if request is not None:
            value = _request_value(name, request)
    return None if value is None else encode(value)


def _request_value(name: str, request: HeaderMap) -> Any:
    if name in _FROM_HEADERS:
        return request.get(_FROM_HEADERS[name])
    if name == "request.headers":
        return _map_value(request)
    path = (request.get(b":path") or b"").decode("latin-1")
    if name == "request.path":
        return path or None
    if name == "request.url_path":
        return path.split("?")[0] or None
    if name == "request.query":
        return path.partition("?")[2] or None
    return None


def _map_value(headers: HeaderMap) -> bytes:
    return serialize_map(headers.joined())
