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
from dataclasses import dataclass
from typing import Any

from .errors import UnsafeArchive, UnsupportedImage

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
RUNTIME_CONFIG_LAYER = "application/vnd.module.wasm.runtime.config.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
TAR_GZIP_LAYERS = ("application/vnd.oci.image.layer.v1.tar+gzip",
                   "application/vnd.docker.image.rootfs.diff.tar.gzip")
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
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
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


def wasm_layer(manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The descriptor holding the module, and whether it is a tar+gzip (compat) layer.

    Follows Envoy Gateway: the two-layer ``oci`` variant by media type, otherwise the last
    layer when it is tar+gzip.
    """
    layers = manifest.get("layers") or []
    media_types = [layer.get("mediaType") for layer in layers]
    if WASM_LAYER in media_types:
        if len(layers) != 2:
            raise UnsupportedImage(
                f"found {len(layers)} layers with a {WASM_LAYER} layer; Envoy Gateway accepts "
                "the oci variant with exactly two layers (runtime config + module)")
        return layers[media_types.index(WASM_LAYER)], False
    if layers and media_types[-1] in TAR_GZIP_LAYERS:
        return layers[-1], True
    raise UnsupportedImage(
        f"found layers {media_types}; Envoy Gateway accepts a two-layer image with a "
        f"{WASM_LAYER} layer, or a last layer of tar+gzip holding plugin.wasm")


def extract_plugin(layer: bytes, max_size: int) -> bytes:
    """``plugin.wasm`` from a tar+gzip layer, at any depth; refuses links, ``..`` and bombs."""
    try:
        raw = gzip.GzipFile(fileobj=io.BytesIO(layer))
        with tarfile.open(fileobj=raw, mode="r|") as tar:
            return _find_plugin(tar, max_size)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UnsupportedImage(f"the tar+gzip layer cannot be read: {exc}") from None


def _find_plugin(tar: tarfile.TarFile, max_size: int) -> bytes:
    total = 0
    for member in tar:
        total += member.size
        if total > max_size:
            # Everything before plugin.wasm is decompressed too: bound it as well.
            raise UnsafeArchive(f"the layer expands past the {max_size}-byte limit before "
                                "plugin.wasm")
        name = member.name
        parts = name.replace("\\", "/").split("/")
        if name.startswith("/") or ".." in parts:
            raise UnsafeArchive(f"layer entry {name!r} escapes the archive; refusing it")
        if member.issym() or member.islnk():
            raise UnsafeArchive(f"layer entry {name!r} is a link; refusing the layer")
        if member.isfile() and parts[-1] == "plugin.wasm":
            if member.size > max_size:
                raise UnsafeArchive(f"plugin.wasm is {member.size} bytes, over the "
                                    f"{max_size}-byte limit")
            f = tar.extractfile(member)
            assert f is not None
            data = f.read(max_size + 1)
            if len(data) > max_size:
                raise UnsafeArchive(f"plugin.wasm expands past the {max_size}-byte limit")
            return data
    raise UnsupportedImage("the tar+gzip layer holds no plugin.wasm")
