"""envoy-configs/ is what `python deploy.py` writes, and Envoy accepts it."""

import subprocess
from pathlib import Path

from extctl.testing import find_envoy

from deploy import DEPLOYMENT

ROOT = Path(__file__).resolve().parent.parent


def test_configs_are_current():
    for name, text in DEPLOYMENT.render().items():
        assert (ROOT / "envoy-configs" / name).read_text() == text, \
            f"envoy-configs/{name} is stale: run python deploy.py"


def test_envoy_accepts_the_standalone_config(module):
    # The config names build/filter.wasm relative to where Envoy runs.
    check = subprocess.run([find_envoy(), "--mode", "validate", "-c", "envoy-configs/envoy.yaml"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
