"""Build the Go reference ext_proc server (``bench/go_extproc.go``) for bench/run.py.

GOPATH mode against Debian's packages (``apt-get install golang-go golang-google-grpc-dev``),
no network: the binary goes to ``bench/.build/go_extproc-<hash>``, the hash taken over the
source and ``go version``, so it is rebuilt when either changes and reused otherwise.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SOURCE = BENCH / "go_extproc.go"
BUILD = BENCH / ".build"
GOCODE = Path("/usr/share/gocode")  # where Debian's golang-*-dev packages put their source
INSTALL = "apt-get install -y golang-go golang-google-grpc-dev"


class Unavailable(Exception):
    """The Go reference cannot be built here; the message says why in one line."""


def _environment() -> dict[str, str]:
    return {**os.environ, "GO111MODULE": "off", "GOFLAGS": "",
            "GOPATH": f"{BUILD / 'gopath'}{os.pathsep}{GOCODE}",
            "GOCACHE": str(BUILD / "go-cache")}


def build() -> Path:
    """The path of the built server; :class:`Unavailable` when Go or its packages are missing."""
    go = shutil.which("go")
    if go is None:
        raise Unavailable(f"go is not installed ({INSTALL})")
    for package in ("google.golang.org/grpc", "google.golang.org/protobuf/encoding/protowire"):
        if not (GOCODE / "src" / package).is_dir():
            raise Unavailable(f"{package} is not in {GOCODE} ({INSTALL})")
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256(SOURCE.read_bytes() + version.encode()).hexdigest()[:16]
    binary = BUILD / f"go_extproc-{digest}"
    if binary.exists():
        return binary
    BUILD.mkdir(exist_ok=True)
    partial = binary.with_suffix(".partial")
    done = subprocess.run([go, "build", "-o", str(partial), str(SOURCE)], cwd=BENCH,
                          env=_environment(), capture_output=True, text=True)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["(no output)"])[0]
        raise Unavailable(f"go build failed: {first}")
    for old in BUILD.glob("go_extproc-*"):
        if old != partial:
            old.unlink()  # builds of earlier sources
    partial.rename(binary)
    return binary
