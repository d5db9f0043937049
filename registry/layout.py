"""The Wasm image layouts Envoy Gateway (and Istio) pull, built reproducibly, and read back.

- ``oci``: exactly two layers — a runtime-config JSON layer and the module
  (``application/vnd.module.wasm.content.layer.v1+wasm``), config
  ``application/vnd.module.wasm.config.v1+json``;
- ``compat``: one tar+gzip layer holding ``plugin.wasm``.

Nothing time-dependent goes in: the same module gives the same manifest digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgument, LimitExceeded, UnsafeArchive, UnsupportedImage
from .reference import is_digest
from .untrusted import escape

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
RUNTIME_CONFIG_LAYER = "application/vnd.module.wasm.runtime.config.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
TAR_GZIP_LAYERS = (OCI_LAYER, DOCKER_LAYER)
ARCHIVE_OVERHEAD = 1024 * 1024
"""Decompressed bytes a tar+gzip layer may hold beyond ``max_size``: headers, padding."""
MAX_ENTRIES = 10_000
"""Entries read from a tar+gzip layer before giving up on finding plugin.wasm."""
ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST))
LAYOUTS = ("oci", "compat")


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                             "size": len(self.data)}
        if annotations:
            d["annotations"] = annotations
        return d


@dataclass(frozen=True)
class Image:
    manifest: bytes
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def build_image(wasm: bytes, layout: str = "oci") -> Image:
    """The manifest, config and layers of ``layout`` for the module ``wasm``."""
    if layout == "oci":
        config = Blob(WASM_CONFIG, _canonical({}))
        layers: tuple[Blob, ...] = (
            Blob(RUNTIME_CONFIG_LAYER, _canonical({})),
            Blob(WASM_LAYER, wasm),
        )
        annotations: list[dict[str, str] | None] = [None, {"org.opencontainers.image.title":
                                                           "plugin.wasm"}]
    elif layout == "compat":
        config = Blob(OCI_CONFIG, _canonical({"architecture": "amd64", "os": "linux",
                                              "rootfs": {"type": "layers", "diff_ids": [
                                                  "sha256:" + hashlib.sha256(
                                                      _tar(wasm)).hexdigest()]}}))
        layers = (Blob(TAR_GZIP_LAYERS[0], _gzip(_tar(wasm))),)
        annotations = [None]
    else:
        raise InvalidArgument(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    manifest = _canonical({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [blob.descriptor(a) for blob, a in zip(layers, annotations, strict=True)],
    })
    return Image(manifest, config, layers)


def _tar(wasm: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime = len(wasm), 0o644, 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return out.getvalue()


def _gzip(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return out.getvalue()


def parse_document(data: bytes, what: str) -> dict[str, Any]:
    """A manifest or index: a JSON object, else UnsupportedImage (an HTML page, an array)."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        start = escape(data[:40].decode("utf-8", "replace"), 40)
        raise UnsupportedImage(f"{what} is not JSON (it starts with {start!r})") from None
    if not isinstance(document, dict):
        raise UnsupportedImage(f"{what} is a JSON {type(document).__name__}, not a manifest "
                               "object")
    return document


def is_index(document: dict[str, Any], media_type: str = "") -> bool:
    kind = document.get("mediaType") or media_type
    return kind in (OCI_INDEX, DOCKER_LIST) or "manifests" in document


def descriptors(document: dict[str, Any], key: str, what: str) -> list[dict[str, Any]]:
    """``document[key]`` as descriptors, each with a media type, a sha256 digest and a size."""
    items = document.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise UnsupportedImage(f"{what}: {key} is not a list")
    for n, item in enumerate(items):
        label = f"{what}: {key}[{n}]"
        if not isinstance(item, dict):
            raise UnsupportedImage(f"{label} is not a descriptor object")
        if not isinstance(item.get("mediaType", ""), str):
            raise UnsupportedImage(f"{label} has a mediaType that is not a string")
        if not is_digest(item.get("digest")):
            raise UnsupportedImage(f"{label} has no sha256 digest (found "
                                   f"{escape(str(item.get('digest')), 80)!r})")
        size = item.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise UnsupportedImage(f"{label} has no valid size (found "
                                   f"{escape(str(size), 40)!r})")
    return items


def platform_entry(index: dict[str, Any], what: str) -> dict[str, Any]:
    """The linux/amd64 entry of an image index: the manifest Envoy Gateway pulls."""
    for entry in descriptors(index, "manifests", what):
        platform = entry.get("platform") or {}
        if not isinstance(platform, dict):
            continue
        if platform.get("os", "linux") == "linux" and \
                platform.get("architecture", "amd64") == "amd64":
            return entry
    raise UnsupportedImage(f"{what}: the image index has no linux/amd64 manifest")


