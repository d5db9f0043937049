"""What the generated files say about what they cannot do themselves, as a user runs ``extctl
gen``: Envoy Gateway's configuration as a patch to merge beside the resources (a ConfigMap
applied would replace the installed configuration), a Backend's sockets something must serve,
how to attach an EnvoyProxy, what the sidecar's image must hold; ``gen envoy``'s header, and
its local Wasm files named from the file's directory, where the header says to run Envoy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import wasmtime
import yaml

from extctl.config import Deployment, GatewayOptions, Sidecar, Target, WasmModule
from extctl.config.gateway_notes import envoy_gateway_patch
from extctl.testing import find_envoy
from tests.helpers.common import ROOT, WAT, http, wait_for_socket
from tests.helpers.crds import validate
from tests.helpers.procs import HeadersOnly

PATCH = "envoy-gateway-config.patch.yaml"
HELM_PATCH = [
    "# Installed with Helm: these are the chart's values (--reuse-values keeps yours):",
    "#   helm upgrade eg oci://docker.io/envoyproxy/gateway-helm --version <yours> \\",
    "#     -n envoy-gateway-system --reuse-values -f envoy-gateway-config.patch.yaml",
]
KUBECTL = [
    "#   kubectl edit configmap envoy-gateway-config -n envoy-gateway-system",
    "# Then restart Envoy Gateway so that it reads it:",
    "#   kubectl rollout restart deployment envoy-gateway -n envoy-gateway-system",
]


def _extctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "extctl", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _documents(text: str) -> list[tuple[list[str], dict]]:
    """Each document with the comment lines just above it."""
    found = []
    for part in text.split("\n---\n"):
        lines = part.splitlines()
        comments = []
        while lines and lines[0].startswith("#"):
            comments.append(lines.pop(0))
        found.append((comments, yaml.safe_load("\n".join(lines))))
    return found


def test_gen_gateway_writes_envoy_gateway_s_configuration_apart_as_a_patch(tmp_path):
    out = tmp_path / "deploy" / "gateway.yaml"
    done = _extctl("gen", "gateway", "tests.helpers.procs:HeadersOnly", "--name", "guard",
                   "--route", "r", "--uds", "/var/run/extproc/p.sock", "--workers", "2",
                   "--sidecar-image", "registry.example.com/guard:1", "-o", str(out),
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    patch = out.parent / PATCH
    assert done.stderr == (f"wrote {out} (kubectl apply -f it) and {patch} (merge it into "
                           "Envoy Gateway's configuration as its comments say; do not apply "
                           "it)\n")
    text = out.read_text()
    documents = _documents(text)
    # Nothing in the file kubectl applies replaces Envoy Gateway's configuration.
    assert [d["kind"] for _, d in documents] == ["EnvoyExtensionPolicy", "Backend", "EnvoyProxy"]
    for _, document in documents:
        validate(document)
    assert documents[0][0] == [
        "# Envoy Gateway serves the Backend below only once its own configuration enables Backends",
        "# (extensionApis.enableBackend), merged into it: a ConfigMap envoy-gateway-config applied "
        "instead",
        "# would replace its whole configuration. Merge envoy-gateway-config.patch.yaml, written "
        "beside",
        "# this file; its comments give the commands.",
    ]
    assert documents[1][0] == ["# The processor's sidecar in the EnvoyProxy below serves these "
                               "sockets, in Envoy's pod."]
    assert documents[2][0] == [
        "# Envoy Gateway applies this EnvoyProxy only where it is attached: in your Gateway "
        "(namespace",
        "# default), set spec.infrastructure.parametersRef:",
        "#   {group: gateway.envoyproxy.io, kind: EnvoyProxy, name: guard-proxy}",
        "# or in your GatewayClass, spec.parametersRef:",
        "#   {group: gateway.envoyproxy.io, kind: EnvoyProxy, name: guard-proxy, namespace: "
        "default}",
        "# (--gateway-class writes such a GatewayClass.)",
    ]
    lines = text.splitlines()
    command = lines.index("          command:")
    assert lines[command - 3:command] == [
        "          # The image runs this: `extctl` on PATH, and tests.helpers.procs:HeadersOnly",
        "          # importable by its Python (install the project that defines the class into "
        "the",
        "          # image; `extctl new extproc` writes such a Dockerfile).",
    ]

    patch_text = patch.read_text()
    # The chart's values (templates/envoy-gateway-config.yaml renders .Values.config.envoyGateway
    # into the ConfigMap's envoy-gateway.yaml).
    assert yaml.safe_load(patch_text) == {
        "config": {"envoyGateway": {"extensionApis": {"enableBackend": True}}}}
    comments = [line for line in patch_text.splitlines() if line.startswith("#")]
    assert comments[0] == ("# Envoy Gateway's own configuration, to MERGE into it, not to "
                           "kubectl apply: it must enable")
    assert comments[6:9] == HELM_PATCH
    assert comments[-3:] == KUBECTL


def test_gen_gateway_to_stdout_says_how_to_merge_and_what_must_serve_the_socket(tmp_path):
    done = _extctl("gen", "gateway", "tests.helpers.procs:HeadersOnly", "--name", "guard",
                   "--route", "r", "--uds", "/var/run/extproc/p.sock", "--filter-order",
                   "wasm:before:ext_proc", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ("note: Envoy Gateway must enable Backends in its own configuration "
                           "(extensionApis.enableBackend): the comments at the top say how to "
                           f"merge it; with -o FILE, {PATCH} is written beside FILE\n")
    assert list(tmp_path.iterdir()) == []  # stdout only
    documents = _documents(done.stdout)
    assert [d["kind"] for _, d in documents] == ["EnvoyExtensionPolicy", "Backend", "EnvoyProxy"]
    for _, document in documents:
        validate(document)
    assert documents[0][0] == [
        "# Envoy Gateway serves the Backend below only once its own configuration enables Backends",
        "# (extensionApis.enableBackend), merged into it: a ConfigMap envoy-gateway-config applied "
        "instead",
        "# would replace its whole configuration. With Helm:",
        "#   helm upgrade eg oci://docker.io/envoyproxy/gateway-helm --version <yours> \\",
        "#     -n envoy-gateway-system --reuse-values --set "
        "config.envoyGateway.extensionApis.enableBackend=true",
        "# Without Helm, add `extensionApis: {enableBackend: true}` to envoy-gateway.yaml in:",
        *KUBECTL,
    ]
    # No sidecar: the Backend's socket is someone else's to serve, in Envoy's pod.
    assert documents[1][0] == [
        "# Envoy dials these Unix sockets inside its own pod: something there must serve them, "
        "or every",
        "# request fails (5xx; passes unprocessed with failOpen). Run the processor as a native "
        "sidecar of",
        "# Envoy's pods (--sidecar-image IMAGE adds it to this file), or share the sockets' "
        "directory with",
        "# a server in the pod.",
    ]
    # The EnvoyProxy carrying only the filter order: how to attach it.
    assert documents[2][0][1:3] == [
        "# default), set spec.infrastructure.parametersRef:",
        "#   {group: gateway.envoyproxy.io, kind: EnvoyProxy, name: guard-proxy}"]


def test_the_library_renders_the_patch_apart_and_names_its_own_api():
    deployment = Deployment(HeadersOnly, addresses=["/var/run/extproc/p.sock"],
                            gateway=GatewayOptions(targets=[Target("HTTPRoute", "r")]))
    files = deployment.render()
    assert sorted(files) == ["envoy-gateway-config.patch.yaml", "envoy.yaml", "gateway.yaml"]
    assert "kind: ConfigMap" not in files["gateway.yaml"]
    assert ("# Envoy's pods (GatewayOptions(sidecar=Sidecar(IMAGE)) adds it to this file), or "
            "share the") in files["gateway.yaml"]
    eg = Deployment(HeadersOnly, addresses=["/var/run/extproc/p.sock"], gateway=GatewayOptions(
        targets=[Target("HTTPRoute", "r")], sidecar=Sidecar("r.example/p:1", eg_namespace="eg")))
    assert "-n eg --reuse-values" in eg.render()["envoy-gateway-config.patch.yaml"]
    wasm_only = Deployment(wasm=[WasmModule("tag", image="registry.example.com/f/tag:v1",
                                            sha256="0" * 64)],
                           gateway=GatewayOptions(targets=[Target("HTTPRoute", "r")]))
    assert envoy_gateway_patch(wasm_only) is None  # no Backend, nothing to enable


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_gen_envoy_says_what_wrote_it_and_runs_as_its_header_says(tmp_path, sock_dir, echo,
                                                                   started):
    project = tmp_path / "project"
    (project / "filters").mkdir(parents=True)
    (project / "filters" / "tag.wasm").write_bytes(
        wasmtime.wat2wasm((WAT / "add_header.wat").read_text()))
    listen, admin = _free_ports(2)
    socket_path = sock_dir / "p.sock"
    done = _extctl("gen", "envoy", "tests.helpers.procs:HeadersOnly", "--uds", str(socket_path),
                   "--upstream", echo.address, "--listen", f"127.0.0.1:{listen}", "--admin",
                   f"127.0.0.1:{admin}", "--wasm", "tag=filters/tag.wasm", "--wasm-config",
                   "tag={}", "-o", "configs/envoy.yaml", cwd=project)
    assert done.returncode == 0, done.stderr
    configs = project / "configs"
    text = (configs / "envoy.yaml").read_text()
    from extctl import __version__

    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header == [
        f"# Written by `extctl gen envoy` (envoy-extkit {__version__}) from "
        "tests.helpers.procs:HeadersOnly.",
        "# Run it: envoy -c envoy.yaml   (check it first: envoy --mode validate -c envoy.yaml)",
        f"# It listens on 127.0.0.1:{listen}, its admin endpoint on 127.0.0.1:{admin}.",
        f"# Its ext_proc filter calls HeadersOnly at {socket_path}: serve it there,",
        f"#   extctl serve tests.helpers.procs:HeadersOnly --uds {socket_path}",
        "# Its Wasm files (../filters/tag.wasm) are named relative to this file's directory:",
        "# Envoy reads them from its working directory, so start it there,",
        f"#   cd {configs} && envoy -c envoy.yaml",
    ]
    # No path of this machine baked in: the directory can move (into an image, a repository).
    assert "filename: ../filters/tag.wasm" in text and str(project) not in text.replace(
        header[-1], "")

    # As the header says: the processor where the filter calls it, Envoy from that directory.
    server = subprocess.Popen(
        [sys.executable, "-m", "extctl", "serve", "tests.helpers.procs:HeadersOnly", "--uds",
         str(socket_path)], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    started.append(server)
    wait_for_socket(socket_path, server)
    envoy = subprocess.Popen([find_envoy(), "-c", "envoy.yaml", "--disable-hot-restart"],
                             cwd=configs, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    started.append(envoy)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as ready:
                if ready.read().strip() == b"LIVE":
                    break
        except OSError:
            pass
        assert envoy.poll() is None and time.monotonic() < deadline, envoy.stdout
        time.sleep(0.1)
    reply = http(listen, "/hello")
    assert reply.status == 200
    assert reply.headers["x-wasm"] == "added"  # the module found from Envoy's directory
    assert reply.upstream_headers()["x-seen"] == ["1"]  # the processor served as told
