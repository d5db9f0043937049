"""pytest fixtures for testing extensions: through a real Envoy (``envoy_stack``) and, for
Wasm filters, in the proxy-wasm emulator (``proxy_wasm``).

Enable them in a ``conftest.py`` with ``pytest_plugins = ["extctl.pytest_plugin"]``:

    def test_adds_header(envoy_stack):
        with envoy_stack(MyProcessor) as stack:
            assert stack.get("/").upstream_headers()["x-added"] == ["1"]

    def test_filter(proxy_wasm):
        plugin = proxy_wasm("build/filter.wasm", plugin_configuration="on")
        assert plugin.request().status == 200
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .harness.stack import envoy_stack as _envoy_stack


@pytest.fixture
def envoy_stack() -> Callable[..., Any]:
    """``envoy_stack(Processor, wasm=[...], **EnvoyConfig fields)``: a context manager giving a
    :class:`extctl.testing.Stack`; everything it started is stopped when the block ends."""
    return _envoy_stack


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