def eg_candidates(manifest: dict[str, Any], what: str
                  ) -> tuple[list[tuple[dict[str, Any], bool]], list[str]]:
    """The layers Envoy Gateway would read the module from, in its order, each with whether
    it is a tar+gzip (compat) layer; and, in EG's terms, why each other variant does not apply.

    EG: a Docker v2 manifest must end with a Docker tar.gzip layer (compat); any other
    manifest is tried as compat (last layer ``application/vnd.oci.image.layer.v1.tar+gzip``
    holding plugin.wasm), then as the oci variant (exactly two layers, one of type
    ``application/vnd.module.wasm.content.layer.v1+wasm``).
    """
    layers = descriptors(manifest, "layers", what)
    found: list[tuple[dict[str, Any], bool]] = []
    reasons: list[str] = []
    if not layers:
        return found, ["number of layers must be greater than zero"]
    last = layers[-1].get("mediaType", "")
    if manifest.get("mediaType") == DOCKER_MANIFEST:
        if last == DOCKER_LAYER:
            found.append((layers[-1], True))
        else:
            reasons.append(f"could not extract Wasm file from the image as Docker container: "
                           f"invalid media type {escape(last, 100)} (expect {DOCKER_LAYER})")
        return found, reasons
    if last == OCI_LAYER:
        found.append((layers[-1], True))
    else:
        reasons.append(f"could not parse as compat variant: invalid media type "
                       f"{escape(last, 100)} (expect {OCI_LAYER})")
    if len(layers) != 2:
        reasons.append("could not parse as oci variant: number of layers must be 2 but got "
                       f"{len(layers)}")
    else:
        module = next((layer for layer in layers if layer.get("mediaType") == WASM_LAYER), None)
        if module is None:
            reasons.append(f"could not parse as oci variant: could not find the layer of type "
                           f"{WASM_LAYER}")
        else:
            found.append((module, False))
    return found, reasons


def wasm_layer(manifest: dict[str, Any], what: str = "the image"
               ) -> list[tuple[dict[str, Any], bool]]:
    """The layers to try for the module, in Envoy Gateway's order; UnsupportedImage when EG
    would find none (the message gives EG's reasons)."""
    found, reasons = eg_candidates(manifest, what)
    if not found:
        raise UnsupportedImage(f"{what}: Envoy Gateway would refuse it: " + "; ".join(reasons))
    return found


class _Limited:
    """A reader that counts what it hands out: a decompression bomb stops at ``limit``."""

    def __init__(self, inner: Any, limit: int, what: str) -> None:
        self.inner = inner
        self.limit = limit
        self.what = what
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self.limit + 1 - self.count
        data: bytes = self.inner.read(min(size, self.limit + 1 - self.count))
        self.count += len(data)
        if self.count > self.limit:
            raise LimitExceeded(f"{self.what} expands past the {self.limit}-byte limit")
        return data


def extract_plugin(layer: bytes, max_size: int) -> bytes:
    """``plugin.wasm`` from a tar+gzip layer, at any depth; refuses links, ``..`` and bombs.

    The whole decompressed stream is bounded (``max_size`` plus room for headers), not only
    the size each entry declares, and so is the number of entries.
    """
    try:
        raw = _Limited(gzip.GzipFile(fileobj=io.BytesIO(layer)), max_size + ARCHIVE_OVERHEAD,
                       "the tar+gzip layer")
        with tarfile.open(fileobj=raw, mode="r|") as tar:  # type: ignore[call-overload]
            return _find_plugin(tar, max_size)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise UnsupportedImage(f"the tar+gzip layer cannot be read: {escape(str(exc))}") \
            from None


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for count, member in enumerate(tar, 1):
        if count > MAX_ENTRIES:
            raise LimitExceeded(f"the layer holds more than {MAX_ENTRIES} entries before "
                                "plugin.wasm")
        yield member


def _find_plugin(tar: tarfile.TarFile, max_size: int) -> bytes:
    total = 0
    for member in _members(tar):
        total += member.size
        if total > max_size:
            # Everything before plugin.wasm is decompressed too: bound it as well.
            raise LimitExceeded(f"the layer expands past the {max_size}-byte limit before "
                                "plugin.wasm")
        name = member.name
        parts = name.replace("\\", "/").split("/")
        if name.startswith("/") or ".." in parts:
            raise UnsafeArchive(f"layer entry {escape(name)!r} escapes the archive; refusing it")
        if member.issym() or member.islnk():
            raise UnsafeArchive(f"layer entry {escape(name)!r} is a link; refusing the layer")
        if member.isfile() and parts[-1] == "plugin.wasm":
            if member.size > max_size:
                raise LimitExceeded(f"plugin.wasm is {member.size} bytes, over the "
                                    f"{max_size}-byte limit")
            f = tar.extractfile(member)
            assert f is not None
            data = f.read(max_size + 1)
            if len(data) > max_size:
                raise LimitExceeded(f"plugin.wasm expands past the {max_size}-byte limit")
            return data
    raise UnsupportedImage("the tar+gzip layer holds no plugin.wasm")
