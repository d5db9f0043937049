"""A copy of this checkout's files (tracked, and new ones not ignored) elsewhere: for tests that
build from it or run it from another place, as a fresh clone would be."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.helpers.common import ROOT


def copy_checkout(into: Path) -> Path:
    """The checkout's files copied into ``into`` (no .venv, build output or caches)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True, check=True,
                            timeout=60).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = ROOT / relative
        if not source.is_file():  # deleted in the working tree
            continue
        (into / relative).parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(source, into / relative)
        except FileNotFoundError:  # removed since it was listed
            continue
    return into
