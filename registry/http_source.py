"""Modules over HTTP (EnvoyExtensionPolicy ``code.type: HTTP``): sha256 of the downloaded body,
then gzip and tar unboxed as Envoy Gateway does."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import ssl
import tarfile
from pathlib import Path
from typing import Any

import httpx

from wasm import normalise_sha256
from wasm.module import WASM_MAGIC

from .errors import DigestMismatch, NotFound, RegistryError, TransportError, UnsupportedImage
from .layout import _find_plugin
from .transfer import DEFAULT_MAX_SIZE, Progress, PullResult
from .transfer_io import write_atomic


def unbox(body: bytes, max_size: int) -> bytes:
    """The module inside ``body``: as is, or out of gzip and/or tar (plugin.wasm)."""
    data = body
    if data[:2] == b"\x1f\x8b":
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
            data = gz.read(max_size + 1)
        if len(data) > max_size:
            raise UnsupportedImage(f"the gzip body expands past the {max_size}-byte limit")
    if len(data) > 262 and data[257:262] == b"ustar":
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                data = _find_plugin(tar, max_size)
        except tarfile.TarError as exc:
            raise UnsupportedImage(f"the tar body cannot be read: {exc}") from None
    if not data.startswith(WASM_MAGIC):
        raise UnsupportedImage("the downloaded body is not a Wasm module (nor gzip/tar holding "
                               "plugin.wasm)")
    return data


def pull_http(url: str, output: str | os.PathLike[str], *, sha256: str | None,
              ca_file: str | None = None, max_size: int = DEFAULT_MAX_SIZE,
              progress: Progress | None = None) -> PullResult:
    """Download ``url``; ``sha256`` is of the body (Envoy Gateway's ``http.sha256``)."""
    from .reference import Reference

    verify: Any = ssl.create_default_context(cafile=ca_file) if ca_file else True
    hasher = hashlib.sha256()
    chunks: list[bytes] = []
    size = 0
    try:
        with httpx.Client(verify=verify, follow_redirects=True, timeout=60) as client, \
                client.stream("GET", url) as response:
            if response.status_code == 404:
                raise NotFound(f"{url}: 404 not found")
            if response.status_code >= 400:
                raise RegistryError(f"{url}: HTTP {response.status_code}")
            for chunk in response.iter_bytes(1024 * 1024):
                size += len(chunk)
                if size > max_size:
                    raise RegistryError(f"{url}: body larger than the {max_size}-byte limit")
                hasher.update(chunk)
                chunks.append(chunk)
                if progress:
                    progress(len(chunk))
    except httpx.HTTPError as exc:
        raise TransportError(f"{url}: {exc}") from None
    actual = hasher.hexdigest()
    if sha256 and actual != normalise_sha256(sha256):
        raise DigestMismatch(f"{url}: body sha256 is {actual}, expected "
                             f"{normalise_sha256(sha256)}; nothing was written")
    module = unbox(b"".join(chunks), max_size)
    path = Path(output)
    write_atomic(path, module)
    return PullResult(Reference(url, "", None, None), f"sha256:{actual}", path,
                      hashlib.sha256(module).hexdigest(), len(module))
