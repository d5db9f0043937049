"""The filters of ``extctl new wasm`` projects, built by their own build step, as fixtures for
the conftests of the folders whose tests use them (the AssemblyScript one needs npm)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _template_module(tmp_path_factory: pytest.TempPathFactory, lang: str) -> Path:
    """The filter of an `extctl new wasm --lang LANG` project, built by its own build step."""
    from extctl.scaffold import new_project

    project = new_project(f"wasm-{lang}", "tmpl-filter", tmp_path_factory.mktemp(lang))
    built = subprocess.run([sys.executable, "build_filter.py"], cwd=project, timeout=600,
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    return project / "build" / "filter.wasm"


@pytest.fixture(scope="session")
def wat_template_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _template_module(tmp_path_factory, "wat")


@pytest.fixture(scope="session")
def as_template_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built with the AssemblyScript SDK (npm); its root id is the project name."""
    return _template_module(tmp_path_factory, "assemblyscript")
