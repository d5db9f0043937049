"""pytest fixtures for testing extensions: through a real Envoy (``envoy_stack``) and, for
Wasm filters, in the proxy-wasm emulator (``proxy_wasm``).

Installed with envoy-extkit, pytest loads this plugin itself (the ``pytest11`` entry point):
no ``conftest.py`` needed. It imports nothing heavy until a fixture is used, and lets ``async
def`` tests run without configuring pytest-asyncio (its ``auto`` mode, unless the project set
``asyncio_mode`` itself):

    def test_adds_header(envoy_stack):
        with envoy_stack(MyProcessor) as stack:
            assert stack.get("/").upstream_headers()["x-added"] == ["1"]

    def test_filter(proxy_wasm):
        plugin = proxy_wasm("build/filter.wasm", plugin_configuration="on")
        assert plugin.request().status == 200
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("asyncio"):
        return  # pytest-asyncio is not installed: nothing runs async tests
    if getattr(config.option, "asyncio_mode", None) is None and not _chose(config,
                                                                           "asyncio_mode"):
        config.option.asyncio_mode = "auto"  # what --asyncio-mode=auto sets
    scope = "asyncio_default_fixture_loop_scope"
    if not _chose(config, scope):
        # Else pytest-asyncio warns that it is unset. pytest offers no public way to set a
        # configuration value from a plugin: its override mapping (deprecated) while it has one.
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore", DeprecationWarning)
            config.inicfg[scope] = "function"


def _chose(config: pytest.Config, name: str) -> bool:
    """Whether the project set ``name``: in its pytest configuration file, or with
    ``-o name=...``."""
    overrides = getattr(config.option, "override_ini", None) or []
    if any(o.split("=")[0].strip() == name for o in overrides):
        return True
    path = config.inipath
    return path is not None and name in path.read_text(errors="replace")


@pytest.fixture
def envoy_stack() -> Callable[..., Any]:
    """``envoy_stack(Processor, wasm=[...], **EnvoyConfig fields)``: a context manager giving a
    :class:`extctl.testing.Stack`; everything it started is stopped when the block ends."""
    from .harness.stack import envoy_stack as start

    return start


@pytest.fixture
def proxy_wasm() -> Iterator[Callable[..., Any]]:
    """``proxy_wasm(module, **options)``: a :class:`wasm.ProxyWasm`, closed after the test
    (``proxy_on_done`` runs unless the plugin trapped)."""
    from wasm import ProxyWasm, WasmTrap

    plugins: list[ProxyWasm] = []

    def load(module: Any, **options: Any) -> ProxyWasm:
        plugin = ProxyWasm(module, **options)
        plugins.append(plugin)
        return plugin

    yield load
    for plugin in plugins:
        # A plugin that traps in proxy_on_done fails no test that did not ask about it.
        with contextlib.suppress(WasmTrap):
            plugin.close()
