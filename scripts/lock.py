"""The lock file: constraints.txt pins every distribution envoy-extkit[dev] needs (the whole
dependency closure, as installed in the environment this runs in) at its installed version.

scripts/setup.sh installs with ``-c constraints.txt``, so a fresh clone gets the versions the
suite last passed with. To move to newer versions: ``.venv/bin/pip install -U -e '.[dev]'``,
run ``bash scripts/test.sh``, then ``.venv/bin/python scripts/lock.py`` and commit
constraints.txt. ``--check`` exits 1 when the file differs from the environment
(tests/project/test_lock.py runs it).
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
PROJECT = "envoy-extkit"
HEADER = """\
# The versions the test suite passed with: every distribution envoy-extkit[dev] needs, pinned.
# Written by scripts/lock.py from the environment the tests ran in; scripts/setup.sh installs
# with -c constraints.txt. To update: .venv/bin/pip install -U -e '.[dev]', bash scripts/test.sh,
# then .venv/bin/python scripts/lock.py (tests/project/test_lock.py checks it is current).
"""


def closure(root: str = PROJECT, extras: frozenset[str] = frozenset({"dev"})) -> dict[str, str]:
    """Each distribution ``root[extras]`` requires, directly or not, under this interpreter's
    markers: canonical name -> installed version (``root`` itself left out)."""
    versions: dict[str, str] = {}
    done: dict[str, set[str]] = {}  # name -> extras (and "" for the base) already followed
    todo: list[tuple[str, frozenset[str]]] = [(root, extras | {""})]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        new = set(wanted) - done.setdefault(key, set())
        if not new:
            continue
        done[key] |= new
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"lock: {name} is required but not installed: run scripts/setup.sh")
        versions[key] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None:
                applies = "" in new
            else:
                applies = any(marker.evaluate({"extra": extra}) for extra in new)
            if applies:
                todo.append((requirement.name, frozenset(requirement.extras) | {""}))
    versions.pop(canonicalize_name(root), None)
    return versions


def render(versions: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(versions.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when constraints.txt is not what this environment has")
    args = parser.parse_args()
    text = render(closure())
    if args.check:
        current = LOCK.read_text() if LOCK.exists() else ""
        if current != text:
            old = {line for line in current.splitlines() if "==" in line}
            new = {line for line in text.splitlines() if "==" in line}
            print("lock: constraints.txt is not the environment's versions; "
                  "run .venv/bin/python scripts/lock.py", file=sys.stderr)
            for line in sorted(old - new):
                print(f"  - {line}", file=sys.stderr)
            for line in sorted(new - old):
                print(f"  + {line}", file=sys.stderr)
            return 1
        return 0
    LOCK.write_text(text)
    print(f"lock: {LOCK.name}: {text.count('==')} distributions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
