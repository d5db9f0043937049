"""A header map as Envoy keeps one, for the emulator: lower-case names, pseudo-headers first,
and the names Envoy stores inline holding one entry whose repeated values are joined."""

from __future__ import annotations

from collections.abc import Iterable

# Envoy's inline (O(1)) headers whose repeated values it appends to the one entry with ","
# (HeaderMapImpl::insertByKey); other names keep one entry per value.
INLINE_JOINED = frozenset(n.encode() for n in (
    ":authority", "content-type", "content-length", "user-agent", "x-request-id",
    "x-forwarded-for", "x-forwarded-proto", "via", "te", "grpc-timeout", "location", "server",
    "accept-encoding", "cache-control", "connection", "transfer-encoding", "upgrade"))


class HeaderMap:
    def __init__(self, pairs: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.pairs: list[tuple[bytes, bytes]] = []
        for name, value in pairs:
            self.add(name, value)

    def get(self, name: bytes) -> bytes | None:
        """The first entry's value (a joined one for inline names), as Envoy answers."""
        key = name.lower()
        return next((v for k, v in self.pairs if k == key), None)

    def add(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key in INLINE_JOINED:
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
        key = name.lower()
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
