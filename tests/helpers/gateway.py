"""Envoy Gateway resources the config tests share (tests/extctl/config): a Deployment of a
processor for an HTTPRoute, its resources, and the API server's validity check."""

from __future__ import annotations

from extctl.config import Deployment, Target
from tests.helpers.crds import validate

__all__ = ["_config", "_valid", "resources"]


def resources(deployment: Deployment) -> list[dict]:
    return deployment.gateway_resources()


def _valid(document: dict) -> None:
    """Valid for the API server: schema, no pruned field, CEL rules (tests/crds.py)."""
    if document["kind"] == "ConfigMap":  # Kubernetes' own kind: no CRD to check against
        assert document["apiVersion"] == "v1" and isinstance(document["data"], dict)
        return
    validate(document)


def _config(processor, **kwargs) -> Deployment:
    return Deployment.build(processor, name="redact", namespace="apps",
                            targets=kwargs.pop("targets", [Target("HTTPRoute", "backend")]),
                            addresses=kwargs.pop("addresses", ["/var/run/extproc/extproc.sock"]),
                            **kwargs)

