"""The processor inside the data-plane Envoy (extctl.config.DynamicModule): the standalone
config run by a real Envoy with the extkit dynamic module (built from spike/dynamic_module/),
and the Envoy Gateway resources checked against Envoy Gateway v1.9's CRDs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from extctl.config import ConfigError, Deployment, DynamicModule, Policy, Target
from extctl.testing import EnvoyProcess
from tests.helpers.common import ROOT, http
from tests.helpers.crds import validate
from tests.helpers.procs import BufferedJson, Rewrite

SPIKE = ROOT / "spike" / "dynamic_module"


@pytest.fixture(scope="module")
def module_file() -> Path:
    """The module, built with gcc against this environment's libpython (build.sh checks that
    the Envoy it will run in exports every callback it calls)."""
    built = subprocess.run(["bash", str(SPIKE / "build.sh")], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr
    return SPIKE / "build" / "libextkit_dm.so"


def test_the_standalone_config_runs_the_class_in_envoy(module_file, echo, sock_dir,
                                                        monkeypatch) -> None:
    module = DynamicModule(path=str(module_file), python_path=[str(ROOT)])
    monkeypatch.setenv("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module.search_path)
    deployment = Deployment(Rewrite, dynamic_module=module, upstreams=[echo.address])
    bootstrap = deployment.envoy_bootstrap()
    clusters = [c.name for c in bootstrap.static_resources.clusters]
    assert "extproc" not in clusters  # no ext_proc server to call
    with EnvoyProcess(bootstrap, sock_dir / "envoy") as envoy:
        assert envoy.process is not None
        pid = envoy.process.pid
        reply = http(envoy.port, "/a?b=1", headers={"x-internal": "secret"})
        denied = http(envoy.port, "/", headers={"x-deny": "1"})
    assert reply.status == 200
    upstream = reply.upstream_headers()
    assert upstream["x-path"] == ["/a?b=1"] and upstream["x-replaced"] == ["new"]
    assert "x-internal" not in upstream
    # the response hook ran in Envoy's own process, on the stream's Processor
    assert reply.headers["x-processed-by"] == f"extkit-{pid}"
    assert reply.headers["x-request-path"] == "/a?b=1"
    assert (denied.status, denied.body, denied.headers["x-why"]) == (403, b"denied\n", "policy")


def _resources(**options: Any) -> list[dict[str, Any]]:
    return Deployment.build(Rewrite, targets=[Target("HTTPRoute", "backend")],
                            **options).gateway_resources()


def test_gateway_gets_the_dynamic_module_entry_and_the_allowlist_crd_valid() -> None:
    module = DynamicModule(path="/usr/local/lib/envoy/libextkit_dm.so", name="extkit-dm",
                           python_path=["/app"])
    docs = _resources(dynamic_module=module)
    for doc in docs:
        validate(doc)
    kinds = {doc["kind"]: doc for doc in docs}
    assert "Backend" not in kinds  # no ext_proc server
    entry = kinds["EnvoyExtensionPolicy"]["spec"]["dynamicModule"]
    assert entry == [{"name": "extkit-dm", "filterName": "extkit",
                      "config": {"processor": "tests.helpers.procs:Rewrite", "path": ["/app"]}}]
    assert "extProc" not in kinds["EnvoyExtensionPolicy"]["spec"]
    assert kinds["EnvoyProxy"]["spec"]["dynamicModules"] == [
        {"name": "extkit-dm", "doNotClose": True,
         "source": {"local": {"path": "/usr/local/lib/envoy/libextkit_dm.so"}}}]


@pytest.mark.parametrize(("options", "message"), [
    ({"processor": BufferedJson}, r"BufferedJson defines on_request_body: the dynamic module "
                                  r"runs header hooks only"),
    ({"addresses": ["/run/x.sock"]}, r"runs in Envoy: give no ext_proc addresses"),
    ({"policy": Policy(fail_open=True)}, r"the class's own fail_open and message_timeout"),
])
def test_what_the_module_cannot_run_is_refused_before_envoy(options, message) -> None:
    values = {"processor": Rewrite, **options}
    with pytest.raises(ConfigError, match=message):
        Deployment(dynamic_module=DynamicModule(), **values)


@pytest.mark.parametrize(("fields", "message"), [
    ({"path": "relative/libx.so"}, "absolute path of a lib<name>.so"),
    ({"path": "/opt/module.so"}, "absolute path of a lib<name>.so"),
    ({"name": "Extkit_DM"}, "lower-case letters"),
])
def test_a_module_path_or_name_envoy_cannot_use_is_refused(fields, message) -> None:
    with pytest.raises(ConfigError, match=message):
        DynamicModule(**fields)
