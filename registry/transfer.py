"""``push`` and ``pull``: a Wasm module to and from a registry, in Envoy Gateway's layouts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wasm.digest import WASM_MAGIC, normalise_sha256
from wasm.errors import InvalidModule

from .auth import Credentials
from .cache import PULL_POLICIES, Cache
from .client import RegistryClient
from .errors import (
    DigestMismatch,
    InvalidArgument,
    LimitExceeded,
    NotAModule,
    RegistryError,
    UnsupportedImage,
)
from .layout import (
    OCI_MANIFEST,
    build_image,
    extract_plugin,
    is_index,
    parse_document,
    platform_entry,
    wasm_layer,
)
from .reference import Reference, parse_reference
from .transfer_io import sweep, write_output
from .transport import DEFAULT_TIMEOUT

DEFAULT_MAX_SIZE = 256 * 1024 * 1024
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Connection:
    """How to reach a registry: credentials, TLS, and the deadline of each request."""

    credentials: Credentials | None = None
    ca_file: str | None = None
    insecure: bool = False
    timeout: float = DEFAULT_TIMEOUT

    def client(self, registry: str) -> RegistryClient:
        return RegistryClient(registry, self.credentials, ca_file=self.ca_file,
                              insecure=self.insecure, timeout=self.timeout)


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
    index_digest: str | None = None
    """The image index the reference named, when it named one (``digest`` is its
    linux/amd64 manifest: what Envoy Gateway compares)."""


def push(wasm_path: str | os.PathLike[str], ref: str | Reference, *, layout: str = "oci",
         connection: Connection | None = None, progress: Progress | None = None) -> PushResult:
    """Validate the module, upload its blobs and manifest; the result names the digest."""
    reference = parse_reference(ref) if isinstance(ref, str) else ref
    from wasm.module import inspect_bytes  # wasmtime validates it: only push needs that

    data = Path(wasm_path).read_bytes()
    try:
        inspect_bytes(data)
    except InvalidModule as exc:
        raise NotAModule(f"{os.fspath(wasm_path)}: {exc}") from None
    image = build_image(data, layout)
    with (connection or Connection()).client(reference.registry) as client:
        for blob in (image.config, *image.layers):
            client.upload_blob(reference.repository, blob.data, blob.digest, progress)
        client.put_manifest(reference.repository, reference.tag or image.digest,
                            image.manifest, OCI_MANIFEST)
    return PushResult(reference, image.digest, layout, len(data))


ManifestSource = Callable[[str], tuple[bytes, str, str]]
"""``reference -> (bytes, media type, digest)``; a digest reference is verified."""
BlobSource = Callable[[dict[str, Any]], bytes]
"""``descriptor -> bytes``, verified against the descriptor's digest and size."""


@dataclass(frozen=True)
class Resolved:
    """An image manifest, an index resolved to its linux/amd64 manifest."""

    manifest: dict[str, Any]
    digest: str
    """The image manifest's digest: what Envoy Gateway compares with ``image.sha256``."""
    index: dict[str, Any] | None = None
    index_digest: str | None = None


def resolve_with(fetch: ManifestSource, reference: str, what: str) -> Resolved:
    """Resolve ``reference`` through ``fetch``: an index to its linux/amd64 manifest."""
    data, media_type, digest = fetch(reference)
    document = parse_document(data, f"{what}: the manifest")
    if not is_index(document, media_type):
        return Resolved(document, digest)
    entry = platform_entry(document, f"{what}: the image index")
    child, child_type, child_digest = fetch(entry["digest"])
    manifest = parse_document(child, f"{what}: the linux/amd64 manifest")
    if is_index(manifest, child_type):
        raise UnsupportedImage(f"{what}: the index points to another index for linux/amd64")
    return Resolved(manifest, child_digest, document, digest)


def resolve(client: RegistryClient, reference: Reference) -> tuple[dict[str, Any], str]:
    """The image manifest (an index resolved to linux/amd64) and its digest."""
    resolved = resolve_with(lambda r: client.get_manifest(reference.repository, r),
                            reference.reference, str(reference))
    return resolved.manifest, resolved.digest


def module_from(resolved: Resolved, blob: BlobSource, max_size: int, what: str) -> bytes:
    """The module of an image, from the layer Envoy Gateway would read."""
    candidates = wasm_layer(resolved.manifest, what)
    for n, (layer, packed) in enumerate(candidates):
        data = blob(layer)
        if not packed:
            if len(data) > max_size:
                raise LimitExceeded.naming("{what}: the module is {size} bytes, over the "
                                           "{limit}-byte limit ({max_size})", what=what,
                                           size=len(data), limit=max_size)
            return data
        try:
            return extract_plugin(data, max_size)
        except UnsupportedImage:
            if n == len(candidates) - 1:
                raise
    raise UnsupportedImage(f"{what}: no layer holds the module")


