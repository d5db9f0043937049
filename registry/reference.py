"""Image references: ``oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]``, parsed strictly.

No userinfo (``user:pw@host`` would send the request to another host than the one it seems to
name), a valid host name or IP address and port. Plain HTTP is allowed only for loopback:
``localhost``, 127.0.0.0/8 and ``[::1]``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import InvalidReference
from .untrusted import safe

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port]
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"oci://{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)


def is_digest(value: object) -> bool:
    """``sha256:`` and 64 lower-case hex digits (the only algorithm this client accepts)."""
    return isinstance(value, str) and _DIGEST.match(value) is not None


def split_host(registry: str) -> tuple[str, int | None]:
    """``(host, port)`` of ``HOST[:PORT]``; InvalidReference unless both are valid."""
    shown = safe(registry)
    if "@" in registry:
        raise InvalidReference.naming("{shown}: a reference carries no user or password; "
                                      "pass {credentials} or a docker config.json",
                                      shown=shown)
    if registry.startswith("["):
        end = registry.find("]")
        host, rest = registry[1:end], registry[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidReference(f"{shown}: invalid IPv6 address") from None
    else:
        host, colon, port_text = registry.partition(":")
        rest = colon + port_text
        if not _HOSTNAME.match(host):
            raise InvalidReference(f"{shown}: invalid registry host name")
        if all(part.isdigit() for part in host.split(".")):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise InvalidReference(f"{shown}: invalid IPv4 address") from None
    port = None
    if rest:
        text = rest[1:] if rest.startswith(":") else ""
        if not text.isdigit() or not 0 < int(text) < 65536 or len(text) > 5:
            raise InvalidReference(f"{shown}: invalid port")
        port = int(text)
    return host, port


def is_loopback(registry: str) -> bool:
    """Whether ``HOST[:PORT]`` names this machine: ``localhost``, 127.0.0.0/8 or ``[::1]``."""
    try:
        host, _ = split_host(registry)
    except InvalidReference:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_reference(text: str) -> Reference:
    """Parse ``oci://host/repo:tag`` (the ``oci://`` prefix is optional)."""
    shown = safe(text)
    rest = text.removeprefix("oci://")
    if "://" in rest:
        raise InvalidReference(f"{shown}: only oci:// references name an image")
    registry, sep, path = rest.partition("/")
    if not sep or not registry or not path:
        raise InvalidReference(f"{shown} is not oci://HOST/REPOSITORY[:TAG][@sha256:DIGEST]")
    split_host(registry)
    digest = None
    if "@" in path:
        path, digest = path.split("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidReference(f"{shown}: digest must be sha256:<64 hex digits>")
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG.match(tag):
            raise InvalidReference(f"{shown}: invalid tag {safe(tag)!r}")
    if not _REPO.match(path):
        raise InvalidReference(f"{shown}: invalid repository name {safe(path)!r} (lower-case "
                               "letters, digits, separators . _ - and /)")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)
