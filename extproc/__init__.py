"""envoy-extkit's ext_proc framework: subclass ``Processor``, serve it next to Envoy.

    import extproc

    class AddHeader(extproc.Processor):
        async def on_request_headers(self, headers):
            headers["x-hello"] = "world"

    extproc.serve(AddHeader, uds="/var/run/extproc/extproc.sock")
"""

# Names are imported from their modules on first use, as in ``wasm`` and ``registry``: a
# health check or a config object does not load the server, protobufs and asyncio.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._body import Body
    from ._config import SERVICE_NAME, ServerConfig
    from ._headers import Headers
    from ._importer import import_processor
    from ._mode import BodyMode, FilterSpec, ProcessingMode, derive
    from ._processor import Processor
    from ._responses import ImmediateResponse
    from ._run import serve
    from ._serve import serve_async
    from ._thread import ServerThread
    from .errors import (
        ExtkitError,
        ExtprocError,
        HookNameWarning,
        ImportFromStringError,
        MutationError,
        ProcessorDefinitionError,
        ProtocolError,
        ServeError,
    )
    from .transports import make_server
    from .transports.grpcio import Server

__all__ = [
    "SERVICE_NAME",
    "Body",
    "BodyMode",
    "ExtkitError",
    "ExtprocError",
    "FilterSpec",
    "Headers",
    "HookNameWarning",
    "ImmediateResponse",
    "ImportFromStringError",
    "MutationError",
    "ProcessingMode",
    "Processor",
    "ProcessorDefinitionError",
    "ProtocolError",
    "ServeError",
    "Server",
    "ServerConfig",
    "ServerThread",
    "derive",
    "import_processor",
    "make_server",
    "serve",
    "serve_async",
]

_WHERE = {
    "SERVICE_NAME": "_config",
    "Body": "_body",
    "BodyMode": "_mode",
    "ExtkitError": "errors",
    "ExtprocError": "errors",
    "FilterSpec": "_mode",
    "Headers": "_headers",
    "HookNameWarning": "errors",
    "ImmediateResponse": "_responses",
    "ImportFromStringError": "errors",
    "MutationError": "errors",
    "ProcessingMode": "_mode",
    "Processor": "_processor",
    "ProcessorDefinitionError": "errors",
    "ProtocolError": "errors",
    "ServeError": "errors",
    "Server": "transports.grpcio",
    "ServerConfig": "_config",
    "ServerThread": "_thread",
    "derive": "_mode",
    "import_processor": "_importer",
    "make_server": "transports",
    "serve": "_run",
    "serve_async": "_serve",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
