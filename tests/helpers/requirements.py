"""What a test folder needs beyond the venv, checked when its tests are collected: a missing
tool is a failure of the whole run (in CI and out of it), never a skip."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def require(conftest: str, *tools: str) -> Callable[..., None]:
    """A ``pytest_collection_modifyitems`` hook for the conftest at ``conftest``: when any test
    under its folder is collected, each of ``tools`` (a command name or an absolute path) must
    be there."""
    folder = Path(conftest).resolve().parent

    def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
        if not any(folder in Path(item.path).resolve().parents for item in items):
            return
        for tool in tools:
            if shutil.which(tool) is None:
                raise pytest.UsageError(
                    f"{tool} is missing ({folder.relative_to(ROOT)}/ needs it): "
                    "run scripts/setup.sh (apt-get install)")

    return pytest_collection_modifyitems
