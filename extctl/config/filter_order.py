"""HTTP filter order, as Envoy Gateway applies it, shared by both generators.

Envoy Gateway sorts a listener's HTTP filters into a fixed default order (ext_proc before wasm,
rbac after both, router last), then applies the EnvoyProxy ``filterOrder`` entries one by one:
``X before Y`` moves every X filter in front of the first Y, ``X after Y`` behind the last Y.
The standalone Envoy config is ordered the same way, so what the upstream sees does not depend
on which generator deployed the extensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError

PREFIX = "envoy.filters.http."

DEFAULT_ORDER = tuple(PREFIX + name for name in (
    "custom_response", "health_check", "fault", "cors", "csrf", "header_mutation", "ext_authz",
    "api_key_auth", "basic_auth", "oauth2", "jwt_authn", "stateful_session", "buffer", "lua",
    "ext_proc", "wasm", "dynamic_modules", "geoip", "rbac", "local_ratelimit", "ratelimit",
    "bandwidth_limit", "grpc_web", "grpc_stats", "credential_injector", "compressor",
    "dynamic_forward_proxy"))
"""Envoy Gateway v1.9's default order; also the filter names ``filterOrder`` accepts."""


def filter_type(name: str) -> str:
    """``ext_proc`` or ``envoy.filters.http.ext_proc`` -> the full type name (checked)."""
    full = name if name.startswith(PREFIX) else PREFIX + name
    if full not in DEFAULT_ORDER:
        raise ConfigError(f"unknown filter {name!r}; one of "
                          f"{', '.join(n.removeprefix(PREFIX) for n in DEFAULT_ORDER)}")
    return full


@dataclass(frozen=True)
class FilterPosition:
    """Put every ``filter`` before the first (or after the last) ``other`` filter."""

    filter: str
    relation: str
    other: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "filter", filter_type(self.filter))
        object.__setattr__(self, "other", filter_type(self.other))
        if self.relation not in ("before", "after"):
            raise ConfigError(f"{self.relation!r}: a filter goes before or after another")
        if self.filter == self.other:
            raise ConfigError(f"{self.filter} cannot be ordered against itself")

    @classmethod
    def parse(cls, text: str) -> FilterPosition:
        """``wasm:before:ext_proc`` (short or full filter names)."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ConfigError(f"{text!r} is not FILTER:before|after:FILTER "
                              "(e.g. wasm:before:ext_proc)")
        return cls(parts[0], parts[1], parts[2])

    def to_spec(self) -> dict[str, str]:
        return {"name": self.filter, self.relation: self.other}


def _type_of(name: str) -> str:
    # A filter's name is its type, optionally followed by "/instance" (as Envoy Gateway names
    # one filter per extension).
    return name.partition("/")[0]


def order(names: Sequence[str], positions: Sequence[FilterPosition] = ()) -> list[str]:
    """Sort filter names into the default order (stable within a type), then apply positions.

    Names of types outside the default order (e.g. the router) keep their place at the end.
    """
    rank = {t: i for i, t in enumerate(DEFAULT_ORDER)}
    result = sorted(names, key=lambda n: rank.get(_type_of(n), len(rank)))
    for position in positions:
        moving = [n for n in result if _type_of(n) == position.filter]
        anchors = [i for i, n in enumerate(result) if _type_of(n) == position.other]
        if not moving or not anchors:
            continue
        rest = [n for n in result if _type_of(n) != position.filter]
        anchor = result[anchors[0] if position.relation == "before" else anchors[-1]]
        at = rest.index(anchor) + (position.relation == "after")
        result = rest[:at] + moving + rest[at:]
    return result
