"""Properties an Envoy configuration sets, in one place for the emulator and the config writer.

A filter reads some of Envoy's attributes from the configuration Envoy was started with: the
node's id, cluster and metadata (the bootstrap), the route's name, the metadata of the route,
its virtual host, its cluster and the listener, and the request's dynamic metadata (what a
filter before it set). Given as property paths (``xds.node.metadata.team``), they are placed
where Envoy keeps them, so that a filter reading a parent (``xds.node.metadata``,
``xds.route_metadata``) gets them too, in the callbacks Envoy gives them in; and
``extctl.config`` writes the same values into Envoy's configuration, which is how
``wasm.testing.compare_with_envoy`` runs a module on both with the same properties.

A path is a string of dot-separated segments, or a tuple of segments when a segment holds a dot
(metadata namespaces do: ``("xds", "route_metadata", "filter_metadata", "envoy.lb",
"canary")``). Metadata values are a google.protobuf.Struct's: text, a bool, or a number, which
Envoy keeps (and a filter reads) as a double.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

Scalar = str | bool | float
"""A metadata value as a Struct holds it."""
Given = str | int | float | bool | bytes
"""A property value as a test gives it."""
Path = str | tuple[str, ...]

METADATA = ("xds.route_metadata", "xds.virtual_host_metadata", "xds.cluster_metadata",
            "xds.listener_metadata", "metadata")
"""Attributes holding an envoy.config.core.v3.Metadata: the route's, its virtual host's, its
cluster's, the listener's and the request's dynamic metadata."""
FORMS = ("xds.node.id", "xds.node.cluster", "xds.node.metadata.KEY", "xds.route_name",
         *(f"{name}.filter_metadata.NAMESPACE.KEY" for name in METADATA))
"""The paths an Envoy configuration sets."""


@dataclass
class Configured:
    """What the configuration sets; empty: what Envoy gives when it sets nothing."""

    node_id: str = ""
    node_cluster: str = ""
    node_metadata: dict[str, Scalar] = field(default_factory=dict)
    route_name: str = ""
    metadata: dict[str, dict[str, dict[str, Scalar]]] = field(default_factory=dict)
    """An attribute of :data:`METADATA` -> namespace -> key -> value."""

    def __bool__(self) -> bool:
        return any((self.node_id, self.node_cluster, self.node_metadata, self.route_name,
                    self.metadata))


def segments(path: Path) -> tuple[str, ...]:
    """A property path's segments (ValueError for a segment that is not text)."""
    parts = tuple(path.split(".")) if isinstance(path, str) else tuple(path)
    if not parts or not all(isinstance(part, str) and part for part in parts):
        raise ValueError(f"property path {path!r}: give dot-separated text, or a tuple of "
                         "non-empty strings")
    return parts


def split(properties: Mapping[Path, Given] | None,
          ) -> tuple[Configured, dict[tuple[str, ...], Given]]:
    """``properties`` as what the configuration sets (the paths of :data:`FORMS`) and the
    rest, by segments. ValueError names a settable path given a value it cannot hold."""
    configured = Configured()
    rest: dict[tuple[str, ...], Given] = {}
    for path, value in (properties or {}).items():
        parts = segments(path)
        if not _place(configured, parts, value):
            rest[parts] = value
    return configured, rest


def settable(properties: Mapping[Path, Given] | None) -> Configured:
    """``properties`` as what the configuration sets; ValueError for a path it cannot set."""
    configured, rest = split(properties)
    if rest:
        path = ".".join(next(iter(rest)))
        raise ValueError(f"property {path}: not one an Envoy configuration sets; give one of "
                         f"{', '.join(FORMS)}")
    return configured


def _place(configured: Configured, parts: tuple[str, ...], value: Given) -> bool:
    where = ".".join(parts)
    if parts in (("xds", "node", "id"), ("xds", "node", "cluster"), ("xds", "route_name")):
        if not isinstance(value, str):
            raise ValueError(f"property {where}: Envoy holds it as text, not "
                             f"{type(value).__name__}")
        setattr(configured, {"id": "node_id", "cluster": "node_cluster"}.get(
            parts[-1], "route_name"), value)
        return True
    if len(parts) == 4 and parts[:3] == ("xds", "node", "metadata"):
        configured.node_metadata[parts[3]] = _scalar(where, value)
        return True
    if len(parts) > 4 and parts[:3] == ("xds", "node", "metadata"):
        raise ValueError(f"property {where}: a node metadata key is one segment; give the "
                         "path as a tuple when the key holds a dot")
    for name in METADATA:
        head = (*name.split("."), "filter_metadata")
        if len(parts) == len(head) + 2 and parts[:len(head)] == head:
            namespace, key = parts[len(head):]
            configured.metadata.setdefault(name, {}).setdefault(namespace, {})[key] = (
                _scalar(where, value))
            return True
        if len(parts) > len(head) + 2 and parts[:len(head)] == head:
            raise ValueError(f"property {where}: NAMESPACE.KEY after filter_metadata; give "
                             "the path as a tuple when the namespace or key holds a dot "
                             f"(({', '.join(repr(p) for p in head)}, 'envoy.lb', 'canary'))")
    return False


def _scalar(where: str, value: Given) -> Scalar:
    if isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, float)):
        try:
            number = float(value)  # a Struct's numbers are doubles
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ValueError(f"property {where}: {value!r} is not a finite number (JSON, "
                             "which Envoy's configuration is, has no other)")
        return number
    raise ValueError(f"property {where}: metadata holds text, a bool or a number, not "
                     f"{type(value).__name__}")
