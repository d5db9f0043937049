"""HTTP under hostile input, for the registry client and the HTTP source.

- a total deadline per request on top of the per-read timeout: every socket operation gets
  ``min(its timeout, time left)``, so a server trickling a byte at a time cannot keep a
  request alive past the deadline;
- redirects are followed here, not by httpx: the caller decides which origin gets the
  ``Authorization`` header, loops are capped, and HTTPS never downgrades to HTTP;
- every body is read through :func:`iter_body`, which decodes ``Content-Encoding`` itself
  and counts the *decoded* bytes, so a small gzip body cannot inflate past its limit.
"""

from __future__ import annotations

import ssl
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpcore
import httpx

from .errors import LimitExceeded, TransportError
from .untrusted import escape

METADATA_LIMIT = 4 * 1024 * 1024
"""Manifests, indexes, token answers and error bodies (oras-go's limit)."""
MAX_REDIRECTS = 5
READ_TIMEOUT = 60.0
DEFAULT_TIMEOUT = 300.0
REDIRECTS = (301, 302, 303, 307, 308)


class Clock:
    """The deadline of the request in flight; None: only the per-read timeouts apply."""

    def __init__(self) -> None:
        self.deadline: float | None = None

    def start(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def bound(self, timeout: float | None, error: type[Exception]) -> float | None:
        if self.deadline is None:
            return timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise error("deadline reached")
        return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, clock: Clock) -> None:
        self._inner = inner
        self._clock = clock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._clock.bound(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._clock.bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname,
                                      self._clock.bound(timeout, httpcore.ConnectTimeout))
        return _Stream(inner, self._clock)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, clock: Clock) -> None:
        self._inner = httpcore.SyncBackend()
        self._clock = clock

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port,
                                         self._clock.bound(timeout, httpcore.ConnectTimeout),
                                         local_address, socket_options)
        return _Stream(stream, self._clock)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("Unix sockets are not used here")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def make_client(clock: Clock, *, ca_file: str | None = None,
                read_timeout: float = READ_TIMEOUT) -> httpx.Client:
    """An httpx client whose sockets honour ``clock``'s deadline and follow no redirect."""
    context = ssl.create_default_context(cafile=ca_file) if ca_file else \
        httpx.create_ssl_context()
    transport = httpx.HTTPTransport(verify=context)
    # httpx takes no network backend; the pool it built is replaced by one that has ours.
    transport._pool = httpcore.ConnectionPool(ssl_context=context,
                                              network_backend=_Backend(clock))
    return httpx.Client(transport=transport, timeout=httpx.Timeout(read_timeout),
                        follow_redirects=False, trust_env=False,
                        headers={"Accept-Encoding": "gzip"})


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """scheme, host and port: what credentials are bound to."""
    return url.scheme, url.host, url.port


def redirect_target(response: httpx.Response, *, allow_http: Callable[[httpx.URL], bool]
                    ) -> httpx.URL:
    """Where a 3xx response points, checked: http(s) only, no userinfo, no HTTPS->HTTP."""
    location = response.headers.get("location")
    if not location:
        raise TransportError(f"{response.request.url} answered {response.status_code} "
                             "without a Location", url=str(response.request.url),
                             status=response.status_code)
    try:
        target = response.request.url.join(location)
    except (httpx.InvalidURL, ValueError):
        raise TransportError(f"{response.request.url} redirects to an invalid URL "
                             f"{escape(location)!r}", url=str(response.request.url),
                             status=response.status_code) from None
    source = response.request.url
    if target.scheme not in ("http", "https") or target.userinfo:
        raise TransportError(f"{source} redirects to {escape(str(target))!r}: refused",
                             url=str(source), status=response.status_code)
    if target.scheme == "http" and (source.scheme == "https" or not allow_http(target)):
        raise TransportError(f"{source} redirects to plain HTTP ({escape(str(target))}): "
                             "refused", url=str(source), status=response.status_code)
    return target


def iter_body(response: httpx.Response, limit: int, what: str) -> Iterator[bytes]:
    """The decoded body in chunks, LimitExceeded past ``limit`` decoded bytes."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    decoder: Any = None
    if encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    elif encoding not in ("", "identity"):
        raise TransportError(f"{what}: unsupported Content-Encoding {escape(encoding)!r}",
                             url=str(response.request.url), status=response.status_code)
    total = 0

    def count(data: bytes) -> bytes:
        nonlocal total
        total += len(data)
        if total > limit:
            raise LimitExceeded(f"{what}: larger than the {limit}-byte limit",
                                url=str(response.request.url), status=response.status_code)
        return data

    try:
        for raw in response.iter_raw():
            if decoder is None:
                yield count(raw)
                continue
            while raw:
                yield count(decoder.decompress(raw, 1 << 16))
                raw = decoder.unconsumed_tail
        if decoder is not None:
            yield count(decoder.flush())
    except zlib.error as exc:
        raise TransportError(f"{what}: the {encoding} body cannot be decoded ({exc})",
                             url=str(response.request.url),
                             status=response.status_code) from None


def read_body(response: httpx.Response, limit: int, what: str) -> bytes:
    return b"".join(iter_body(response, limit, what))
