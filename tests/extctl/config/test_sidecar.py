"""The processor as an Envoy Gateway sidecar: every generated document valid against EG v1.9's
CRDs (schema, no pruned field, CEL rules), what the sidecar needs is all there, and the generated
container runs, and passes its probes, as its user on a read-only root."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import extproc
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
from extctl.config.sidecar import ENVOY_UID, container, envoy_deployment
from extctl.testing import EnvoyProcess, find_envoy
from tests.helpers.common import ROOT, http
from tests.helpers.crds import cel_errors, schema, validate
from tests.helpers.procs import Rewrite

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
    docs = _by_kind(result.stdout)
    # Envoy Gateway's own configuration is no document to apply (it would replace the
    # installed one): tests/extctl/config/test_generated_comments.py
    assert list(docs) == ["EnvoyExtensionPolicy", "Backend", "EnvoyProxy"]
    for doc in docs.values():
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
    comments = [line for line in result.stdout.splitlines() if line.startswith("#")]
    assert any("enableBackend" in line for line in comments)
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
    docs = _by_kind(result.stdout)
    assert list(docs) == ["EnvoyExtensionPolicy", "Backend", "EnvoyProxy", "GatewayClass"]
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
    assert "infrastructure.parametersRef" not in result.stdout


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
    """The `extctl gen gateway` lines of "Deploying on Envoy Gateway" in the docs' tutorial,
    with the README's Redact class."""
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    readme = (root / "README.md").read_text()
    page = (root / "docs" / "tutorial" / "first-processor.md").read_text()
    section = page[page.index("## Deploying on Envoy Gateway"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
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
                                         "GatewayClass"]
    for doc in docs:
        validate(doc)
    assert (tmp_path / "envoy-gateway-config.patch.yaml").exists()


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
    proxy = _by_kind(result.stdout)["EnvoyProxy"]
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

    from tests.helpers.common import wait_for_socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _gen(sock_dir, "--name", "p", "--route", "r", "--uds", str(sock_dir / "p.sock"),
                  "--workers", "2", "--sidecar-image", "registry.example.com/p:1",
                  "--sidecar-admin-port", str(port))
    proxy = _by_kind(result.stdout)["EnvoyProxy"]
    (sidecar,) = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["initContainers"]
    command = sidecar["command"]
    assert command[:3] == ["extctl", "serve", "app:Redact"]
    # the container's command, with a class this test can import and loopback for the pod
    args = ["tests.helpers.procs:HeadersOnly", *command[3:-1], f"127.0.0.1:{port}"]
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


# -- the generated container on a read-only root, as its user --------------------------------

# The setup that runs as root inside the container's private mount namespace before it becomes
# the container's process: every mount read-only (readOnlyRootFilesystem), except the socket's
# emptyDir, and a fresh /dev/shm as every container runtime gives a container; then the premise
# is checked, and the generated command runs as the generated user, without capabilities or
# privilege escalation.
_NAMESPACE_SETUP = r"""
import errno, json, os, re, subprocess, sys

spec = json.loads(sys.argv[1])
mounts = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
          for line in open("/proc/self/mountinfo")]
for point in mounts:
    if point not in spec["writable"]:
        subprocess.run(["mount", "-o", "remount,bind,ro", point], check=True, timeout=30)
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=64m", "shm", "/dev/shm"],
               check=True, timeout=30)
for directory in ("/tmp", "/var/tmp", "/"):
    try:
        os.close(os.open(os.path.join(directory, ".xk-premise"), os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
    else:
        sys.exit(f"premise broken: {directory} is writable in the container's namespace")
os.execvp("setpriv", spec["setpriv"] + spec["command"])
"""


def _setpriv(uid: int, gid: int, groups: list[int]) -> list[str]:
    """The securityContext as setpriv options: runAsUser/runAsGroup, the pod's supplementary
    groups, capabilities drop ALL, allowPrivilegeEscalation false."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}",
            f"--groups={','.join(map(str, groups))}", "--inh-caps=-all", "--bounding-set=-all",
            "--no-new-privs", "--"]


def _mount_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def _pids_in(namespace: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _mount_namespace(int(entry)) == namespace:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _probe(probe: dict, pid: int, env: dict[str, str], setpriv: list[str]) -> tuple[bool, str]:
    """One probe as kubelet runs it: an exec probe's command in the container (its mount
    namespace, user and environment), an httpGet probe against the pod's address."""
    timeout = probe["timeoutSeconds"]
    if "exec" in probe:
        try:
            done = subprocess.run(["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--", *setpriv,
                                   *probe["exec"]["command"]], env=env, cwd="/",
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout}s"
        return done.returncode == 0, done.stdout + done.stderr
    get = probe["httpGet"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{get['port']}{get['path']}",
                                    timeout=timeout) as answer:
            return 200 <= answer.status < 400, str(answer.status)
    except urllib.error.HTTPError as exc:
        return False, str(exc.code)
    except OSError as exc:
        return False, repr(exc)


