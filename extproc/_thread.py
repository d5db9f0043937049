"""``ServerThread``: a real gRPC server for a Processor on its own event-loop thread.

For code that is not async and must not block: sync tests, ``extctl dev``, notebooks.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ._config import ServerConfig
from ._processor import Processor
from .transports import View, make_server


class ServerThread:
    """A real gRPC server for ``processor`` on its own event loop thread, for sync tests
    (with ``transport="pyvoy"``, the thread starts and stops the serving Envoy). ``view`` is
    told about every stream answered; the other keywords are :class:`ServerConfig`'s.

        with ServerThread(MyProcessor, uds=str(tmp_path / "p.sock")) as server:
            ...  # point Envoy at server.target
    """

    def __init__(self, processor: type[Processor], *, view: View | None = None,
                 **config: Any) -> None:
        self.config = ServerConfig(**config)
        self.server = make_server(processor, self.config, counts=True, view=view)
        self._loop = self.config.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"extproc-{processor.__name__}")

    @property
    def target(self) -> str:
        return self.server.target

    def start(self) -> ServerThread:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(30)
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    def stop(self, grace: float = 0) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop).result(
                grace + 30)
        finally:
            self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
