"""``extctl dev``: a processor, an echo upstream and a real Envoy on loopback, wired together."""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

import click

import extproc
from extproc.testing import ServerThread

from .echo import EchoServer
from .envoy_config import EnvoyConfig, bootstrap
from .envoy_runner import EnvoyProcess

logger = logging.getLogger("extctl.dev")


class DevStack:
    def __init__(self, processor: type[extproc.Processor], *, port: int = 10000) -> None:
        self.processor = processor
        self.port = port

    def run(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="extctl-dev-"))
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        server = envoy = echo = None
        try:
            socket_path = str(workdir / "extproc.sock")
            server = ServerThread(self.processor, uds=socket_path, socket_mode=0o600).start()
            echo = EchoServer(verbose=True).start()
            config = EnvoyConfig(self.processor, [socket_path], upstream=echo.address,
                                 listen=f"127.0.0.1:{self.port}", access_log=True)
            envoy = EnvoyProcess(bootstrap(config), workdir / "envoy", log_level="info").start()
            tail = threading.Thread(target=_tail, args=(envoy.log_path, stop), daemon=True)
            tail.start()
            mode = self.processor.processing_mode()
            click.echo(f"workdir: {workdir}")
            click.echo(f"processor: {self.processor.__name__} on unix:{socket_path} "
                       f"(phases: {', '.join(mode.phases) or 'none'})")
            click.echo(f"upstream: http://{echo.address} (echoes the request as JSON)")
            click.echo(f"envoy: http://127.0.0.1:{envoy.port} (admin http://{envoy.admin_address})")
            click.echo(f"try: curl -i http://127.0.0.1:{envoy.port}/hello")
            click.echo("Ctrl-C stops everything.")
            sys.stdout.flush()
            while not stop.wait(0.2):
                if envoy.process is None or envoy.process.poll() is not None:
                    logger.error("Envoy exited; stopping")
                    break
        finally:
            stop.set()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if envoy is not None:
                envoy.stop()
            if echo is not None:
                echo.stop()
            if server is not None:
                server.stop(grace=2)
            shutil.rmtree(workdir, ignore_errors=True)
            click.echo("stopped; removed " + str(workdir))


def _tail(path: Path, stop: threading.Event) -> None:
    """Copy Envoy's log lines to stderr, prefixed, until ``stop``."""
    position = 0
    while not stop.is_set():
        try:
            with open(path, "rb") as log:
                log.seek(position)
                chunk = log.read()
                position = log.tell()
        except FileNotFoundError:
            chunk = b""
        for line in chunk.decode(errors="replace").splitlines():
            sys.stderr.write(f"[envoy] {line}\n")
        sys.stderr.flush()
        time.sleep(0.2)
