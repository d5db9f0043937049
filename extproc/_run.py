"""``extproc.serve``: one serving process, or a supervisor forking workers."""

from __future__ import annotations

from typing import Any

from ._config import ServerConfig
from ._processor import Processor
from ._serve import _run_loop, serve_async
from ._supervisor import supervise
from .errors import ServeError
from .transports import View


def serve(processor: type[Processor], config: ServerConfig | None = None, *,
          uds: str | None = None, address: str | None = None, workers: int = 1,
          view: View | None = None, **options: Any) -> int:
    """Serve ``processor`` until a signal stops it and return the exit code: 0 when in-flight
    streams drained (SIGTERM, SIGHUP, SIGINT), 1 when they were cut (SIGQUIT, a second
    SIGINT). Raises ServeError when it cannot start.

    Give a ready :class:`ServerConfig`, or its fields: ``uds``/``address``, ``workers`` and
    ``options`` (socket_mode, grace_period, max_message_bytes, tls_cert, tls_key,
    tls_client_ca, loop, admin, stall_timeout, transport). ``view`` is told about every
    stream answered (``extctl dev``'s live view).
    """
    if config is None:
        config = ServerConfig(uds=uds, address=address, workers=workers, **options)
    elif uds is not None or address is not None or workers != 1 or options:
        raise ServeError("give a ServerConfig or its fields, not both")
    return run(processor, config, view)


def run(processor: type[Processor], config: ServerConfig, view: View | None = None) -> int:
    """Serve with a ready-made config: one process, or a supervisor forking ``workers``."""
    if config.workers == 1:
        return _run_loop(config, serve_async(processor, config, view=view))
    return supervise(processor, config, view)
