"""The processor as an Envoy Gateway sidecar: every generated document valid against EG v1.9's
CRDs (schema, no pruned field, CEL rules), and what the sidecar needs is all there."""

from __future__ import annotations

import copy

import pytest
import yaml
from click.testing import CliRunner
from crds import cel_errors, schema, validate
from procs import Rewrite

from extctl.cli import cli
from extctl.config import (
    Deployment,
    FilterPosition,
    GatewayError,
    GatewayOptions,
    Policy,
    Sidecar,
    Target,
)

SOCKET = "/var/run/extproc/extproc.sock"
APP = """
import extproc

class Redact(extproc.Processor):
    async def on_response_body(self, body):
        body.data = body.data.replace(b"secret", b"******")
    response_body_mode = extproc.BodyMode.STREAMED
"""


def _gen(tmp_path, *args: str):
    (tmp_path / "app.py").write_text(APP)
    return CliRunner().invoke(cli, ["gen", "gateway", "app:Redact", "--app-dir",
                                    str(tmp_path), *args], catch_exceptions=False)


def _by_kind(text: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(text)}


def test_one_command_writes_the_whole_sidecar_deployment(tmp_path):
    result = _gen(tmp_path, "--name", "redact", "--route", "r", "--uds", SOCKET,
                  "--sidecar-image", "registry.example.com/redact:1")
    assert result.exit_code == 0, result.output
    docs = _by_kind(result.output)
    assert list(docs) == ["EnvoyExtensionPolicy", "Backend", "EnvoyProxy", "ConfigMap"]
    for doc in docs.values():
        if doc["kind"] != "ConfigMap":
            validate(doc)
    deployment = docs["EnvoyProxy"]["spec"]["provider"]["kubernetes"]["envoyDeployment"]
    (sidecar,) = deployment["initContainers"]
    # A native sidecar: started (and probed) before Envoy, stopped after it.
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "registry.example.com/redact:1"
    assert sidecar["command"] == ["extctl", "serve", "app:Redact", "--uds", SOCKET,
                                  "--workers", "1", "--socket-mode", "660"]
    health = ["extctl", "health", "--uds", SOCKET, "--workers", "1", "--timeout", "2"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["exec"]["command"] == health
    assert sidecar["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                    "limits": {"memory": "128Mi"}}
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    # The socket's directory: one emptyDir, mounted by both; the pod's fsGroup owns it and
    # is a supplementary group of Envoy's user (65532), so mode 660 lets Envoy in.
    assert deployment["pod"]["volumes"] == [
        {"name": "extproc-socket", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]
    assert deployment["pod"]["securityContext"] == {"fsGroup": 10001}
    mount = [{"name": "extproc-socket", "mountPath": "/var/run/extproc"}]
    assert sidecar["volumeMounts"] == mount
    assert deployment["container"]["volumeMounts"] == mount
    envoy = deployment["container"]["securityContext"]
    assert envoy["runAsNonRoot"] and envoy["runAsUser"] == 65532
    backend = docs["Backend"]["spec"]["endpoints"]
    assert backend == [{"unix": {"path": SOCKET}}]
    config = docs["ConfigMap"]
    assert config["metadata"] == {"name": "envoy-gateway-config",
                                  "namespace": "envoy-gateway-system"}
    eg = yaml.safe_load(config["data"]["envoy-gateway.yaml"])
    assert eg["kind"] == "EnvoyGateway" and eg["extensionApis"] == {"enableBackend": True}
    comments = [line for line in result.output.splitlines() if line.startswith("#")]
    assert any("merge" in line and "enableBackend" in line for line in comments)
    assert any("infrastructure.parametersRef" in line for line in comments)
    assert any("name: redact-proxy" in line for line in comments)


def test_workers_resources_gateway_class_and_filter_order_in_one_envoy_proxy(tmp_path):
    result = _gen(tmp_path, "--name", "redact", "--namespace", "apps", "--route", "r",
                  "--uds", SOCKET, "--workers", "3", "--sidecar-image",
                  "reg.example.com:5000/team/redact@sha256:" + "a" * 64,
                  "--cpu", "250m", "--memory", "256Mi", "--cpu-limit", "1",
                  "--sidecar-user", "2000", "--socket-group", "3000",
                  "--gateway-class", "eg-redact", "--filter-order", "wasm:before:ext_proc")
    assert result.exit_code == 0, result.output
    docs = _by_kind(result.output)
    assert list(docs) == ["EnvoyExtensionPolicy", "Backend", "EnvoyProxy", "GatewayClass",
                          "ConfigMap"]
    for kind in ("EnvoyExtensionPolicy", "Backend", "EnvoyProxy", "GatewayClass"):
        validate(docs[kind])
    proxy = docs["EnvoyProxy"]["spec"]
    assert proxy["filterOrder"] == [{"name": "envoy.filters.http.wasm",
                                     "before": "envoy.filters.http.ext_proc"}]
    deployment = proxy["provider"]["kubernetes"]["envoyDeployment"]
    (sidecar,) = deployment["initContainers"]
    assert sidecar["command"][3:6] == ["--uds", SOCKET, "--workers"]
    assert sidecar["command"][6] == "3"
    assert sidecar["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"},
                                    "limits": {"memory": "256Mi", "cpu": "1"}}
    assert sidecar["securityContext"]["runAsUser"] == 2000
    assert deployment["pod"]["securityContext"] == {"fsGroup": 3000}
    assert [e["unix"]["path"] for e in docs["Backend"]["spec"]["endpoints"]] == [
        f"/var/run/extproc/extproc-{i}.sock" for i in range(3)]
    assert docs["GatewayClass"]["spec"]["parametersRef"] == {
        "group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": "redact-proxy",
        "namespace": "apps"}
    assert "infrastructure.parametersRef" not in result.output


def test_the_crd_check_sees_cel_rules_and_pruned_fields():
    deployment = Deployment(Rewrite, addresses=[SOCKET], gateway=GatewayOptions(
        targets=[Target("HTTPRoute", "r")], sidecar=Sidecar("reg.example.com/p:1")))
    proxy = next(d for d in deployment.gateway_resources() if d["kind"] == "EnvoyProxy")
    assert cel_errors(proxy, schema(proxy)) == []
    both = copy.deepcopy(proxy)
    both["spec"]["provider"]["kubernetes"]["envoyDaemonSet"] = {}
    assert any("only one of envoyDeployment or envoyDaemonSet" in e
               for e in cel_errors(both, schema(both)))
    image = copy.deepcopy(proxy)
    image["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["image"] = "a b"
    assert cel_errors(image, schema(image))
    pruned = copy.deepcopy(proxy)
    pruned["spec"]["provider"]["kubernetes"]["envoyDeployment"]["initContainers"][0][
        "restartPolicyy"] = "Always"
    assert any("restartPolicyy: not a field" in e for e in cel_errors(pruned, schema(pruned)))
    order = Deployment(Rewrite, addresses=[SOCKET], policy=Policy(
        filter_order=[FilterPosition("wasm", "before", "ext_proc")]), gateway=GatewayOptions(
        targets=[Target("HTTPRoute", "r")])).gateway_resources()[-1]
    del order["spec"]["filterOrder"][0]["before"]
    assert cel_errors(order, schema(order))


@pytest.mark.parametrize(("sidecar", "addresses", "message"), [
    ({"image": "reg.example.com/p:1"}, ["127.0.0.1:9000"], "over a Unix socket"),
    ({"image": "not an image"}, [SOCKET], "is not an image reference"),
    ({"image": "r/p:1", "socket_mode": 0o666}, [SOCKET], "others no access"),
    ({"image": "r/p:1", "user": 0}, [SOCKET], "non-root"),
    ({"image": "r/p:1", "memory": "lots"}, [SOCKET], "Kubernetes quantity"),
    ({"image": "r/p:1"}, ["/run/a.sock", "/run/b.sock"], "ServerConfig names them"),
])
def test_what_kubernetes_or_envoy_gateway_would_refuse_is_refused(sidecar, addresses, message):
    with pytest.raises(GatewayError, match=message):
        Deployment(Rewrite, addresses=addresses, gateway=GatewayOptions(
            targets=[Target("HTTPRoute", "r")], sidecar=Sidecar(**sidecar))).gateway_resources()


def test_sidecar_options_need_an_image(tmp_path):
    result = _gen(tmp_path, "--route", "r", "--uds", SOCKET, "--gateway-class", "eg")
    assert result.exit_code == 2
    assert "give --sidecar-image" in result.output


def test_readme_deploying_commands_run(tmp_path, monkeypatch):
    """The `extctl gen gateway` lines of the README's "Deploying on Envoy Gateway"."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Deploying on Envoy Gateway"):]
    section = section[:section.index("\n## ", 1)]
    processor = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    (tmp_path / "app.py").write_text("import extproc\n" + processor)
    monkeypatch.chdir(tmp_path)
    lines = [line for block in re.findall(r"```\n(.*?)```", section, re.S)
             for line in block.replace("\\\n", " ").splitlines()
             if line.startswith("extctl gen")]
    assert len(lines) == 2
    for line in lines:
        result = CliRunner().invoke(cli, shlex.split(line)[1:], catch_exceptions=False)
        assert result.exit_code == 0, (line, result.output)
    docs = list(yaml.safe_load_all((tmp_path / "gateway.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["EnvoyExtensionPolicy", "Backend", "EnvoyProxy",
                                         "GatewayClass", "ConfigMap"]
    for doc in docs[:4]:
        validate(doc)


def test_a_class_the_sidecar_cannot_import_by_name_is_refused():
    import extproc
    from extctl.config import GatewayError

    class Local(extproc.Processor):
        async def on_request_headers(self, headers):
            return None

    deployment = Deployment(Local, addresses=[SOCKET], gateway=GatewayOptions(
        targets=[Target("HTTPRoute", "r")], sidecar=Sidecar("reg.example.com/p:1")))
    with pytest.raises(GatewayError, match="imports the class by name"):
        deployment.gateway_resources()
    assert Rewrite.filter_spec().importable and not Local.filter_spec().importable


def test_an_admin_port_gives_http_probes_and_a_metrics_port(tmp_path):
    result = _gen(tmp_path, "--name", "redact", "--route", "r", "--uds", SOCKET,
                  "--workers", "2", "--sidecar-image", "registry.example.com/redact:1",
                  "--sidecar-admin-port", "9102")
    assert result.exit_code == 0, result.output
    proxy = _by_kind(result.output)["EnvoyProxy"]
    validate(proxy)
    (sidecar,) = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["initContainers"]
    assert sidecar["command"][-2:] == ["--admin", "0.0.0.0:9102"]
    assert sidecar["ports"] == [{"name": "extproc-admin", "containerPort": 9102,
                                 "protocol": "TCP"}]
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 9102}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9102}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9102}
    assert "exec" not in sidecar["livenessProbe"]
    refused = _gen(tmp_path, "--name", "redact", "--route", "r", "--uds", SOCKET,
                   "--sidecar-admin-port", "9102")
    assert refused.exit_code == 2 and "give --sidecar-image" in refused.output
    low = _gen(tmp_path, "--name", "redact", "--route", "r", "--uds", SOCKET,
               "--sidecar-image", "registry.example.com/redact:1", "--sidecar-admin-port", "80")
    assert low.exit_code == 2


def test_the_sidecar_command_answers_the_http_probes(sock_dir, extctl):
    import socket
    import time
    import urllib.request

    from conftest import wait_for_socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _gen(sock_dir, "--name", "p", "--route", "r", "--uds", str(sock_dir / "p.sock"),
                  "--workers", "2", "--sidecar-image", "registry.example.com/p:1",
                  "--sidecar-admin-port", str(port))
    proxy = _by_kind(result.output)["EnvoyProxy"]
    (sidecar,) = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["initContainers"]
    command = sidecar["command"]
    assert command[:3] == ["extctl", "serve", "app:Redact"]
    # the container's command, with a class this test can import and loopback for the pod
    args = ["procs:HeadersOnly", *command[3:-1], f"127.0.0.1:{port}"]
    proc = extctl("serve", *args)
    try:
        for worker in ("p-0.sock", "p-1.sock"):
            wait_for_socket(sock_dir / worker, proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}{sidecar['readinessProbe']['httpGet']['path']}",
                        timeout=2) as ready:
                    assert ready.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        alive_path = sidecar["livenessProbe"]["httpGet"]["path"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{alive_path}", timeout=2) as alive:
            assert alive.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as metrics:
            assert b"grpc_server_started_total" in metrics.read()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
