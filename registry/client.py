"""A small OCI distribution client over httpx: auth (basic, bearer), retries, streaming digests.

Credentials go only to the registry's own origin (scheme, host, port): an upload ``Location``
or a blob redirect to another origin is followed without them, as containerd does. A bearer
token is sent only to the registry whose challenge asked for it; the token service (realm)
must be HTTPS unless the registry itself is a loopback one reached with ``insecure``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable

import httpx

from .auth import Credentials
from .errors import (
    AuthError,
    DigestMismatch,
    InvalidReference,
    LimitExceeded,
    NotFound,
    RegistryError,
    TransportError,
)
from .layout import ACCEPT
from .reference import is_digest, is_loopback, split_host
from .transport import (
    DEFAULT_TIMEOUT,
    MAX_REDIRECTS,
    METADATA_LIMIT,
    READ_TIMEOUT,
    REDIRECTS,
    Clock,
    iter_body,
    make_client,
    origin,
    read_body,
    redirect_target,
)
from .untrusted import escape

CHUNK = 8 * 1024 * 1024
RETRIES = 4


class RegistryClient:
    """One registry host. ``insecure``: plain HTTP, for a registry on loopback only.

    ``timeout`` is the total deadline of each request (connect, headers and body); every
    read also has its own ``read_timeout``.
    """

    def __init__(self, registry: str, credentials: Credentials | None = None, *,
                 ca_file: str | None = None, insecure: bool = False,
                 timeout: float = DEFAULT_TIMEOUT, read_timeout: float = READ_TIMEOUT) -> None:
        split_host(registry)
        if insecure and not is_loopback(registry):
            raise InvalidReference(f"{registry}: plain HTTP (insecure) is only for a registry "
                                   "on loopback (localhost, 127.0.0.0/8, [::1])")
        self.registry = registry
        self.credentials = credentials
        self.insecure = insecure
        self.timeout = timeout
        self.base = f"{'http' if insecure else 'https'}://{registry}"
        self.origin = origin(httpx.URL(self.base))
        self.clock = Clock()
        self.http = make_client(self.clock, ca_file=ca_file,
                                read_timeout=min(read_timeout, timeout))
        self._authorization: str | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transport ----------------------------------------------------------------------------

    def request(self, method: str, url: str, *, scope: str, headers: dict[str, str] | None = None,
                content: bytes | None = None) -> httpx.Response:
        """Send with retries (connect errors, 5xx) and auth; the response is left streaming.

        Redirects are followed here: ``Authorization`` only on the registry's own origin.
        """
        if url.startswith("/"):
            url = self.base + url
        for attempt in range(RETRIES + 1):
            self.clock.start(self.timeout)
            try:
                response = self._send(method, url, headers or {}, content)
            except httpx.ConnectError as exc:
                if "CERTIFICATE" in str(exc).upper() or "SSL" in str(exc).upper():
                    raise TransportError("", url=url).parameterized(
                        "TLS verification of {registry} failed ({why}); pass {ca_file} with "
                        "the registry's CA, or {insecure} for plain HTTP on loopback",
                        registry=self.registry, why=exc) from None
                if attempt == RETRIES:
                    raise TransportError(f"cannot connect to {self.registry}: {exc}",
                                         url=url) from None
                time.sleep(0.2 * 2 ** attempt)
                continue
            except httpx.TransportError as exc:
                if attempt == RETRIES or self.clock.expired():
                    raise self.transport_error(method, url, exc) from None
                time.sleep(0.2 * 2 ** attempt)
                continue
            if response.status_code == 401 and attempt == 0:
                challenge = response.headers.get("www-authenticate", "")
                answered_by = origin(response.request.url)
                response.close()
                if answered_by != self.origin:
                    raise AuthError(f"{response.request.url.host} (not {self.registry}) asks "
                                    f"for credentials; they are sent only to {self.registry}",
                                    url=str(response.request.url), status=401)
                self._authenticate(challenge, scope)
                continue
            if response.status_code >= 500 and attempt < RETRIES:
                response.close()
                time.sleep(0.2 * 2 ** attempt)
                continue
            return response
        raise TransportError(f"{method} {url}: giving up after {RETRIES} retries", url=url)

    def transport_error(self, method: str, url: str, exc: Exception) -> TransportError:
        if self.clock.expired() or isinstance(exc, httpx.TimeoutException):
            return TransportError("", url=url).parameterized(
                "{method} {url}: no complete answer within the {timeout_s:g}-second deadline "
                "({timeout}) or a read timeout", method=method, url=url, timeout_s=self.timeout)
        return TransportError(f"{method} {url}: {exc}", url=url)

    def _send(self, method: str, url: str, headers: dict[str, str],
              content: bytes | None) -> httpx.Response:
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if self._authorization and origin(target) == self.origin:
                sent["Authorization"] = self._authorization
            request = self.http.build_request(method, target, headers=sent, content=content)
            response = self.http.send(request, stream=True)
            if response.status_code not in REDIRECTS:
                return response
            response.close()
            target = redirect_target(response, allow_http=lambda u: self.insecure and
                                     is_loopback(u.netloc.decode("ascii")))
            if response.status_code == 303 or (response.status_code in (301, 302)
                                               and method not in ("GET", "HEAD")):
                method, content = "GET", None
        raise TransportError(f"{method} {url}: more than {MAX_REDIRECTS} redirects",
                             url=url)

    def _refused(self, prefix: str, url: str, status: int) -> AuthError:
        """An AuthError: ``prefix``, then the credentials tried (or how to give some)."""
        error = AuthError("", url=url, status=status)
        if self.credentials is None:
            return error.parameterized("{prefix}no credentials were found (pass {credentials}, "
                                       "a docker config.json or {secret_file})", prefix=prefix)
        return error.parameterized("{prefix}tried user {user!r} from {source}", prefix=prefix,
                                   user=self.credentials.username,
                                   source=self.credentials.source)

    def _authenticate(self, challenge: str, scope: str) -> None:
        scheme, _, params = challenge.partition(" ")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        if scheme.lower() == "basic":
            if self.credentials is None:
                raise self._refused(f"{self.registry} requires authentication: ", self.base,
                                    401)
            self._authorization = "Basic " + _basic(self.credentials)
            return
        if scheme.lower() != "bearer" or "realm" not in fields:
            raise AuthError(f"{self.registry} asks for unsupported auth "
                            f"{escape(challenge)!r}", url=self.base, status=401)
        realm = self._realm(fields["realm"])
        query = {"service": fields.get("service", ""), "scope": fields.get("scope", scope)}
        headers = {"Accept": "application/json"}
        if self.credentials:
            headers["Authorization"] = "Basic " + _basic(self.credentials)
        where = f"token service {escape(str(realm))}"
        try:
            with self.http.stream("GET", realm, params=query, headers=headers) as token:
                if token.status_code in (401, 403):
                    raise self._refused(f"{self.registry} {where} refused: ", str(realm),
                                        token.status_code)
                if token.status_code != 200:
                    raise AuthError(f"{self.registry} {where} answered {token.status_code}",
                                    url=str(realm), status=token.status_code)
                body = read_body(token, METADATA_LIMIT, where)
        except httpx.HTTPError as exc:
            raise TransportError(f"{where}: {exc}", url=str(realm)) from None
        except LimitExceeded as exc:
            raise AuthError(str(exc), url=str(realm)) from None
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        value = (answer.get("token") or answer.get("access_token")) \
            if isinstance(answer, dict) else None
        if not isinstance(value, str) or not value or not value.isprintable():
            raise AuthError(f"{self.registry} {where} returned no token", url=str(realm),
                            status=200)
        self._authorization = f"Bearer {value}"

    def _realm(self, text: str) -> httpx.URL:
        try:
            realm = httpx.URL(text)
        except (httpx.InvalidURL, ValueError):
            raise AuthError(f"{self.registry}: invalid token realm {escape(text)!r}",
                            url=self.base) from None
        if realm.userinfo or realm.scheme not in ("http", "https") or not realm.host:
            raise AuthError(f"{self.registry}: invalid token realm {escape(text)!r}",
                            url=self.base)
        if realm.scheme == "http" and not (self.insecure and
                                           is_loopback(realm.netloc.decode("ascii"))):
            raise AuthError("", url=self.base).parameterized(
                "{registry} sends credentials to a plain-HTTP token realm ({realm}); refused: "
                "a realm must be HTTPS unless the registry is a loopback one reached with "
                "{insecure}", registry=self.registry, realm=escape(text))
        return realm

    def check(self, response: httpx.Response, what: str) -> None:
        code = response.status_code
        if code < 400:
            return
        url = str(response.request.url)
        try:
            text = read_body(response, METADATA_LIMIT, what).decode("utf-8", "replace")
        except (RegistryError, httpx.HTTPError, httpx.StreamError):
            text = ""
        finally:
            response.close()
        if code in (401, 403):
            raise self._refused(f"{what}: {self.registry} answered {code}; ", url, code)
        if code == 404:
            raise NotFound(f"{what}: not found on {self.registry} (check the repository and "
                           "tag)", url=url, status=code)
        if code >= 500:
            raise TransportError(f"{what}: {self.registry} answered {code}: "
                                 f"{escape(text)}", url=url, status=code)
        raise RegistryError(f"{what}: {self.registry} answered {code}: {escape(text)}",
                            url=url, status=code)

    def _read(self, response: httpx.Response, limit: int, what: str) -> bytes:
        url = str(response.request.url)
        try:
            return read_body(response, limit, what)
        except httpx.HTTPError as exc:
            raise self.transport_error("GET", url, exc) from None
        finally:
            response.close()

    # -- API ------------------------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest; the digest is verified for digest refs."""
        scope = f"repository:{repository}:pull"
        what = f"manifest {repository}:{reference}"
        for attempt in range(RETRIES + 1):
            response = self.request("GET", f"/v2/{repository}/manifests/{reference}",
                                    scope=scope, headers={"Accept": ACCEPT})
            self.check(response, what)
            try:
                data = self._read(response, METADATA_LIMIT, what)
                break
            except TransportError:
                if attempt == RETRIES or self.clock.expired():
                    raise
                time.sleep(0.2 * 2 ** attempt)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatch(f"manifest {repository}@{reference}: content has digest "
                                 f"{digest}", url=str(response.request.url),
                                 expected=reference, actual=digest)
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return data, media_type, digest

    def fetch_blob(self, repository: str, digest: str, max_size: int,
                   progress: Callable[[int], None] | None = None, *,
                   size: int | None = None) -> bytes:
        """A blob's bytes, its sha256 checked while streaming; DigestMismatch otherwise.

        ``size``, the size the descriptor declares: more is refused as soon as it arrives,
        less is a short read, retried like a 5xx.
        """
        if not is_digest(digest):
            raise DigestMismatch(f"blob {escape(digest)!r}: not a sha256 digest")
        if size is not None and size > max_size:
            raise LimitExceeded.naming("blob {digest} declares {size} bytes, over the "
                                       "{limit}-byte limit ({max_size})", digest=digest,
                                       size=size, limit=max_size)
        limit = max_size if size is None else size
        for attempt in range(RETRIES + 1):
            try:
                return self._fetch_blob_once(repository, digest, limit, size, progress)
            except TransportError:
                if attempt == RETRIES or self.clock.expired():
                    raise
                time.sleep(0.2 * 2 ** attempt)
        raise AssertionError("unreachable")

    def _fetch_blob_once(self, repository: str, digest: str, limit: int, size: int | None,
                         progress: Callable[[int], None] | None) -> bytes:
        scope = f"repository:{repository}:pull"
        response = self.request("GET", f"/v2/{repository}/blobs/{digest}", scope=scope)
        url = str(response.request.url)
        self.check(response, f"blob {digest}")
        hasher = hashlib.sha256()
        chunks = []
        received = 0
        try:
            for chunk in iter_body(response, limit, f"blob {digest}"):
                received += len(chunk)
                hasher.update(chunk)
                chunks.append(chunk)
                if progress:
                    progress(len(chunk))
        except LimitExceeded:
            if size is not None:
                raise DigestMismatch(f"blob {digest} from {self.registry} is larger than the "
                                     f"{size} bytes its descriptor declares", url=url) from None
            raise LimitExceeded("", url=url).parameterized(
                "blob {digest} is larger than the {limit}-byte limit ({max_size})",
                digest=digest, limit=limit) from None
        except httpx.HTTPError as exc:
            raise self.transport_error("GET", url, exc) from None
        finally:
            response.close()
        if size is not None and received < size:
            raise TransportError(f"blob {digest}: the answer ended after {received} of "
                                 f"{size} bytes", url=url)
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise DigestMismatch(f"blob {digest} from {self.registry} has digest {actual}: "
                                 "the registry's content is corrupt or tampered with", url=url,
                                 expected=digest, actual=actual)
        return b"".join(chunks)

    def blob_exists(self, repository: str, digest: str) -> bool:
        scope = f"repository:{repository}:pull,push"
        response = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", scope=scope)
        response.close()
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
        what = f"upload of {digest}"
        response = self.request("POST", f"/v2/{repository}/blobs/uploads/", scope=scope)
        self.check(response, what)
        location = self._location(response, what)
        offset = 0
        while offset < len(data):
            chunk = data[offset:offset + CHUNK]
            response = self.request(
                "PATCH", location, scope=scope, content=chunk,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
            self.check(response, what)
            location = self._location(response, what)
            offset += len(chunk)
            if progress:
                progress(len(chunk))
        separator = "&" if "?" in location else "?"
        response = self.request("PUT", f"{location}{separator}digest={digest}", scope=scope,
                                headers={"Content-Type": "application/octet-stream"})
        self.check(response, what)
        response.close()

    def _location(self, response: httpx.Response, what: str) -> str:
        response.close()
        location = response.headers.get("location")
        url = str(response.request.url)
        if not location:
            raise RegistryError(f"{what}: {self.registry} answered without a Location", url=url,
                                status=response.status_code)
        try:
            target = response.request.url.join(location)
        except (httpx.InvalidURL, ValueError):
            raise RegistryError(f"{what}: invalid upload Location {escape(location)!r}",
                                url=url) from None
        if target.scheme not in ("http", "https") or target.userinfo or (
                target.scheme == "http" and not (self.insecure and
                                                 is_loopback(target.netloc.decode("ascii")))):
            raise TransportError(f"{what}: upload Location {escape(str(target))!r} refused "
                                 "(plain HTTP or userinfo)", url=url)
        return str(target)

    def put_manifest(self, repository: str, reference: str, data: bytes,
                     media_type: str) -> str:
        scope = f"repository:{repository}:pull,push"
        response = self.request("PUT", f"/v2/{repository}/manifests/{reference}", scope=scope,
                                content=data, headers={"Content-Type": media_type})
        self.check(response, f"manifest {repository}:{reference}")
        response.close()
        return str(response.headers.get("docker-content-digest", ""))


def _basic(credentials: Credentials) -> str:
    return base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
