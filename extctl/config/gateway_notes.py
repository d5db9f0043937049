"""What Envoy Gateway's documents cannot do themselves, said in comments where a reader looks:
at the top of the file, on the document concerned (a Backend whose sockets something must
serve, an EnvoyProxy to attach, the sidecar's command), and Envoy Gateway's own configuration
as a patch file to merge, never a ConfigMap that ``kubectl apply`` would put over the one a
Helm (or any) install wrote.

Comments name the caller's parameters (``client_gateway``, ``sidecar``): the library spells
them as its Python API, ``extctl gen gateway`` as its flags.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from extproc.errors import spell_parameters

from .gateway import client_gateway, processor_path, resources, to_yaml
from .model import DeploymentData as Deployment
from .net import is_socket_path
from .sidecar import EG_NAMESPACE

Spell = Callable[[str], "str | None"]

PATCH_FILE = "envoy-gateway-config.patch.yaml"
"""The patch of Envoy Gateway's configuration, written beside the resources."""

# How the library's callers give what a comment names.
_PYTHON = {"client_gateway": "GatewayOptions(client_gateway=...)",
           "sidecar": "GatewayOptions(sidecar=Sidecar(IMAGE))",
           "gateway_class": "Sidecar(gateway_class=...)"}


def _wrapped(*paragraphs: str, width: int = 96) -> list[str]:
    """Comment lines of at most ``width`` characters; a paragraph indented by two spaces (a
    command) is one line as it is."""
    import textwrap

    lines: list[str] = []
    for paragraph in paragraphs:
        if paragraph.startswith("  ") or not paragraph:
            lines.append(paragraph)
        else:
            lines += textwrap.wrap(paragraph, width, break_long_words=False,
                                   break_on_hyphens=False)
    return lines


def _eg_namespace(deployment: Deployment) -> str:
    sidecar = deployment.gateway.sidecar
    return sidecar.eg_namespace if sidecar is not None else EG_NAMESPACE


def _helm(namespace: str, how: str) -> list[str]:
    return ["  helm upgrade eg oci://docker.io/envoyproxy/gateway-helm --version <yours> \\",
            f"    -n {namespace} --reuse-values {how}"]


def _edit(namespace: str) -> list[str]:
    return [f"  kubectl edit configmap envoy-gateway-config -n {namespace}",
            "Then restart Envoy Gateway so that it reads it:",
            f"  kubectl rollout restart deployment envoy-gateway -n {namespace}"]


def envoy_gateway_patch(deployment: Deployment) -> str | None:
    """Envoy Gateway's own configuration as a Backend needs it (``extensionApis.enableBackend``):
    the Helm chart's values, with comments saying how to merge them with and without Helm;
    None when there is no Backend (no processor, or one run inside Envoy)."""
    if deployment.processor is None or deployment.dynamic_module is not None:
        return None
    namespace = _eg_namespace(deployment)
    lines = _wrapped(
        "Envoy Gateway's own configuration, to MERGE into it, not to kubectl apply: it must "
        "enable Backend resources (extensionApis.enableBackend) for the EnvoyExtensionPolicy to "
        f"reach the processor. The ConfigMap {namespace}/envoy-gateway-config holds its whole "
        "configuration; a ConfigMap applied over it would replace it (a Helm install would "
        "lose its settings).",
        "",
        "Installed with Helm: these are the chart's values (--reuse-values keeps yours):",
        *_helm(namespace, f"-f {PATCH_FILE}"),
        "Installed otherwise: add `extensionApis: {enableBackend: true}` to the "
        "envoy-gateway.yaml key of the ConfigMap, keeping what is there:",
        *_edit(namespace))
    body = "config:\n  envoyGateway:\n    extensionApis:\n      enableBackend: true\n"
    return "".join(f"# {line}".rstrip() + "\n" for line in lines) + body


