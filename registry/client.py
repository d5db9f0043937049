"""A small OCI distribution client over httpx: auth (basic, bearer), retries, streaming digests."""

from __future__ import annotations

import hashlib
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx

from .auth import Credentials
from .errors import AuthError, DigestMismatch, NotFound, RegistryError, TransportError
from .layout import ACCEPT

CHUNK = 8 * 1024 * 1024
RETRIES = 4


class RegistryClient:
    """One registry host. ``insecure``: plain HTTP (loopback and development only)."""

    def __init__(self, registry: str, credentials: Credentials | None = None, *,
                 ca_file: str | None = None, insecure: bool = False,
                 timeout: float = 60.0) -> None:
        self.registry = registry
        self.credentials = credentials
        scheme = "http" if insecure else "https"
        self.base = f"{scheme}://{registry}"
        verify: Any = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.http = httpx.Client(verify=verify, timeout=timeout, follow_redirects=True)
        self._authorization: str | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transport ----------------------------------------------------------------------------

    def request(self, method: str, url: str, *, scope: str, stream: bool = False,
                **kwargs: Any) -> httpx.Response:
        if url.startswith("/"):
            url = self.base + url
        headers = dict(kwargs.pop("headers", {}) or {})
        for attempt in range(RETRIES + 1):
            if self._authorization:
                headers["Authorization"] = self._authorization
            try:
                request = self.http.build_request(method, url, headers=headers, **kwargs)
                response = self.http.send(request, stream=stream)
            except httpx.ConnectError as exc:
                if "CERTIFICATE" in str(exc).upper() or "SSL" in str(exc).upper():
                    raise TransportError(
                        f"TLS verification of {self.registry} failed ({exc}); pass --ca-file "
                        "with the registry's CA, or --insecure for plain HTTP on loopback"
                    ) from None
                if attempt == RETRIES:
                    raise TransportError(f"cannot connect to {self.registry}: {exc}") from None
                time.sleep(0.2 * 2 ** attempt)
                continue
            except httpx.TransportError as exc:
                if attempt == RETRIES:
                    raise TransportError(f"{method} {url}: {exc}") from None
                time.sleep(0.2 * 2 ** attempt)
                continue
            if response.status_code == 401 and attempt == 0:
                challenge = response.headers.get("www-authenticate", "")
                response.close()
                self._authenticate(challenge, scope)
                continue
            if response.status_code >= 500 and attempt < RETRIES:
                response.close()
                time.sleep(0.2 * 2 ** attempt)
                continue
            return response
        raise TransportError(f"{method} {url}: giving up after {RETRIES} retries")

    def _tried(self) -> str:
        if self.credentials is None:
            return "no credentials were found (pass --username/--password-stdin, a docker " \
                   "config.json or --secret-file)"
        return f"tried user {self.credentials.username!r} from {self.credentials.source}"

    def _authenticate(self, challenge: str, scope: str) -> None:
        scheme, _, params = challenge.partition(" ")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        if scheme.lower() == "basic":
            if self.credentials is None:
                raise AuthError(f"{self.registry} requires authentication: {self._tried()}")
            self._authorization = "Basic " + _basic(self.credentials)
            return
        if scheme.lower() != "bearer" or "realm" not in fields:
            raise AuthError(f"{self.registry} asks for unsupported auth {challenge!r}")
        query = {"service": fields.get("service", ""), "scope": fields.get("scope", scope)}
        auth = ((self.credentials.username, self.credentials.password)
                if self.credentials else None)
        try:
            token = self.http.get(fields["realm"], params=query, auth=auth)
        except httpx.HTTPError as exc:
            raise TransportError(f"token service {fields['realm']}: {exc}") from None
        if token.status_code in (401, 403):
            raise AuthError(f"{self.registry} token service refused: {self._tried()}")
        token.raise_for_status()
        body = token.json()
        value = body.get("token") or body.get("access_token")
        if not value:
            raise AuthError(f"{self.registry} token service returned no token")
        self._authorization = f"Bearer {value}"

    def check(self, response: httpx.Response, what: str) -> None:
        code = response.status_code
        if code < 400:
            return
        response.read()
        if code in (401, 403):
            raise AuthError(f"{what}: {self.registry} answered {code}; {self._tried()}")
        if code == 404:
            raise NotFound(f"{what}: not found on {self.registry} (check the repository and "
                           "tag)")
        raise RegistryError(f"{what}: {self.registry} answered {code}: "
                            f"{response.text[:200]}")

    # -- API ------------------------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest; the digest is verified for digest refs."""
        scope = f"repository:{repository}:pull"
        response = self.request("GET", f"/v2/{repository}/manifests/{reference}", scope=scope,
                                headers={"Accept": ACCEPT})
        self.check(response, f"manifest {repository}:{reference}")
        data = response.content
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatch(f"manifest {repository}@{reference}: content has digest "
                                 f"{digest}")
        media_type = response.headers.get("content-type", "").split(";")[0]
        return data, media_type, digest

    def fetch_blob(self, repository: str, digest: str, max_size: int,
                   progress: Callable[[int], None] | None = None) -> bytes:
        """A blob's bytes, its sha256 checked while streaming; DigestMismatch otherwise."""
        scope = f"repository:{repository}:pull"
        response = self.request("GET", f"/v2/{repository}/blobs/{digest}", scope=scope,
                                stream=True)
        try:
            self.check(response, f"blob {digest}")
            hasher = hashlib.sha256()
            chunks = []
            size = 0
            for chunk in response.iter_bytes(1024 * 1024):
                size += len(chunk)
                if size > max_size:
                    raise RegistryError(f"blob {digest} is larger than the {max_size}-byte "
                                        "limit (--max-size)")
                hasher.update(chunk)
                chunks.append(chunk)
                if progress:
                    progress(len(chunk))
        finally:
            response.close()
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise DigestMismatch(f"blob {digest} from {self.registry} has digest {actual}: "
                                 "the registry's content is corrupt or tampered with")
        return b"".join(chunks)

    def blob_exists(self, repository: str, digest: str) -> bool:
        scope = f"repository:{repository}:pull,push"
        response = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", scope=scope)
        if response.status_code == 404:
            return False
        self.check(response, f"blob {digest}")
        return True

    def upload_blob(self, repository: str, data: bytes, digest: str,
                    progress: Callable[[int], None] | None = None) -> None:
        """Chunked upload (POST, PATCH per 8 MiB, PUT with the digest); skipped when present."""
        if self.blob_exists(repository, digest):
            if progress:
                progress(len(data))
            return
        scope = f"repository:{repository}:pull,push"
        response = self.request("POST", f"/v2/{repository}/blobs/uploads/", scope=scope)
        self.check(response, f"upload of {digest}")
        location = _absolute(self.base, response.headers["location"])
        offset = 0
        while offset < len(data):
            chunk = data[offset:offset + CHUNK]
            response = self.request(
                "PATCH", location, scope=scope, content=chunk,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
            self.check(response, f"upload of {digest}")
            location = _absolute(self.base, response.headers["location"])
            offset += len(chunk)
            if progress:
                progress(len(chunk))
        separator = "&" if "?" in location else "?"
        response = self.request("PUT", f"{location}{separator}digest={digest}", scope=scope,
                                headers={"Content-Type": "application/octet-stream"})
        self.check(response, f"upload of {digest}")

    def put_manifest(self, repository: str, reference: str, data: bytes,
                     media_type: str) -> str:
        scope = f"repository:{repository}:pull,push"
        response = self.request("PUT", f"/v2/{repository}/manifests/{reference}", scope=scope,
                                content=data, headers={"Content-Type": media_type})
        self.check(response, f"manifest {repository}:{reference}")
        return str(response.headers.get("docker-content-digest", ""))


def _basic(credentials: Credentials) -> str:
    import base64

    return base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()


def _absolute(base: str, location: str) -> str:
    return location if location.startswith("http") else base + location
