"""A content-addressed cache of pulled images, with Envoy Gateway's pull policies.

    ROOT/blobs/sha256/HEX                   manifests, indexes and layers, named by their sha256
    ROOT/tags/REGISTRY/REPO/_tags/TAG       the digest a tag last resolved to

Nothing derived is stored: a read walks the chain again (tag -> manifest digest -> manifest
bytes -> layer digest -> layer bytes -> module), checking every sha256, so a damaged or
tampered entry is a miss, never a wrong module. ``_tags`` cannot be a repository component,
so ``a:b`` and ``a/b:c`` do not collide. The root is created 0700. Every file is written to a
temporary name and renamed; temporary files older than an hour (a killed run) are swept.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import RegistryError
from .reference import Reference, is_digest
from .transfer_io import sweep, write_output

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
        self._ready = self._swept = False

    def _sweep(self) -> None:
        if not self._swept:
            self._swept = True
            if self.root.is_dir():
                sweep(self.root, recursive=True)

    def _ensure(self) -> None:
        if not self._ready:
            try:
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryError(f"cannot create the cache {self.root}: "
                                    f"{exc.strerror or exc}") from None
            self._sweep()
            self._ready = True

    def _tag_path(self, ref: Reference) -> Path:
        return (self.root / "tags" / ref.registry.replace(":", "_").replace("[", "").replace(
            "]", "") / ref.repository / "_tags" / (ref.tag or "latest"))

    def _blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def tag(self, ref: Reference) -> str | None:
        """The digest a tag last resolved to, or the reference's own digest."""
        self._sweep()
        if ref.digest:
            return ref.digest
        try:
            value = self._tag_path(ref).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return value if is_digest(value) else None

    def blob(self, digest: str) -> bytes | None:
        """The bytes stored for ``digest``, re-verified; None when absent or damaged."""
        if not is_digest(digest):
            return None
        try:
            data = self._blob_path(digest).read_bytes()
        except OSError:
            return None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            return None  # damaged: fetch again
        return data

    def put_blob(self, digest: str, data: bytes) -> None:
        if not is_digest(digest) or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            return  # only verified content goes in
        self._ensure()
        path = self._blob_path(digest)
        if not path.exists():
            write_output(path, data)

    def set_tag(self, ref: Reference, digest: str) -> None:
        if ref.tag and is_digest(digest):
            self._ensure()
            write_output(self._tag_path(ref), digest.encode())
