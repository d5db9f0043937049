"""Reading Envoy's admin endpoint as untrusted input: a deadline for each whole answer, a size
limit, JSON parsed only after both held.

    admin = Admin("http://127.0.0.1:19000")        # e.g. through kubectl port-forward
    dump = admin.json("/config_dump?include_eds")
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ..errors import AdminError

MAX_BYTES = 64 * 1024 * 1024
"""Largest answer read (a big gateway's config dump is some MiB)."""


class Admin:
    """One Envoy admin endpoint: ``http://HOST:PORT`` (a bare ``HOST:PORT`` means http)."""

    def __init__(self, url: str, timeout: float = 10.0, max_bytes: int = MAX_BYTES) -> None:
        if "://" not in url:
            url = "http://" + url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AdminError(f"admin address {url!r}: give http://HOST:PORT")
        if parts.query or parts.fragment or parts.path not in ("", "/"):
            raise AdminError(f"admin address {url!r}: give only http://HOST:PORT")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.timeout = timeout
        self.max_bytes = max_bytes

    def get(self, path: str) -> bytes:
        """The body of ``GET path``, read whole within the deadline and the size limit."""
        deadline = time.monotonic() + self.timeout
        try:
            with urllib.request.urlopen(self.url + path, timeout=self.timeout) as response:
                chunks: list[bytes] = []
                size = 0
                while True:
                    if time.monotonic() > deadline:
                        raise AdminError(f"{self.url}{path}: no complete answer within "
                                         f"{self.timeout:g}s")
                    chunk = response.read(64 * 1024)
                    if not chunk:
                        return b"".join(chunks)
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise AdminError(f"{self.url}{path}: answer larger than "
                                         f"{self.max_bytes} bytes")
                    chunks.append(chunk)
        except urllib.error.HTTPError as exc:
            raise AdminError(f"{self.url}{path}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot read Envoy's admin at {self.url}: {reason}") from None

    def json(self, path: str) -> Any:
        body = self.get(path)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise AdminError(f"{self.url}{path}: not JSON ({exc})") from None

    def text(self, path: str) -> str:
        return self.get(path).decode("utf-8", errors="replace")