def _extctl_path(uid: int, gid: int, bin_dir: Path) -> str:
    """A PATH on which ``extctl`` runs as ``uid``: this venv's own console script when the user
    can run it, else a wrapper around an interpreter it can run with this project's packages
    (the venv may live under a directory only root can enter)."""
    system = "/usr/local/bin:/usr/bin:/bin"
    venv_bin = os.path.dirname(sys.executable)
    check = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    if subprocess.run([*check, os.path.join(venv_bin, "extctl"), "--version"], cwd="/",
                      env={"PATH": f"{venv_bin}:{system}", "HOME": "/"},
                      capture_output=True, timeout=60).returncode == 0:
        return f"{venv_bin}:{system}"
    paths = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"],
                             sysconfig.get_paths()["platlib"]])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if subprocess.run([*check, python, "-c", "import extctl, extproc, grpc"], cwd="/",
                          env={"PYTHONPATH": paths, "HOME": "/"},
                          capture_output=True, timeout=60).returncode == 0:
            bin_dir.mkdir()
            wrapper = bin_dir / "extctl"
            wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{paths}:$PYTHONPATH" '
                               f'exec {python} -m extctl "$@"\n')
            wrapper.chmod(0o755)
            return f"{bin_dir}:{system}"
    raise RuntimeError(f"uid {uid} can run neither {venv_bin}/extctl nor a Python {version} "
                       "with this project's packages: make the venv readable to others")


