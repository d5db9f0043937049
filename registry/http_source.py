"""Modules over HTTP (EnvoyExtensionPolicy ``code.type: HTTP``): sha256 of the downloaded body,
then gzip and tar unboxed as Envoy Gateway does.

HTTPS only, except plain HTTP to loopback with ``insecure``; redirects are followed here and
never from HTTPS to HTTP; the body, its decompressed form and the tar entries are bounded.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zlib
from pathlib import Path

import httpx

from wasm.digest import WASM_MAGIC, normalise_sha256

from .errors import (
    DigestMismatch,
    InvalidReference,
    NotFound,
    RegistryError,
    TransportError,
    UnsupportedImage,
)
from .layout import ARCHIVE_OVERHEAD, _find_plugin, _Limited
from .reference import is_loopback, split_host
from .transfer import DEFAULT_MAX_SIZE, Progress, PullResult
from .transfer_io import sweep, write_output
from .transport import DEFAULT_TIMEOUT, MAX_REDIRECTS, REDIRECTS, Clock, iter_body, make_client
from .untrusted import escape, safe


def unbox(body: bytes, max_size: int) -> bytes:
    """The module inside ``body``: as is, or out of gzip and/or tar (plugin.wasm)."""
    data = body
    try:
        if data[:2] == b"\x1f\x8b":
            data = _Limited(gzip.GzipFile(fileobj=io.BytesIO(data)),
                            max_size + ARCHIVE_OVERHEAD, "the gzip body").read()
        if len(data) > 262 and data[257:262] == b"ustar":
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                data = _find_plugin(tar, max_size)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise UnsupportedImage(f"the body cannot be unpacked: {escape(str(exc))}") from None
    if len(data) > max_size:
        raise UnsupportedImage(f"the module is {len(data)} bytes, over the {max_size}-byte "
                               "limit")
    if not data.startswith(WASM_MAGIC):
        raise UnsupportedImage("the downloaded body is not a Wasm module (nor gzip/tar holding "
                               "plugin.wasm)")
    return data


def check_url(url: str, insecure: bool = False) -> httpx.URL:
    """``url`` parsed: https, or http to loopback with ``insecure``; no userinfo."""
    shown = safe(url)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise InvalidReference(f"{shown} is not a valid URL") from None
    if parsed.userinfo:
        raise InvalidReference(f"{shown}: a URL carries no user or password")
    netloc = parsed.netloc.decode("ascii")
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidReference.naming("{shown}: only https:// URLs (http:// to loopback with "
                                      "{insecure})", shown=shown)
    split_host(netloc)
    if parsed.scheme == "http" and not (insecure and is_loopback(netloc)):
        raise InvalidReference.naming("{shown}: plain http:// is refused; use https:// (plain "
                                      "HTTP only to loopback, with {insecure})", shown=shown)
    return parsed


def pull_http(url: str, output: str | os.PathLike[str], *, sha256: str | None,
              ca_file: str | None = None, max_size: int = DEFAULT_MAX_SIZE,
              progress: Progress | None = None, insecure: bool = False,
              timeout: float = DEFAULT_TIMEOUT) -> PullResult:
    """Download ``url``; ``sha256`` is of the body (Envoy Gateway's ``http.sha256``)."""
    from .reference import Reference

    target = check_url(url, insecure)
    path = Path(output)
    sweep(path.parent)
    clock = Clock()
    hasher = hashlib.sha256()
    chunks: list[bytes] = []
    shown = safe(url)
    try:
        with make_client(clock, ca_file=ca_file, read_timeout=min(60.0, timeout)) as client:
            clock.start(timeout)
            for _ in range(MAX_REDIRECTS + 1):
                response = client.send(client.build_request("GET", target), stream=True)
                if response.status_code not in REDIRECTS:
                    break
                response.close()
                location = response.headers.get("location", "")
                try:
                    target = check_url(str(response.request.url.join(location)), insecure)
                except (InvalidReference, httpx.InvalidURL, ValueError):
                    raise TransportError(f"{shown} redirects to {escape(location)!r}: refused "
                                         "(plain HTTP or an invalid URL)", url=url,
                                         status=response.status_code) from None
                if target.scheme == "http" and response.request.url.scheme == "https":
                    raise TransportError(f"{shown} redirects to plain HTTP: refused", url=url,
                                         status=response.status_code)
            else:
                raise TransportError(f"{shown}: more than {MAX_REDIRECTS} redirects", url=url)
            try:
                if response.status_code == 404:
                    raise NotFound(f"{shown}: 404 not found", url=url, status=404)
                if response.status_code >= 400:
                    raise RegistryError(f"{shown}: HTTP {response.status_code}", url=url,
                                        status=response.status_code)
                for chunk in iter_body(response, max_size, shown):
                    hasher.update(chunk)
                    chunks.append(chunk)
                    if progress:
                        progress(len(chunk))
            finally:
                response.close()
    except httpx.HTTPError as exc:
        if clock.expired() or isinstance(exc, httpx.TimeoutException):
            raise TransportError("", url=url).parameterized(
                "{shown}: the deadline ({timeout}) or a read timeout passed",
                shown=shown) from None
        raise TransportError(f"{shown}: {exc}", url=url) from None
    actual = hasher.hexdigest()
    if sha256 and actual != normalise_sha256(sha256):
        raise DigestMismatch(f"{shown}: body sha256 is {actual}, expected "
                             f"{normalise_sha256(sha256)}; nothing was written", url=url,
                             expected=normalise_sha256(sha256), actual=actual)
    module = unbox(b"".join(chunks), max_size)
    write_output(path, module)
    return PullResult(Reference(url, "", None, None), f"sha256:{actual}", path,
                      hashlib.sha256(module).hexdigest(), len(module))
