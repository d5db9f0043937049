"""Would Envoy Gateway accept this image? Its rules, applied to the manifests alone.

Envoy Gateway (v1.x, ``internal/wasm``) resolves an image index to its linux/amd64 manifest and
compares ``image.sha256`` with *that* manifest's digest, not the index's. It then reads the
module from a Docker v2 manifest whose last layer is a Docker tar.gzip layer, or from any other
manifest as the *compat* variant (last layer ``application/vnd.oci.image.layer.v1.tar+gzip``
holding ``plugin.wasm``) or else the *oci* variant (exactly two layers, one of type
``application/vnd.module.wasm.content.layer.v1+wasm``). Everything else is refused; the
reasons below use EG's own words.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wasm.digest import WASM_MAGIC

from .errors import RegistryError, UnsupportedImage
from .layout import eg_candidates
from .reference import Reference, is_digest, parse_reference
from .transfer import (
    DEFAULT_MAX_SIZE,
    BlobSource,
    Connection,
    ManifestSource,
    Resolved,
    module_from,
    resolve_with,
)
from .transport import METADATA_LIMIT
from .untrusted import safe


@dataclass(frozen=True)
class CheckResult:
    """What ``check`` found: accepted or not, why, and the digest ``image.sha256`` needs."""

    source: str
    accepted: bool
    reasons: tuple[str, ...] = ()
    """Why Envoy Gateway would refuse the image, in its words (empty when accepted)."""
    digest: str | None = None
    """The image manifest's digest: what Envoy Gateway compares with ``image.sha256``."""
    index_digest: str | None = None
    """The image index the reference named (EG does not compare it), when there is one."""
    variant: str | None = None
    """``compat`` or ``oci``: how Envoy Gateway would read the module."""
    layers: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    module_sha256: str | None = None
    """With ``module=True``: the sha256 of the module Envoy would load."""

    @property
    def image_sha256(self) -> str | None:
        """The value to paste into EnvoyExtensionPolicy's ``image.sha256`` (accepted only)."""
        return self.digest.removeprefix("sha256:") if self.digest and self.accepted else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_sha256"] = self.image_sha256
        data["result"] = "ACCEPTED" if self.accepted else "REJECTED"
        return data


def _evaluate(source: str, fetch: ManifestSource, reference: str, blob: BlobSource,
              module: bool, max_size: int) -> CheckResult:
    resolved: Resolved | None = None
    try:
        resolved = resolve_with(fetch, reference, source)
        candidates, reasons = eg_candidates(resolved.manifest, source)
    except UnsupportedImage as exc:
        digests: dict[str, Any] = {}
        if resolved is not None:
            digests = {"digest": resolved.digest, "index_digest": resolved.index_digest}
        return CheckResult(source, False, (str(exc),), **digests)
    layers = tuple(str(layer.get("mediaType", ""))
                   for layer in resolved.manifest.get("layers") or [])
    common: dict[str, Any] = {"digest": resolved.digest, "index_digest": resolved.index_digest,
                              "layers": layers}
    if not candidates:
        return CheckResult(source, False, tuple(reasons), **common)
    notes: list[str] = []
    if resolved.index_digest:
        notes.append("the reference names an image index: Envoy Gateway compares image.sha256 "
                     "with its linux/amd64 manifest's digest, not the index digest")
    variant = "compat" if candidates[0][1] else "oci"
    if not module:
        if candidates[0][1]:
            notes.append("plugin.wasm inside the tar+gzip layer was not downloaded; --module "
                         "checks it")
        return CheckResult(source, True, (), variant=variant, notes=tuple(notes), **common)
    try:
        data = module_from(resolved, blob, max_size, source)
    except UnsupportedImage as exc:
        return CheckResult(source, False, (*reasons, str(exc)), **common)
    if not data.startswith(WASM_MAGIC):
        return CheckResult(source, False, ("the module does not start with the Wasm magic "
                                           "bytes (\\0asm): Envoy would refuse to load it",),
                           **common)
    return CheckResult(source, True, (), variant=variant, notes=tuple(notes),
                       module_sha256=hashlib.sha256(data).hexdigest(), **common)


def check_image(ref: str | Reference, *, connection: Connection | None = None,
                module: bool = False, max_size: int = DEFAULT_MAX_SIZE) -> CheckResult:
    """Fetch the manifests of ``ref`` (and, with ``module``, the module's layer) and apply
    Envoy Gateway's rules."""
    reference = parse_reference(ref) if isinstance(ref, str) else ref
    with (connection or Connection()).client(reference.registry) as client:
        return _evaluate(
            str(reference),
            lambda r: client.get_manifest(reference.repository, r),
            reference.reference,
            lambda layer: client.fetch_blob(reference.repository, layer["digest"], max_size,
                                            size=layer["size"]),
            module, max_size)


def check_file(path: str | os.PathLike[str], *, module: bool = False,
               max_size: int = DEFAULT_MAX_SIZE) -> CheckResult:
    """Apply Envoy Gateway's rules to a manifest (or index) file, or to an OCI image layout
    directory (``index.json`` and ``blobs/sha256/``, what ``skopeo copy ... oci:DIR`` writes).

    Blobs an index or a manifest names are read from ``blobs/sha256/`` beside the file.
    """
    root = Path(path)
    shown = safe(os.fspath(path))
    start = root / "index.json" if root.is_dir() else root
    blobs = (root if root.is_dir() else root.parent) / "blobs" / "sha256"

    def read(file: Path, limit: int) -> bytes:
        try:
            with open(file, "rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise UnsupportedImage(f"{shown}: cannot read {safe(str(file))}: "
                                   f"{safe(exc.strerror or str(exc))}") from None
        if len(data) > limit:
            raise UnsupportedImage(f"{shown}: {safe(file.name)} is over the {limit}-byte limit")
        return data

    def by_digest(digest: str, limit: int) -> bytes:
        data = read(blobs / digest.removeprefix("sha256:"), limit)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(f"{shown}: blob {digest} does not have that digest")
        return data

    top = read(start, METADATA_LIMIT)
    top_digest = "sha256:" + hashlib.sha256(top).hexdigest()

    def fetch(reference: str) -> tuple[bytes, str, str]:
        if reference == top_digest:
            return top, "", top_digest
        if not is_digest(reference):
            raise UnsupportedImage(f"{shown}: {safe(reference)} is not a digest")
        return by_digest(reference, METADATA_LIMIT), "", reference

    reference = top_digest
    if root.is_dir():
        # index.json is the layout's table of contents, not something a registry serves.
        try:
            entries = json.loads(top).get("manifests") or []
        except (ValueError, AttributeError):
            entries = []
        if isinstance(entries, list) and len(entries) == 1 and isinstance(entries[0], dict) \
                and is_digest(entries[0].get("digest")):
            reference = entries[0]["digest"]
    return _evaluate(shown, fetch, reference,
                     lambda layer: by_digest(layer["digest"], max_size), module, max_size)
