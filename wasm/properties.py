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


def _builtin(state: PluginState, path: tuple[bytes, ...],
             stream: StreamState | None) -> bytes | None:
    name = ".".join(p.decode("utf-8", "replace") for p in path)
    fixed = {"plugin_root_id": state.root_id, "plugin_name": state.plugin_name,
             "plugin_vm_id": state.vm_id}
    if len(path) == 1:
        return fixed[name].encode() if name in fixed else None
    if stream is None:
        return None
    request = stream.map_for(MapType.REQUEST_HEADERS, write=False)
    response = stream.map_for(MapType.RESPONSE_HEADERS, write=False)
    values: dict[str, Any] = {
        "source.address": "127.0.0.1:40000", "source.port": 40000,
        "destination.address": "127.0.0.1:10000", "destination.port": 10000,
        "request.protocol": "HTTP/1.1", "response.code": stream.response_code,
    }
    if request is not None:  # Envoy reads these from the headers it still lends
        path_value = (request.get(b":path") or b"").decode("latin-1")
        values.update({
            "request.path": path_value or None,
            "request.url_path": path_value.split("?")[0] or None,
            "request.query": path_value.partition("?")[2] or None,
            "request.host": request.get(b":authority"),
            "request.scheme": request.get(b":scheme"),
            "request.method": request.get(b":method"),
            "request.id": request.get(b"x-request-id"),
            "request.useragent": request.get(b"user-agent"),
            "request.referer": request.get(b"referer"),
            "request.headers": _map_value(request),
        })
    if response is not None:
        values["response.headers"] = _map_value(response)
    value = values.get(name)
    return None if value is None else encode(value)


def _map_value(headers: HeaderMap) -> bytes:
    return serialize_map(headers.joined())
