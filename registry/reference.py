"""Image references: ``oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidReference

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


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


def parse_reference(text: str) -> Reference:
    """Parse ``oci://host/repo:tag`` (the ``oci://`` prefix is optional)."""
    rest = text.removeprefix("oci://")
    if "://" in rest:
        raise InvalidReference(f"{text!r}: only oci:// references name an image")
    registry, sep, path = rest.partition("/")
    if not sep or not registry or not path:
        raise InvalidReference(f"{text!r} is not oci://HOST/REPOSITORY[:TAG][@sha256:DIGEST]")
    digest = None
    if "@" in path:
        path, digest = path.split("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidReference(f"{text!r}: digest must be sha256:<64 hex digits>")
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG.match(tag):
            raise InvalidReference(f"{text!r}: invalid tag {tag!r}")
    if not _REPO.match(path):
        raise InvalidReference(f"{text!r}: invalid repository name {path!r} (lower-case "
                               "letters, digits, separators . _ - and /)")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)
