"""Check documents the way the API server would with Envoy Gateway v1.9's CRDs: the OpenAPI
schema (jsonschema), no field the schema does not know (the API server prunes them silently),
and every CEL rule (``x-kubernetes-validations``) on the fields a document has (cel-python)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

CRDS = Path(os.environ.get("EXTCTL_EG_CRDS",
                           Path(__file__).resolve().parents[3] / "shared" / "eg-crds"))


def _load() -> dict[str, dict[str, Any]]:
    if not CRDS.is_dir():
        raise RuntimeError(f"Envoy Gateway CRDs not found at {CRDS} (set EXTCTL_EG_CRDS)")
    found = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            for version in crd["spec"]["versions"]:
                key = f"{crd['spec']['group']}/{version['name']}/{crd['spec']['names']['kind']}"
                found[key] = version["schema"]["openAPIV3Schema"]
    return found


SCHEMAS = _load()
_ENV = celpy.Environment()


def schema(document: dict[str, Any]) -> dict[str, Any]:
    return SCHEMAS[f"{document['apiVersion']}/{document['kind']}"]


def defaulted(value: Any, node: dict[str, Any]) -> Any:
    """``value`` with the schema's defaults filled in, as the API server does before CEL."""
    if isinstance(value, dict):
        properties = node.get("properties", {})
        filled = {key: defaulted(item, properties[key]) if key in properties else item
                  for key, item in value.items()}
        for key, field in properties.items():
            if key not in filled and "default" in field:
                filled[key] = field["default"]
        return filled
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [defaulted(item, node["items"]) for item in value]
    return value


def cel_errors(value: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """Rules that fail, and fields the schema does not declare, under ``path`` (``value``
    defaulted first)."""
    if not path:
        value = defaulted(value, node)
    errors = []
    for rule in node.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue  # a transition rule: there is no old object at creation
        program = _ENV.program(_ENV.compile(rule["rule"]))
        try:
            result = program.evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as exc:
            result = exc
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(f"{path or '/'}: {rule.get('message', rule['rule'])} ({result!r})")
    if isinstance(value, dict) and not node.get("x-kubernetes-preserve-unknown-fields"):
        properties = node.get("properties")
        extra = node.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                errors += cel_errors(item, properties[key], f"{path}/{key}")
            elif isinstance(extra, dict):
                errors += cel_errors(item, extra, f"{path}/{key}")
            elif properties is not None or extra is False:
                errors.append(f"{path}/{key}: not a field of the schema (it would be pruned)")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            errors += cel_errors(item, node["items"], f"{path}/{index}")
    return errors


def validate(document: dict[str, Any]) -> None:
    """Raise when the API server would refuse or prune any part of ``document``."""
    found = schema(document)
    jsonschema.validate(document, found)
    errors = cel_errors(document, found)
    assert not errors, errors
