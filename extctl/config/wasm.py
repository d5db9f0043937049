"""``WasmModule``: one proxy-wasm module, described once for both generators.

A module may name several places it can be found: a local ``file`` (what a standalone Envoy
loads, or what ``extctl dev`` fetched), and one remote source Envoy Gateway fetches, an OCI
``image`` (``sha256``: the manifest digest ``extctl push`` prints) or an HTTP ``url``
(``sha256``: of the downloaded body, which a standalone Envoy can fetch too).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

_SHA256 = re.compile(r"^[a-f0-9]{64}$")
PULL_POLICIES = ("IfNotPresent", "Always")


@dataclass(frozen=True)
class WasmModule:
    name: str
    file: str | None = None
    """A local .wasm file."""
    image: str | None = None
    """An OCI image reference (``oci://`` optional)."""
    url: str | None = None
    """An http(s) URL."""
    sha256: str | None = None
    """The image's manifest digest, or the URL body's sha256 (64 hex digits)."""
    config: Any = None
    """The plugin configuration, a JSON value: Envoy Gateway hands the module its JSON text (a
    string arrives quoted), and so does the standalone config. None: no configuration."""
    text: str | None = None
    """Instead of ``config``: configuration text handed to the module as is. Only a
    standalone Envoy can do that; Envoy Gateway hands modules JSON values."""
    root_id: str = ""
    vm_configuration: str = ""
    """The VM's configuration (what ``proxy_on_vm_start`` reads), as text. Only a standalone
    Envoy: Envoy Gateway's Wasm has no field for it."""
    fail_open: bool = False
    """Requests go on without the module when it fails to load (else they are refused)."""
    pull_secret: str | None = None
    """Envoy Gateway: the Secret holding the image's registry credentials."""
    pull_policy: str | None = None
    """Envoy Gateway: IfNotPresent or Always."""

    def __post_init__(self) -> None:
        if not self.name or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", self.name):
            raise ConfigError(f"Wasm module name {self.name!r}: use letters, digits, . _ -")
        if self.image is not None and self.url is not None:
            raise ConfigError(f"wasm {self.name}: give an image or a URL, not both (one "
                              "sha256 cannot describe both)")
        if self.file is None and self.image is None and self.url is None:
            raise ConfigError(f"wasm {self.name}: give a file, an image or a URL")
        if self.sha256 is not None:
            digest = self.sha256.removeprefix("sha256:")
            if not _SHA256.match(digest):
                raise ConfigError(f"wasm {self.name}: sha256 must be 64 lower-case hex digits")
            object.__setattr__(self, "sha256", digest)
        if self.url is not None and not self.url.startswith(("https://", "http://")):
            raise ConfigError(f"wasm {self.name}: {self.url!r} is not an http(s) URL")
        if self.pull_policy not in (None, *PULL_POLICIES):
            raise ConfigError(f"wasm {self.name}: the pull policy is IfNotPresent or Always")
        if self.pull_secret and self.image is None:
            raise ConfigError(f"wasm {self.name}: a pull secret applies to images only")
        if self.image is not None:
            from registry import InvalidReference, parse_reference

            image = self.image if self.image.startswith("oci://") else f"oci://{self.image}"
            try:
                parse_reference(image)
            except InvalidReference as exc:
                raise ConfigError(f"wasm {self.name}: {exc}") from None
        if self.text is not None and self.config is not None:
            raise ConfigError(f"wasm {self.name}: give config (a JSON value) or text, not both")
        try:
            json.dumps(self.config)
        except (TypeError, ValueError):
            raise ConfigError(f"wasm {self.name}: the configuration is not a JSON value") \
                from None

    @classmethod
    def parse(cls, spec: str, **fields: Any) -> WasmModule:
        """``NAME=SOURCE[@sha256:HEX]``: SOURCE is ``oci://REF``, an http(s) URL or a file."""
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise ConfigError(f"{spec!r} is not NAME=oci://REF|URL|FILE[@sha256:HEX]")
        base, found, digest = source.rpartition("@sha256:")
        if not found:
            base, digest = source, ""
        if source.startswith("oci://"):
            return cls(name, image=base, sha256=digest or None, **fields)
        if source.startswith(("http://", "https://")):
            return cls(name, url=base, sha256=digest or None, **fields)
        return cls(name, file=source, **fields)

    @property
    def configuration(self) -> str:
        """The configuration text the module receives (empty: none)."""
        if self.text is not None:
            return self.text
        if self.config is None:
            return ""
        return json.dumps(self.config, separators=(",", ":"))

    @property
    def pinned(self) -> bool:
        """A remote source whose content is fixed by its digest."""
        return self.sha256 is not None
