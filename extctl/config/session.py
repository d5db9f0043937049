"""Session persistence (consistent hashing to the upstream), shared by both generators.

Envoy Gateway's BackendTrafficPolicy ``loadBalancer.type: ConsistentHash`` and the standalone
Envoy config's ring-hash/maglev cluster with a route ``hash_policy`` are built from one of these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

KINDS = ("SourceIP", "Header", "Cookie")
ALGORITHMS = ("ring_hash", "maglev")
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


@dataclass(frozen=True)
class SessionPersistence:
    """Requests with the same client address, header value or cookie reach the same upstream.

    ``cookie_ttl`` (a Gateway API duration such as ``1h`` or ``30m``): when the cookie is absent,
    Envoy sets it on the response, so the client's next requests stick.
    """

    by: str
    name: str | None = None
    cookie_ttl: str | None = None
    algorithm: str = "ring_hash"
    """Standalone Envoy only: ``ring_hash`` or ``maglev`` (Envoy Gateway picks its own)."""

    def __post_init__(self) -> None:
        if self.by not in KINDS:
            raise ConfigError(f"session persistence by {self.by!r}: use one of "
                              f"{', '.join(KINDS)}")
        if self.by == "SourceIP" and self.name:
            raise ConfigError("SourceIP hashing takes no header or cookie name")
        if self.by in ("Header", "Cookie") and not self.name:
            raise ConfigError(f"{self.by} hashing needs the {self.by.lower()} name")
        if self.cookie_ttl is not None:
            if self.by != "Cookie":
                raise ConfigError("a cookie TTL applies to Cookie hashing only")
            if not _DURATION.match(self.cookie_ttl):
                raise ConfigError(f"cookie TTL {self.cookie_ttl!r} is not a duration such as "
                                  "1h, 30m or 90s")
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"hash algorithm {self.algorithm!r}: use ring_hash or maglev")

    @classmethod
    def parse(cls, text: str, algorithm: str = "ring_hash") -> SessionPersistence:
        """``SourceIP``, ``Header:NAME`` or ``Cookie:NAME[:TTL]`` (kinds in any case)."""
        kind, _, rest = text.partition(":")
        name, _, ttl = rest.partition(":")
        canonical = {k.lower(): k for k in KINDS}.get(kind.lower(), kind)
        return cls(canonical, name or None, ttl or None, algorithm=algorithm)

    @property
    def ttl_seconds(self) -> float | None:
        if self.cookie_ttl is None:
            return None
        return sum(float(n) * _UNITS[u]
                   for n, u in re.findall(r"([0-9]+)(h|ms|m|s)", self.cookie_ttl))

    def to_consistent_hash(self) -> dict[str, Any]:
        """BackendTrafficPolicy ``loadBalancer.consistentHash``."""
        spec: dict[str, Any] = {"type": self.by}
        if self.by == "Header":
            spec["header"] = {"name": self.name}
        elif self.by == "Cookie":
            spec["cookie"] = {"name": self.name}
            if self.cookie_ttl:
                spec["cookie"]["ttl"] = self.cookie_ttl
        return spec
