"""``extctl dev``: a processor and/or Wasm modules, an echo upstream and a real Envoy on loopback,
wired together by the generated config."""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

import click

import extproc
import registry
import wasm
from extproc import ServerThread

from ..config import Deployment, FilterPosition, WasmModule
from ..errors import UsageError
from .echo import EchoServer
from .envoy import EnvoyProcess

logger = logging.getLogger("extctl.dev")


def module_name(source: str) -> str:
    """A module's name from where it comes from: ``oci://r/f/tag:v1`` -> ``tag``."""
    stem = source.rstrip("/").rpartition("/")[2]
    return re.sub(r"[^a-z0-9-]+", "-", stem.split("@")[0].split(":")[0].lower()
                  .removesuffix(".wasm")).strip("-") or "wasm"


def fetch(module: WasmModule, workdir: Path,
          connection: registry.Connection | None = None) -> WasmModule:
    """The module with a local ``file`` Envoy can load: a remote one is fetched into
    ``workdir`` and checked against ``sha256`` (the manifest digest for an image, the body's
    sha256 for a URL, as Envoy Gateway means them); a local one is verified and inspected."""
    target = workdir / f"{module.name}.wasm"
    sha256 = f"sha256:{module.sha256}" if module.sha256 else None
    if module.url is not None:
        ca_file = connection.ca_file if connection is not None else None
        path = registry.pull_http(module.url, target, sha256=sha256, ca_file=ca_file).path
    elif module.image is not None:
        path = registry.pull(module.image, target, sha256=sha256, connection=connection,
                             cache=registry.Cache()).path
    else:
        path = Path(module.file or "").resolve()
        if not path.is_file():
            raise UsageError(f"--wasm {module.file}: no such file")
        if module.sha256:
            wasm.verify_file(path, module.sha256)
        wasm.inspect_file(path)  # a file Envoy could not load is refused here, by name
    return dataclasses.replace(module, file=str(path), image=None, url=None, sha256=None)


class DevStack:
    def __init__(self, processor: type[extproc.Processor] | None, *, port: int = 10000,
                 wasm: Sequence[WasmModule] = (),
                 filter_order: Sequence[FilterPosition] = (),
                 connections: Mapping[str, registry.Connection] | None = None,
                 envoy_log_level: str = "warning") -> None:
        self.connections = connections or {}
        self.envoy_log_level = envoy_log_level
        self.processor = processor
        self.port = port
        self.wasm = wasm
        self.filter_order = filter_order

    def run(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="extctl-dev-"))
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        server = envoy = echo = None
        try:
            socket_path = str(workdir / "extproc.sock")
            modules = [fetch(w, workdir, self.connections.get(w.name)) for w in self.wasm]
            if self.processor is not None:
                server = ServerThread(self.processor, uds=socket_path, socket_mode=0o600).start()
            echo = EchoServer(verbose=True).start()
            deployment = Deployment.build(
                self.processor, addresses=[socket_path] if self.processor else [],
                upstreams=[echo.address], listen=f"127.0.0.1:{self.port}", access_log=True,
                wasm=modules, filter_order=self.filter_order)
            envoy = EnvoyProcess(deployment.envoy_bootstrap(), workdir / "envoy",
                                 log_level=self.envoy_log_level).start()
            tail = threading.Thread(target=_tail, args=(envoy.log_path, stop), daemon=True)
            tail.start()
            click.echo(f"workdir: {workdir}")
            if self.processor is not None:
                mode = self.processor.processing_mode()
                click.echo(f"processor: {self.processor.__name__} on unix:{socket_path} "
                           f"(phases: {', '.join(mode.phases) or 'none'})")
            for module in modules:
                click.echo(f"wasm: {module.name} from {module.file}")
            click.echo("filters: " + " -> ".join(envoy.http_filters()))
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