class _Miss(Exception):
    pass


def _from_cache(cache: Cache, reference: Reference, max_size: int
                ) -> tuple[Resolved, bytes] | None:
    """The image from the cache alone, every link of the chain re-verified; None on a miss."""
    top = cache.tag(reference)
    if top is None:
        return None

    def fetch(digest: str) -> tuple[bytes, str, str]:
        data = cache.blob(digest)
        if data is None:
            raise _Miss
        return data, "", digest

    def blob(layer: dict[str, Any]) -> bytes:
        data = cache.blob(layer["digest"])
        if data is None or len(data) != layer["size"]:
            raise _Miss
        return data

    try:
        resolved = resolve_with(fetch, top, str(reference))
        return resolved, module_from(resolved, blob, max_size, str(reference))
    except (_Miss, RegistryError):
        return None  # absent or unusable: ask the registry


def pull(ref: str | Reference, output: str | os.PathLike[str], *, sha256: str | None = None,
         connection: Connection | None = None, max_size: int = DEFAULT_MAX_SIZE,
         progress: Progress | None = None, cache: Cache | None = None,
         pull_policy: str | None = None) -> PullResult:
    """Fetch the module to ``output``; every blob and the manifest digest verified.

    ``sha256`` is compared with the manifest digest (Envoy Gateway's ``image.sha256``; for an
    index, the digest of its linux/amd64 manifest). With a ``cache``, ``IfNotPresent`` uses a
    cached image without asking the registry (a digest reference, an index's included, works
    with the registry down); ``Always`` resolves the reference every time and reuses cached
    content only when its digest matches. None (the default): ``Always`` for a tag, which
    can be pushed again, ``IfNotPresent`` for a digest, which names fixed content (docker's
    and oras' behaviour). On any error nothing is left at ``output``.
    """
    if pull_policy is not None and pull_policy not in PULL_POLICIES:
        raise InvalidArgument(f"pull policy must be one of {', '.join(PULL_POLICIES)}")
    reference = parse_reference(ref) if isinstance(ref, str) else ref
    if pull_policy is None:
        pull_policy = "IfNotPresent" if reference.digest else "Always"
    try:
        expected = f"sha256:{normalise_sha256(sha256)}" if sha256 else None
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    path = Path(output)
    sweep(path.parent)
    what = str(reference)
    hit = _from_cache(cache, reference, max_size) \
        if cache is not None and pull_policy == "IfNotPresent" else None
    if hit is not None and expected is not None and hit[0].digest != expected:
        hit = None
    from_cache = hit is not None
    if hit is not None:
        resolved, module = hit
    else:
        reused: list[bool] = []
        with (connection or Connection()).client(reference.registry) as client:

            def fetch(r: str) -> tuple[bytes, str, str]:
                data, media_type, digest = client.get_manifest(reference.repository, r)
                if cache is not None:
                    cache.put_blob(digest, data)
                return data, media_type, digest

            def blob(layer: dict[str, Any]) -> bytes:
                cached = cache.blob(layer["digest"]) if cache is not None else None
                if cached is not None and len(cached) == layer["size"]:
                    reused.append(True)
                    return cached
                reused.append(False)
                data = client.fetch_blob(reference.repository, layer["digest"], max_size,
                                         progress, size=layer["size"])
                if cache is not None:
                    cache.put_blob(layer["digest"], data)
                return data

            resolved = resolve_with(fetch, reference.reference, what)
            if expected and resolved.digest != expected:
                raise DigestMismatch(f"{reference}: manifest digest is {resolved.digest}, "
                                     f"expected {expected}; nothing was written",
                                     expected=expected, actual=resolved.digest)
            module = module_from(resolved, blob, max_size, what)
        from_cache = bool(reused) and all(reused)
        if cache is not None:
            cache.set_tag(reference, resolved.index_digest or resolved.digest)
    if not module.startswith(WASM_MAGIC):
        raise UnsupportedImage(f"{reference}: the module does not start with the Wasm "
                               "magic bytes (\\0asm)")
    write_output(path, module)
    return PullResult(reference, resolved.digest, path, hashlib.sha256(module).hexdigest(),
                      len(module), from_cache, resolved.index_digest)
