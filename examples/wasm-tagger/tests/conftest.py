import pytest

from build_filter import build

# envoy_stack: a real Envoy (and an echo upstream) running the module (from envoy-extkit).
pytest_plugins = ["extctl.pytest_plugin"]


@pytest.fixture(scope="session")
def module():
    """The filter, built fresh for this test session."""
    return build()
