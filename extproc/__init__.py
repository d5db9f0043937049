"""envoy-extkit's ext_proc framework: subclass ``Processor``, serve it next to Envoy.

    import extproc

    class AddHeader(extproc.Processor):
        async def on_request_headers(self, headers):
            headers["x-hello"] = "world"

    extproc.serve(AddHeader, uds="/var/run/extproc/extproc.sock")
"""

from ._body import Body
from ._config import ServerConfig
from ._errors import (
    ExtprocError,
    ImportFromStringError,
    MutationError,
    ProcessorDefinitionError,
    ProtocolError,
    ServeError,
)
from ._headers import Headers
from ._importer import import_processor
from ._mode import BodyMode, FilterSpec, ProcessingMode, derive
from ._processor import Processor
from ._responses import ImmediateResponse
from ._server import SERVICE_NAME, Server, make_server, serve, serve_async
from ._thread import ServerThread

__all__ = [
    "SERVICE_NAME",
    "Body",
    "BodyMode",
    "ExtprocError",
    "FilterSpec",
    "Headers",
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
