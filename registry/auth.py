"""Where credentials come from: explicit, a docker config.json, or a dockerconfigjson Secret."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AuthError


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    source: str  # named in auth errors: "--username", "~/.docker/config.json", ...


def _from_auths(config: dict[str, Any], registry: str, source: str) -> Credentials | None:
    auths = config.get("auths") or {}
    for key in (registry, f"https://{registry}", f"http://{registry}",
                f"https://{registry}/v1/", f"https://{registry}/v2/"):
        entry = auths.get(key)
        if not entry:
            continue
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return Credentials(user, password, source)
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""), source)
    return None


def from_docker_config(registry: str, path: str | os.PathLike[str] | None = None
                       ) -> Credentials | None:
    """Credentials for ``registry`` in a docker config.json (``$DOCKER_CONFIG`` or ~/.docker)."""
    if path is None:
        base = os.environ.get("DOCKER_CONFIG") or os.path.join(Path.home(), ".docker")
        path = os.path.join(base, "config.json")
    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read docker config {path}: {exc}") from None
    return _from_auths(config, registry, os.fspath(path))


def from_secret_file(registry: str, path: str | os.PathLike[str]) -> Credentials | None:
    """Credentials from a Kubernetes ``kubernetes.io/dockerconfigjson`` Secret (JSON or YAML)."""
    text = Path(path).read_text()
    try:
        secret = json.loads(text)
    except ValueError:
        import yaml

        secret = yaml.safe_load(text)
    if not isinstance(secret, dict) or secret.get("type") != "kubernetes.io/dockerconfigjson":
        raise AuthError(f"{path} is not a Secret of type kubernetes.io/dockerconfigjson")
    data = (secret.get("data") or {}).get(".dockerconfigjson")
    if data is not None:
        config = json.loads(base64.b64decode(data))
    else:
        config = json.loads((secret.get("stringData") or {}).get(".dockerconfigjson", "{}"))
    return _from_auths(config, registry, os.fspath(path))