def notes(deployment: Deployment, spell: Spell | None = None,
          patch_file: str | None = PATCH_FILE) -> list[str]:
    """Comment lines for the top of the file: what must happen outside it. ``patch_file``:
    where :func:`envoy_gateway_patch` is written (None: nowhere; the lines say how instead)."""
    paragraphs = []
    if (deployment.processor is not None and deployment.http1_trailers
            and client_gateway(deployment) is None):
        paragraphs.append(spell_parameters(
            "The processor takes trailers: HTTP/1.1 trailers reach it only with "
            "ClientTrafficPolicy http1.enableTrailers on the Gateway (Envoy drops them before "
            "any filter otherwise): name the Gateway ({client_gateway}) to have it written.",
            _spelling(spell)))
    module = deployment.dynamic_module
    if module is not None:
        paragraphs.append(
            f"The class runs inside Envoy (the dynamic module {module.name}): Envoy's image "
            f"must hold the module at {module.path}, built for that Envoy release, and the "
            "Python environment it was built with, with the class's code "
            f"({processor_path(deployment)}) importable there.")
    if deployment.processor is None or module is not None:
        return _wrapped(*paragraphs)
    backends = ("Envoy Gateway serves the Backend below only once its own configuration "
                "enables Backends (extensionApis.enableBackend), merged into it: a ConfigMap "
                "envoy-gateway-config applied instead would replace its whole configuration.")
    namespace = _eg_namespace(deployment)
    if patch_file is not None:
        return _wrapped(*paragraphs, f"{backends} Merge {patch_file}, written beside this "
                                     "file; its comments give the commands.")
    return _wrapped(*paragraphs, f"{backends} With Helm:",
                    *_helm(namespace,
                           "--set config.envoyGateway.extensionApis.enableBackend=true"),
                    "Without Helm, add `extensionApis: {enableBackend: true}` to "
                    "envoy-gateway.yaml in:", *_edit(namespace))


def document_comments(deployment: Deployment, document: dict[str, Any],
                      spell: Spell | None = None) -> list[str]:
    """Comment lines for the top of ``document``: what it needs that it cannot say."""
    kind = document["kind"]
    sidecar = deployment.gateway.sidecar
    if kind == "Backend":
        sockets = [a for a in deployment.addresses if is_socket_path(a)]
        if not sockets:
            return []
        if sidecar is not None:
            return ["The processor's sidecar in the EnvoyProxy below serves these sockets, in "
                    "Envoy's pod."]
        return _wrapped(spell_parameters(
            "Envoy dials these Unix sockets inside its own pod: something there must serve "
            "them, or every request fails (5xx; passes unprocessed with failOpen). Run the "
            "processor as a native sidecar of Envoy's pods ({sidecar} adds it to this file), or "
            "share the sockets' directory with a server in the pod.", _spelling(spell)))
    if kind == "EnvoyProxy":
        name = document["metadata"]["name"]
        namespace = document["metadata"]["namespace"]
        if sidecar is not None and sidecar.gateway_class is not None:
            return [f"The GatewayClass {sidecar.gateway_class} below attaches this EnvoyProxy "
                    "to every Gateway of the class."]
        return _wrapped(
            "Envoy Gateway applies this EnvoyProxy only where it is attached: in your Gateway "
            f"(namespace {namespace}), set spec.infrastructure.parametersRef:",
            f"  {{group: gateway.envoyproxy.io, kind: EnvoyProxy, name: {name}}}",
            "or in your GatewayClass, spec.parametersRef:",
            f"  {{group: gateway.envoyproxy.io, kind: EnvoyProxy, name: {name}, "
            f"namespace: {namespace}}}",
            *([spell_parameters("({gateway_class} writes such a GatewayClass.)",
                                _spelling(spell))] if sidecar is not None else []))
    return []


def _sidecar_command(deployment: Deployment) -> list[str]:
    """The comment above the sidecar's command: what the image must hold for it to run."""
    return _wrapped(f"The image runs this: `extctl` on PATH, and {processor_path(deployment)} "
                    "importable by its Python (install the project that defines the class into "
                    "the image; `extctl new extproc` writes such a Dockerfile).", width=80)


def render(deployment: Deployment, spell: Spell | None = None,
           patch_file: str | None = PATCH_FILE) -> str:
    """The deployment's Envoy Gateway documents as YAML, with the :func:`notes` at the top,
    each document's :func:`document_comments` above it, and what the sidecar's image must
    hold above its command."""
    parts = []
    for document in resources(deployment):
        text = to_yaml([document], document_comments(deployment, document, spell))
        if document["kind"] == "EnvoyProxy" and deployment.gateway.sidecar is not None:
            text = _comment_before(text, r"^(\s*)command:$", _sidecar_command(deployment))
        parts.append(text)
    top = "".join(f"# {line}\n" for line in notes(deployment, spell, patch_file))
    return top + "---\n".join(parts)


def _comment_before(text: str, pattern: str, lines: Sequence[str]) -> str:
    """``text`` with ``lines`` as comments, indented alike, before the first line matching."""
    found = re.search(pattern, text, re.M)
    if found is None:
        return text
    indent = found.group(1)
    comment = "".join(f"{indent}# {line}\n" for line in lines)
    return text[:found.start()] + comment + text[found.start():]


def _spelling(spell: Spell | None) -> Spell:
    """``spell``, or the library's Python spelling of what the comments name."""
    return spell if spell is not None else _PYTHON.get
