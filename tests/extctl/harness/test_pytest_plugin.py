"""The pytest plugin as a user meets it: a project with envoy-extkit installed and no
configuration of its own gets the fixtures and runs ``async def`` tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = '''
import extproc
from extproc.testing import run


class AddHeader(extproc.Processor):
    async def on_request_headers(self, headers):
        headers["x-hello"] = "world"


async def test_adds_header():
    result = await run(AddHeader)
    assert result.request.headers["x-hello"] == "world"


def test_the_fixtures_are_there(envoy_stack, proxy_wasm):
    assert callable(envoy_stack) and callable(proxy_wasm)
'''


def _pytest(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-W", "error"], cwd=project, capture_output=True, text=True,
                          timeout=120)


def test_a_project_without_configuration_gets_fixtures_and_async_tests(tmp_path):
    (tmp_path / "test_processor.py").write_text(TESTS)
    done = _pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_other_async_tests_are_left_to_their_own_plugins(tmp_path):
    """Only modules that use envoy-extkit get pytest-asyncio's mark: another module's
    unmarked ``async def`` test is not run by it (pytest says so), whatever envoy-extkit
    does."""
    (tmp_path / "test_processor.py").write_text(TESTS)
    (tmp_path / "test_other.py").write_text("async def test_elsewhere():\n    pass\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "2 passed" in done.stdout, done.stdout
    assert "test_elsewhere" in done.stdout and done.returncode != 0


def test_loading_the_plugin_imports_nothing_heavy():
    code = ("import sys, extctl.pytest_plugin; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('grpc', 'wasmtime', 'extproc', 'wasm', 'registry', 'envoy', 'httpx') "
            "or m.startswith('extctl.harness')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
