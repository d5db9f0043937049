import pytest

from build_filter import build


@pytest.fixture(scope="session")
def module():
    """The filter, built fresh for this test session."""
    return build()
