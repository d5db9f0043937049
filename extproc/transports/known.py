"""The transports by name: the built-in ones and those installed packages declare."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ServeError

#: The built-in transports, by the name ``ServerConfig.transport`` takes.
TRANSPORTS = {
    "grpcio": "extproc.transports.grpcio:Server",
    "pyvoy": "extproc.transports.pyvoy:PyvoyServer",
}
ENTRY_POINTS = "extproc.transports"


def names() -> list[str]:
    """The transports ``ServerConfig.transport`` may name."""
    return sorted({*TRANSPORTS, *(e.name for e in _entry_points())})


def transport_class(name: str) -> type[Any]:
    """The server class of the transport ``name`` (an ``extproc.transports.Transport``)."""
    where = TRANSPORTS.get(name) or next(
        (e.value for e in _entry_points() if e.name == name), None)
    if where is None:
        raise ServeError(f"no transport named {name!r}: {', '.join(names())}")
    module, _, attribute = where.partition(":")
    cls: type[Any] = getattr(importlib.import_module(module), attribute)
    return cls


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINTS))
