"""``Deployment``: one description of what runs where, rendered for Envoy and Envoy Gateway.

    deployment = Deployment(Redact, addresses=ServerConfig(uds=SOCKET, workers=2).addresses(),
                            policy=Policy(allow_cidrs=["10.0.0.0/8"]),
                            wasm=[WasmModule.parse("tag=oci://reg.example.com/f/tag:v1@sha256:…")],
                            upstreams=["127.0.0.1:8080"],
                            gateway=GatewayOptions(targets=[Target("HTTPRoute", "backend")]))
    deployment.write("envoy-configs")      # envoy.yaml and gateway.yaml, written atomically

The processor's half comes from the class (:class:`extproc.FilterSpec`); the policy, the Wasm
modules and the upstreams are given once and mean the same in both outputs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extproc import FilterSpec, Processor

from .envoy import bootstrap
from .envoy import to_yaml as envoy_yaml
from .files import write_file
from .gateway import resources
from .gateway_notes import PATCH_FILE, envoy_gateway_patch
from .gateway_notes import render as gateway_text
from .model import DeploymentData, EnvoyOptions, GatewayOptions
from .policy import Policy


@dataclass(frozen=True)
class Deployment(DeploymentData):
    """What runs where, rendered as a standalone Envoy config and as Envoy Gateway resources.

    Fields: ``processor``, ``addresses``, ``policy``, ``wasm``, ``upstreams``, ``envoy``
    (:class:`EnvoyOptions`), ``gateway`` (:class:`GatewayOptions`), ``header``.
    """

    @classmethod
    def build(cls, processor: type[Processor] | FilterSpec | None = None,
              **options: Any) -> Deployment:
        """A Deployment from flat keywords, each sorted to the dataclass that declares it:
        ``Deployment.build(Redact, addresses=[...], allow_cidrs=[...], access_log=True)``."""
        groups: dict[str, dict[str, Any]] = {"policy": {}, "envoy": {}, "gateway": {}}
        own: dict[str, Any] = {}
        fields = {name: "policy" for name in _FIELDS[Policy]}
        fields.update({name: "envoy" for name in _FIELDS[EnvoyOptions]})
        fields.update({name: "gateway" for name in _FIELDS[GatewayOptions]})
        for name, value in options.items():
            if name in _FIELDS[DeploymentData] and name not in groups:
                own[name] = value
            elif name in fields:
                groups[fields[name]][name] = value
            else:
                raise TypeError(f"Deployment.build() got an unexpected option {name!r}")
        if "policy" in own and groups["policy"]:
            raise TypeError("give a Policy or its fields, not both")
        return cls(processor, policy=own.pop("policy", None) or Policy(**groups["policy"]),
                   envoy=EnvoyOptions(**groups["envoy"]),
                   gateway=GatewayOptions(**groups["gateway"]), **own)

    def envoy_bootstrap(self) -> Any:
        """The standalone Envoy Bootstrap message (xds-protos)."""
        return bootstrap(self)

    def gateway_resources(self) -> list[dict[str, Any]]:
        """Envoy Gateway's documents: EnvoyExtensionPolicy, Backend and the policies asked for."""
        return resources(self)

    def render(self) -> dict[str, str]:
        """File name -> text: ``envoy.yaml`` always; when there are targets, ``gateway.yaml``
        (``kubectl apply -f`` it) and, with a processor, ``envoy-gateway-config.patch.yaml``
        (Envoy Gateway's configuration enabling Backends: merged, not applied; its comments
        say how)."""
        header = f"# {self.header}\n" if self.header else ""
        files = {"envoy.yaml": header + envoy_yaml(self.envoy_bootstrap())}
        if self.gateway.targets:
            files["gateway.yaml"] = header + gateway_text(self)
            patch = envoy_gateway_patch(self)
            if patch is not None:
                files[PATCH_FILE] = header + patch
        return files

    def write(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write :meth:`render`'s files into ``directory``, each atomically; their paths."""
        return [write_file(Path(directory) / name, text) for name, text in self.render().items()]


_FIELDS = {kind: frozenset(f.name for f in dataclasses.fields(kind))
           for kind in (DeploymentData, Policy, EnvoyOptions, GatewayOptions)}
