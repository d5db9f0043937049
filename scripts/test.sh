#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint (ruff), type-check (mypy strict), then run the whole suite:
# unit tests, end-to-end tests through a real Envoy, and the documentation site (built with
# mkdocs --strict, checked in a headless Chromium: tests/project/test_docs.py). Extra arguments
# go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
