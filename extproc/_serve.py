"""Serving one process until a signal (``serve_async``), on any transport.

The signals and what they do are ``extproc.lifecycle``'s; workers are ``extproc._supervisor``'s;
``extproc.serve`` (``extproc._run``) chooses between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from ._config import ServerConfig
from ._processor import Processor
from .errors import ServeError
from .lifecycle import HANDLED, Stop, capture_signals
from .transports import Transport, make_server

logger = logging.getLogger("extproc.server")

# What serve() returns; a server that cannot start raises ServeError instead.
DRAINED = 0  # in-flight streams finished after the signal
FORCED = 1  # a second SIGINT or a SIGQUIT cut in-flight streams short


async def serve_async(processor: type[Processor], config: ServerConfig,
                      listen: str | None = None, stop_signals: tuple[int, ...] = HANDLED,
                      **worker: Any) -> int:
    """Serve until a signal of ``stop_signals`` stops it (``extproc.lifecycle`` says which
    signal drains and which cuts in-flight streams); DRAINED or FORCED. ``worker``: what
    ``make_server`` takes besides (a view, a supervisor's worker's slot)."""
    server = make_server(processor, config, listen, **worker)
    loop = asyncio.get_running_loop()
    stop = Stop()
    changed = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.receive(signum):
            changed.set()
        else:
            logger.info("%s again: the drain goes on", signal.Signals(signum).name)

    # Handlers first: a signal while the server starts drains it once it has started.
    with capture_signals(on_signal, stop_signals, loop=loop) as captured:
        try:
            return await _serve(server, stop, changed)
        finally:
            captured.release()  # a signal while it stops acts as it would unhandled
            await server.stop(0)


async def _serve(server: Transport, stop: Stop, changed: asyncio.Event) -> int:
    """Start, serve until a signal, drain: what serve_async does inside its signal handlers."""
    # Starting: a forcing signal cuts a hung on_startup.
    start = asyncio.ensure_future(server.start())
    if not await _unless_forced(start, stop, changed):
        logger.warning("stopped while starting")
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError, ServeError):
            await start
        return FORCED
    await start
    # Serving, until a signal (or the transport ends on its own: pyvoy's Envoy exits).
    if not stop.drain:
        signalled = asyncio.ensure_future(changed.wait())
        ended = asyncio.ensure_future(server.wait())
        await asyncio.wait({signalled, ended}, return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        if ended.done() and not stop.drain:
            raise ServeError(ended.result())
        ended.cancel()
    # Draining: a forcing signal cuts in-flight streams, then a hung on_shutdown.
    drain = asyncio.ensure_future(server.stop(0 if stop.force else None))
    if not await _unless_forced(drain, stop, changed):
        logger.warning("cutting in-flight streams")
        await server.stop(0)
        await asyncio.wait({drain}, timeout=1.0)
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
    else:
        await drain
    return FORCED if stop.force else DRAINED


async def _unless_forced(task: asyncio.Future[Any], stop: Stop, changed: asyncio.Event) -> bool:
    """Wait for ``task``; False as soon as a signal asks to force instead."""
    while not task.done():
        if stop.force:
            return False
        changed.clear()
        waiter = asyncio.ensure_future(changed.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
    return True


def _run_loop(config: ServerConfig, main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run`` on the configured loop kind (asyncio.Runner needs Python 3.11)."""
    loop = config.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        task = loop.create_task(main)
        while True:
            try:
                return loop.run_until_complete(task)
            except (SystemExit, KeyboardInterrupt) as exc:
                # asyncio lets these out of any task; from a task the processor started (the
                # server's signals never raise them: its handlers are installed) they must not
                # end the server.
                if task.done():
                    raise
                logger.error("a task raised %r; serving on", exc)
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


