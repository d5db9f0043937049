"""How a Processor is served: one transport per module, each a server class of one shape.

    grpcio   grpc.aio in this process (the default): :class:`~extproc.transports.grpcio.Server`
    pyvoy    an Envoy process running the processor through pyvoy's dynamic module:
             :class:`~extproc.transports.pyvoy.PyvoyServer` (ASGI app in ``pyvoy_app``)

A transport is a class built as ``Cls(processor, config, listen, *, counts, view, slot,
supervisor)`` (:class:`BaseServer` takes them all) that meets :class:`Transport`;
``config.transport`` names it. A third one is one more module here and one line in
:data:`TRANSPORTS`, or, from another package, an entry point in the group
``extproc.transports`` (``name = "package.module:Class"``; ``extctl serve --transport NAME``
takes it too). Everything around it (signals, draining, workers, the admin endpoint's
process) is the transport's caller's (``extproc._serve``, ``extproc._supervisor``), the same
for all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .known import ENTRY_POINTS, TRANSPORTS, names, transport_class

__all__ = ["ENTRY_POINTS", "TRANSPORTS", "BaseServer", "Transport", "View", "make_server",
           "names", "transport_class"]

if TYPE_CHECKING:
    from .._config import ServerConfig
    from .._processor import Processor
    from .._record import StreamRecord as StreamRecord

View = Callable[["StreamRecord"], None]
"""Told about every stream a server answered (``extctl dev``'s live view)."""


class Transport(Protocol):
    """What serving a processor takes, whatever carries the messages."""

    processor: type[Processor]
    config: ServerConfig
    listen: str
    """The Unix socket path or host:port it serves on."""

    @property
    def target(self) -> str:
        """The gRPC target Envoy dials (``unix:/path`` or ``host:port``)."""

    @property
    def serving(self) -> bool:
        """Started and not draining."""

    @property
    def message_counts(self) -> dict[str, int]:
        """Messages received per phase since start (kept when built with ``counts=True``)."""

    async def start(self) -> None:
        """Bind, run ``on_startup``, serve; ServeError when it cannot."""

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new streams, let in-flight ones finish within ``grace`` (the
        config's grace period when None; 0 cuts them), then run ``on_shutdown``."""

    async def wait(self) -> str:
        """Return (why) when the transport ends on its own, not asked to stop."""


class BaseServer:
    """What every transport's server holds: the class, the config, where it listens, and
    what ``make_server`` passes: ``counts`` (keep message counts: test helpers), ``view``
    (told about every stream answered), ``slot`` and ``supervisor`` (a supervisor's worker:
    its slot of the shared metric values, the supervisor's pid)."""

    def __init__(self, processor: type[Processor], config: ServerConfig,
                 listen: str | None = None, *, counts: bool = False,
                 view: View | None = None, slot: Any = None,
                 supervisor: int | None = None) -> None:
        from .._processor import require_processor

        require_processor(processor)
        self.processor = processor
        self.config = config
        self.listen = config.listen_on(listen)
        self.is_uds = config.uds is not None
        self.bound_port: int | None = None
        self.counts = counts
        self.view = view
        self.slot = slot
        self.supervisor = supervisor

    @property
    def target(self) -> str:
        """The gRPC target Envoy dials (``unix:/path`` or ``host:port``)."""
        from ..addresses import dial_target

        return dial_target(self.listen, self.is_uds, self.bound_port)


def __getattr__(name: str) -> Any:
    if name == "StreamRecord":  # what a view is given; loaded on first use
        from .._record import StreamRecord

        return StreamRecord
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_server(processor: type[Processor], config: ServerConfig, listen: str | None = None,
                *, counts: bool = False, view: View | None = None, **worker: Any) -> Transport:
    """The server of ``config.transport`` for ``processor`` on ``listen`` (one entry of
    ``config.addresses()``). ``counts``: keep ``message_counts`` (test helpers); ``view``:
    told about every stream answered; ``worker``: what a supervisor's worker adds (``slot``,
    ``supervisor``)."""
    cls: Any = transport_class(config.transport)
    server: Transport = cls(processor, config, listen, counts=counts, view=view, **worker)
    return server
