"""pytest fixtures for testing extensions: through a real Envoy (``envoy_stack``) and, for
Wasm filters, in the proxy-wasm emulator (``proxy_wasm``).

Installed with envoy-extkit, pytest loads this plugin itself (the ``pytest11`` entry point):
no ``conftest.py`` needed (``-p no:extctl.pytest_plugin`` turns it off). It imports nothing
heavy until a fixture is used, and ``async def`` tests in modules that use envoy-extkit run
without configuring pytest-asyncio (they get its mark; other async tests are left alone):

    def test_adds_header(envoy_stack):
        with envoy_stack(MyProcessor) as stack:
            assert stack.get("/").upstream_headers()["x-added"] == ["1"]

    def test_filter(proxy_wasm):
        plugin = proxy_wasm("build/filter.wasm", plugin_configuration="on")
        assert plugin.request().status == 200
"""

from __future__ import annotations

import contextlib
import inspect
import re
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

_PACKAGES = ("extproc", "extctl", "wasm", "registry")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("asyncio"):
        return  # pytest-asyncio is not installed: nothing runs async tests
    scope = "asyncio_default_fixture_loop_scope"
    if not _chose(config, scope):
        # Else pytest-asyncio warns that it is unset. pytest offers no public way to set a
        # configuration value from a plugin: its override mapping (deprecated) while it has one.
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore", DeprecationWarning)
            config.inicfg[scope] = "function"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """``async def`` tests of modules that use envoy-extkit run on pytest-asyncio without
    any configuration: they get its mark, as if written with ``@pytest.mark.asyncio`` (only
    those: other projects' async tests, anyio's or trio's, are left alone)."""
    is_test = getattr(collector, "funcnamefilter", None)
    if not (inspect.iscoroutinefunction(obj) and is_test is not None and is_test(name)
            and collector.config.pluginmanager.hasplugin("asyncio")):
        return
    marks = {m.name for m in getattr(obj, "pytestmark", [])}
    if marks & {"asyncio", "anyio", "trio"} or not _uses_us(collector):
        return
    pytest.mark.asyncio(obj)


def _uses_us(collector: pytest.Collector) -> bool:
    module = getattr(collector, "module", None) or getattr(collector, "obj", None)
    if not isinstance(module, types.ModuleType):
        return False
    for value in vars(module).values():
        name = value.__name__ if isinstance(value, types.ModuleType) else getattr(
            value, "__module__", None)
        if isinstance(name, str) and name.split(".")[0] in _PACKAGES:
            return True
    return False


def _chose(config: pytest.Config, name: str) -> bool:
    """Whether the project set ``name``: a line of its pytest configuration file, or
    ``-o name=...``."""
    overrides = getattr(config.option, "override_ini", None) or []
    if any(o.split("=")[0].strip() == name for o in overrides):
        return True
    path = config.inipath
    setting = re.compile(rf"^\s*{re.escape(name)}\s*[=:]", re.MULTILINE)
    return path is not None and setting.search(path.read_text(errors="replace")) is not None


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
