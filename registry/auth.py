"""Where credentials come from: explicit, a docker config.json, or a dockerconfigjson Secret."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AuthError


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    source: str  # named in auth errors: "--username", "~/.docker/config.json", ...


def _from_auths(config: Any, registry: str, source: str) -> Credentials | None:
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return None
    for key in (registry, f"https://{registry}", f"http://{registry}",
                f"https://{registry}/v1/", f"https://{registry}/v2/"):
        entry = auths.get(key)
        if not entry or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                text = base64.b64decode(str(entry["auth"]), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise AuthError(f"{source}: the auth entry for {registry} is not valid "
                                "base64 of user:password") from None
            user, sep, password = text.partition(":")
            if not sep:
                raise AuthError(f"{source}: the auth entry for {registry} is not "
                                "user:password")
            return Credentials(user, password, source)
        if isinstance(entry.get("username"), str) and entry["username"]:
            return Credentials(entry["username"], str(entry.get("password", "")), source)
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
    if not isinstance(config, dict):
        raise AuthError(f"docker config {path} is not a JSON object")
    helpers = config.get("credHelpers")
    helper = (helpers.get(registry) if isinstance(helpers, dict) else None) or \
        config.get("credsStore")
    if helper and isinstance(helper, str):
        found = from_helper(registry, helper)
        if found is not None:
            return found
    return _from_auths(config, registry, os.fspath(path))


def from_helper(registry: str, helper: str) -> Credentials | None:
    """Ask ``docker-credential-<helper>`` (the docker credential-helper protocol)."""
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        return None  # configured but not installed here: fall back to ``auths``
    result = subprocess.run([program, "get"], input=registry, capture_output=True, text=True,
                            timeout=30)
    if result.returncode != 0:
        if "credentials not found" in (result.stdout + result.stderr).lower():
            return None
        raise AuthError(f"docker-credential-{helper} failed for {registry}: "
                        f"{(result.stderr or result.stdout).strip()[:200]}")
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        raise AuthError(f"docker-credential-{helper} answered something that is not JSON") \
            from None
    if not isinstance(answer, dict):
        raise AuthError(f"docker-credential-{helper} answered something that is not an object")
    return Credentials(str(answer.get("Username", "")), str(answer.get("Secret", "")),
                       f"docker-credential-{helper}")


def from_secret_file(registry: str, path: str | os.PathLike[str]) -> Credentials | None:
    """Credentials from a Kubernetes ``kubernetes.io/dockerconfigjson`` Secret (JSON or YAML)."""
    import yaml

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthError(f"cannot read {path}: {exc}") from None
    try:
        secret = json.loads(text)
    except ValueError:
        try:
            secret = yaml.safe_load(text)
        except yaml.YAMLError:
            secret = None
    if not isinstance(secret, dict) or secret.get("type") != "kubernetes.io/dockerconfigjson":
        raise AuthError(f"{path} is not a Secret of type kubernetes.io/dockerconfigjson")
    data: dict[str, Any] = secret["data"] if isinstance(secret.get("data"), dict) else {}
    string_data: dict[str, Any] = secret["stringData"] \
        if isinstance(secret.get("stringData"), dict) else {}
    try:
        if data.get(".dockerconfigjson") is not None:
            config = json.loads(base64.b64decode(str(data[".dockerconfigjson"]),
                                                 validate=True))
        else:
            config = json.loads(str(string_data.get(".dockerconfigjson", "{}")))
    except (ValueError, UnicodeDecodeError):
        raise AuthError(f"{path}: .dockerconfigjson is not base64 of a JSON docker "
                        "config") from None
    return _from_auths(config, registry, os.fspath(path))
