"""``push`` and ``pull``: a Wasm module to and from a registry, in Envoy Gateway's layouts."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wasm import InvalidModule, inspect_bytes, normalise_sha256
from wasm.module import WASM_MAGIC

from .auth import Credentials
from .cache import PULL_POLICIES, Cache
from .client import RegistryClient
from .errors import DigestMismatch, UnsupportedImage
from .layout import (
    DOCKER_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    build_image,
    extract_plugin,
    wasm_layer,
)
from .reference import Reference, parse_reference
from .transfer_io import write_atomic

DEFAULT_MAX_SIZE = 256 * 1024 * 1024
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Connection:
    """How to reach a registry: credentials and TLS."""

    credentials: Credentials | None = None
    ca_file: str | None = None
    insecure: bool = False

    def client(self, registry: str) -> RegistryClient:
        return RegistryClient(registry, self.credentials, ca_file=self.ca_file,
                              insecure=self.insecure)


@dataclass(frozen=True)
class PushResult:
    reference: Reference
    digest: str
    """The manifest digest: what EnvoyExtensionPolicy's ``image.sha256`` must carry."""
    layout: str
    size: int

    def policy_entry(self) -> dict[str, Any]:
        """A ready-to-paste EnvoyExtensionPolicy ``wasm`` entry."""
        ref = self.reference
        url = f"{ref.registry}/{ref.repository}:{ref.tag}" if ref.tag else \
            f"{ref.registry}/{ref.repository}"
        return {"name": ref.repository.rsplit("/", 1)[-1],
                "code": {"type": "Image",
                         "image": {"url": url, "sha256": self.digest.removeprefix("sha256:")}}}


@dataclass(frozen=True)
class PullResult:
    reference: Reference
    digest: str
    path: Path
    sha256: str  # of the module itself
    size: int
    from_cache: bool = False


def push(wasm_path: str | os.PathLike[str], ref: str | Reference, *, layout: str = "oci",
         connection: Connection | None = None, progress: Progress | None = None) -> PushResult:
    """Validate the module, upload its blobs and manifest; the result names the digest."""
    reference = parse_reference(ref) if isinstance(ref, str) else ref
    data = Path(wasm_path).read_bytes()
    try:
        inspect_bytes(data)
    except InvalidModule as exc:
        raise InvalidModule(f"{os.fspath(wasm_path)}: {exc}") from None
    image = build_image(data, layout)
    with (connection or Connection()).client(reference.registry) as client:
        for blob in (image.config, *image.layers):
            client.upload_blob(reference.repository, blob.data, blob.digest, progress)
        client.put_manifest(reference.repository, reference.tag or image.digest,
                            image.manifest, OCI_MANIFEST)
    return PushResult(reference, image.digest, layout, len(data))


def resolve(client: RegistryClient, reference: Reference) -> tuple[dict[str, Any], str]:
    """The image manifest (an index resolved to linux/amd64) and its digest."""
    data, media_type, digest = client.get_manifest(reference.repository, reference.reference)
    document = json.loads(data)
    media_type = document.get("mediaType") or media_type
    if media_type in (OCI_INDEX, DOCKER_LIST) or "manifests" in document:
        for entry in document.get("manifests", []):
            platform = entry.get("platform") or {}
            if platform.get("os", "linux") == "linux" and \
                    platform.get("architecture", "amd64") == "amd64":
                data, _, digest = client.get_manifest(reference.repository, entry["digest"])
                document = json.loads(data)
                break
        else:
            raise UnsupportedImage(f"{reference}: the image index has no linux/amd64 manifest")
    return document, digest


def pull(ref: str | Reference, output: str | os.PathLike[str], *, sha256: str | None = None,
         connection: Connection | None = None, max_size: int = DEFAULT_MAX_SIZE,
         progress: Progress | None = None, cache: Cache | None = None,
         pull_policy: str = "IfNotPresent") -> PullResult:
    """Fetch the module to ``output``; every blob and the manifest digest verified.

    ``sha256`` is compared with the manifest digest (Envoy Gateway's ``image.sha256``). With a
    ``cache``, ``IfNotPresent`` uses a cached image without asking the registry (a digest
    reference works with the registry down); ``Always`` resolves the reference every time and
    reuses cached content only when the digest is unchanged. On any error nothing is left at
    ``output``.
    """
    if pull_policy not in PULL_POLICIES:
        raise ValueError(f"pull policy must be one of {', '.join(PULL_POLICIES)}")
    reference = parse_reference(ref) if isinstance(ref, str) else ref
    expected = f"sha256:{normalise_sha256(sha256)}" if sha256 else None
    module: bytes | None = None
    digest = ""
    if cache is not None and pull_policy == "IfNotPresent":
        cached_digest = cache.manifest_for(reference)
        if cached_digest and (expected is None or cached_digest == expected):
            module = cache.module_for(cached_digest)
            digest = cached_digest
    from_cache = module is not None
    if module is None:
        with (connection or Connection()).client(reference.registry) as client:
            manifest, digest = resolve(client, reference)
            if expected and digest != expected:
                raise DigestMismatch(f"{reference}: manifest digest is {digest}, expected "
                                     f"{expected}; nothing was written")
            module = cache.module_for(digest) if cache is not None else None
            from_cache = module is not None
            if module is None:
                layer, packed = wasm_layer(manifest)
                blob = client.fetch_blob(reference.repository, layer["digest"], max_size,
                                         progress)
                module = extract_plugin(blob, max_size) if packed else blob
        if not module.startswith(WASM_MAGIC):
            raise UnsupportedImage(f"{reference}: the module does not start with the Wasm "
                                   "magic bytes (\\0asm)")
        if cache is not None:
            cache.store(reference, digest, module)
    path = Path(output)
    write_atomic(path, module)
    return PullResult(reference, digest, path, hashlib.sha256(module).hexdigest(), len(module),
                      from_cache)