@pytest.mark.envoy
@pytest.mark.parametrize("admin", [False, True], ids=["exec-probes", "admin-port"])
@pytest.mark.parametrize("workers", [1, 2])
def test_the_generated_sidecar_runs_as_its_user_on_a_read_only_root(workers, admin,
                                                                    monkeypatch):
    """The container as Kubernetes runs it: the generated command as runAsUser/runAsGroup with
    the pod's fsGroup, in a private mount namespace where everything is read-only (/tmp
    included) but the socket's emptyDir; its startup, readiness and liveness probes pass as
    kubelet runs them, Envoy (Envoy Gateway's uid, in the fsGroup) reaches the processor over
    the socket, and SIGTERM ends it with exit 0 and nothing left running."""
    if os.geteuid() != 0:
        raise RuntimeError("this test mounts file systems and changes user: run it as root "
                           "(CI does)")
    for tool in ("unshare", "nsenter", "setpriv", "mount", "umount"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: install util-linux")
    port = None
    if admin:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    base = Path(tempfile.mkdtemp(prefix="xk-ro-", dir="/tmp"))
    base.chmod(0o755)
    socket_dir = base / "run"  # the emptyDir
    socket_dir.mkdir()
    addresses = extproc.ServerConfig(uds=str(socket_dir / "extproc.sock"),
                                     workers=workers).addresses()
    sidecar = Sidecar("registry.example.com/p:1", admin_port=port)
    spec = container(sidecar, "tests.helpers.procs:Rewrite", addresses)
    fs_group = envoy_deployment(sidecar, "tests.helpers.procs:Rewrite",
                                addresses)["pod"]["securityContext"][
        "fsGroup"]
    security = spec["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert spec["volumeMounts"][0]["mountPath"] == str(socket_dir)
    uid, gid = security["runAsUser"], security["runAsGroup"]
    setpriv = _setpriv(uid, gid, [fs_group])
    serve: subprocess.Popen[str] | None = None
    namespace = None
    mounted = False
    try:
        # kubelet's memory-backed emptyDir with fsGroup: group-owned, setgid, 0777
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,mode=2777,uid=0,gid={fs_group}",
                        "xk-emptydir", str(socket_dir)], check=True, timeout=30)
        mounted = True
        env = {"PATH": _extctl_path(uid, gid, base / "bin"), "HOME": "/",
               # where the image would have the processor's module installed
               "PYTHONPATH": str(ROOT),
               **{item["name"]: item["value"] for item in spec["env"]}}
        setup = {"writable": [str(socket_dir)], "setpriv": setpriv,
                 "command": spec["command"]}
        serve = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c",
             _NAMESPACE_SETUP, json.dumps(setup)],
            env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)

        def output() -> str:
            assert serve is not None
            if serve.poll() is None:
                serve.kill()
            return serve.communicate(timeout=15)[0]

        # The startup probe, as kubelet runs it: every periodSeconds until one passes, at
        # most failureThreshold failures.
        startup = spec["startupProbe"]
        failures = 0
        while True:
            if serve.poll() is not None:
                raise AssertionError(f"the container exited with {serve.returncode}:\n"
                                     f"{output()}")
            passed, said = _probe(startup, serve.pid, env, setpriv)
            if passed:
                break
            failures += 1
            assert failures < startup["failureThreshold"], \
                f"startup probe failed {failures} times ({said}):\n{output()}"
            time.sleep(startup["periodSeconds"])
        namespace = _mount_namespace(serve.pid)
        assert namespace != _mount_namespace(os.getpid())
        status = Path(f"/proc/{serve.pid}/status").read_text()
        assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status, status
        for name in ("readinessProbe", "livenessProbe"):
            passed, said = _probe(spec[name], serve.pid, env, setpriv)
            assert passed, f"{name}: {said}"

        # Envoy, as Envoy Gateway runs it (uid 65532, the fsGroup a supplementary group).
        workdir = base / "envoy"
        workdir.mkdir()
        os.chown(workdir, ENVOY_UID, ENVOY_UID)
        wrapper = base / "envoy-as-user"
        wrapper.write_text("#!/bin/sh\nexec " + " ".join(
            _setpriv(ENVOY_UID, ENVOY_UID, [fs_group])) + f" {find_envoy()} \"$@\"\n")
        wrapper.chmod(0o755)
        monkeypatch.setenv("EXTCTL_ENVOY_BINARY", str(wrapper))
        with EnvoyProcess(Deployment.build(Rewrite, addresses=addresses).envoy_bootstrap(),
                          workdir) as envoy:
            replies = [http(envoy.port, "/") for _ in range(2 * workers)]
        for reply in replies:
            assert reply.status == 200, reply
            assert reply.headers["x-processed-by"].startswith("extkit-"), reply.headers

        serve.send_signal(signal.SIGTERM)  # what kubelet sends when the pod stops
        try:
            code = serve.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 30 s after SIGTERM:\n{output()}") from None
        said = output()
        assert code == 0, f"exit {code}:\n{said}"
        deadline = time.monotonic() + 10
        while _pids_in(namespace) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _pids_in(namespace) == [], f"left running in the container:\n{said}"
        assert not any(os.path.exists(a) for a in addresses), os.listdir(socket_dir)
    finally:
        if serve is not None:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                serve.communicate(timeout=15)
        if namespace is not None:
            for pid in _pids_in(namespace):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if mounted:
            subprocess.run(["umount", "--lazy", str(socket_dir)], capture_output=True,
                           timeout=30)
        shutil.rmtree(base, ignore_errors=True)
