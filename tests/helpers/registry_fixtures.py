"""The real registry and the test CA as fixtures, for the conftests of the folders whose tests
use them (those conftests also require docker-registry, skopeo and openssl)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.oci import Registry, make_ca, start_registry


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory,
             test_ca: dict[str, Path]) -> Iterator[Registry]:
    """docker-registry on loopback with TLS from the test CA and htpasswd auth."""
    server = start_registry(tmp_path_factory.mktemp("registry"), tls=test_ca)
    yield server
    server.stop()
