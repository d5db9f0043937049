"""pytest fixtures for testing extensions through a real Envoy.

Enable them in a ``conftest.py`` with ``pytest_plugins = ["extctl.pytest_plugin"]``:

    def test_adds_header(envoy_stack):
        with envoy_stack(MyProcessor) as stack:
            assert stack.get("/").upstream_headers()["x-added"] == ["1"]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .testing import envoy_stack as _envoy_stack


@pytest.fixture
def envoy_stack() -> Callable[..., Any]:
    """``envoy_stack(Processor, wasm=[...], **EnvoyConfig fields)``: a context manager giving a
    :class:`extctl.testing.Stack`; everything it started is stopped when the block ends."""
    return _envoy_stack
