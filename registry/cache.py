"""A content-addressed cache of pulled modules, with Envoy Gateway's pull policies.

    ROOT/modules/sha256/HEX          a module, named by its own sha256 (checked on every read)
    ROOT/manifests/sha256/HEX        the module sha256 an image manifest resolves to
    ROOT/tags/REGISTRY/REPO/TAG      the manifest digest a tag last resolved to

Every file is written to a temporary name and renamed, so concurrent pulls of one reference
never see a half-written entry.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .reference import Reference
from .transfer_io import write_atomic

PULL_POLICIES = ("IfNotPresent", "Always")


def default_root() -> Path:
    configured = os.environ.get("EXTCTL_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "envoy-extkit"


class Cache:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def _tag_path(self, ref: Reference) -> Path:
        return self.root / "tags" / ref.registry.replace(":", "_") / ref.repository / (
            ref.tag or "latest")

    def manifest_for(self, ref: Reference) -> str | None:
        """The manifest digest a reference resolves to from the cache alone."""
        if ref.digest:
            return ref.digest
        try:
            return self._tag_path(ref).read_text().strip() or None
        except FileNotFoundError:
            return None

    def module_for(self, manifest_digest: str) -> bytes | None:
        """The cached module of an image, re-verified; None when absent or damaged."""
        hexdigest = manifest_digest.removeprefix("sha256:")
        try:
            module_sha = (self.root / "manifests" / "sha256" / hexdigest).read_text().strip()
            data = (self.root / "modules" / "sha256" / module_sha).read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != module_sha:
            return None  # damaged: pull again
        return data

    def store(self, ref: Reference, manifest_digest: str, module: bytes) -> None:
        module_sha = hashlib.sha256(module).hexdigest()
        write_atomic(self.root / "modules" / "sha256" / module_sha, module)
        write_atomic(self.root / "manifests" / "sha256" / manifest_digest.removeprefix(
            "sha256:"), module_sha.encode())
        if ref.tag:
            write_atomic(self._tag_path(ref), manifest_digest.encode())
