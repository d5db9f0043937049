"""``extctl dev`` end to end, and CLI conventions every command keeps."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from extctl.cli import cli
from tests.helpers.common import _descendants, http, wait_for_line


def test_dev_runs_the_demo_through_a_real_envoy_and_cleans_up(extctl):
    proc = extctl("dev", "--port", "0")
    workdir_match, before = wait_for_line(proc, r"workdir: (\S+)")
    workdir = Path(workdir_match.group(1))
    port_match, lines = wait_for_line(proc, r"try: curl -i http://127\.0\.0\.1:(\d+)/")
    port = int(port_match.group(1))
    children = _descendants(proc.pid)
    assert children  # Envoy at least
    assert workdir.exists() and (workdir / "extproc.sock").exists()
    assert any("phases: request_headers, response_body" in line for line in lines)
    ok = http(port, "/hello", headers={"x-echo-chunks": '["a secret"]'})
    denied = http(port, "/", headers={"x-deny": "1"})
    echoed = http(port, "/json")
    proc.send_signal(signal.SIGINT)
    # Not communicate(): it reads the pipe beneath what readline() already buffered.
    assert proc.wait(30) == 0
    err = "".join(before + lines) + proc.stderr.read()
    assert ok.status == 200 and ok.body == b"a ******"
    assert denied.status == 403 and denied.headers["x-denied-by"] == "extkit-demo"
    assert ["x-extkit-demo", "request seen"] in echoed.json()["headers"]
    assert not workdir.exists()
    assert not any(Path(f"/proc/{p}").exists() for p in children)  # Envoy stopped and reaped
    assert "[envoy]" in err  # Envoy's log is shown
    assert "extctl.upstream" in err  # and the upstream's


def test_dev_with_a_user_processor(extctl):
    proc = extctl("dev", "tests.helpers.procs:Rewrite", "--port", "0")
    port_match, _ = wait_for_line(proc, r"try: curl -i http://127\.0\.0\.1:(\d+)/")
    reply = http(int(port_match.group(1)), "/p")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert reply.upstream_headers()["x-path"] == ["/p"]


def test_dev_with_a_local_module_in_the_requested_filter_order(extctl, tmp_path):
    import wasmtime

    from tests.helpers.common import ROOT

    module = tmp_path / "order.wasm"
    module.write_bytes(wasmtime.wat2wasm(
        (ROOT / "tests/helpers/wat/append_request_header.wat").read_text()))
    proc = extctl("dev", "tests.helpers.procs:AppendOrder", "--port", "0", "--wasm", str(module),
                  "--filter-order", "wasm:before:ext_proc")
    port_match, lines = wait_for_line(proc, r"try: curl -i http://127\.0\.0\.1:(\d+)/")
    reply = http(int(port_match.group(1)), "/")
    children = _descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert any("filters: envoy.filters.http.wasm/order -> envoy.filters.http.ext_proc/"
               "appendorder -> envoy.filters.http.router" in line for line in lines)
    values = ",".join(reply.upstream_headers()["x-order"]).replace(" ", "")
    assert values == "wasm,ext_proc"
    assert not any(Path(f"/proc/{p}").exists() for p in children)


def test_dev_pulls_an_image_from_the_registry_and_runs_it(extctl, registry, wat_module,
                                                         tmp_path):
    import base64
    import json

    import registry as oci
    from tests.helpers.oci import PASSWORD, USER

    ref = f"oci://{registry.host}/dev/add-header:v1"
    pushed = oci.push(wat_module, ref, connection=oci.Connection(
        oci.Credentials(USER, PASSWORD, "t"), ca_file=str(registry.ca_file)))
    config = tmp_path / "config.json"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config.write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
    proc = extctl("dev", "--port", "0", "--wasm", ref, "--wasm-sha256", pushed.digest,
                  "--docker-config", str(config), "--ca-file", str(registry.ca_file))
    port_match, lines = wait_for_line(proc, r"try: curl -i http://127\.0\.0\.1:(\d+)/")
    reply = http(int(port_match.group(1)), "/")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert reply.headers["x-wasm"] == "added"
    assert not any(line.startswith("processor:") for line in lines)  # Wasm alone
    wrong = extctl("dev", "--port", "0", "--wasm", ref, "--wasm-sha256", "a" * 64,
                   "--docker-config", str(config), "--ca-file", str(registry.ca_file))
    _, err = wrong.communicate(timeout=60)
    assert wrong.returncode == 6
    assert err.strip().splitlines()[-1].startswith("error: ")


def test_dev_refuses_a_file_that_is_not_wasm_with_exit_9(extctl, tmp_path):
    bogus = tmp_path / "plugin.wasm"
    bogus.write_bytes(b"not wasm")
    proc = extctl("dev", "--port", "0", "--wasm", str(bogus))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 9
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "plugin.wasm" in last


def _command_paths(group, prefix=()):
    context = click.Context(group)
    for name in sorted(group.list_commands(context)):
        command = group.get_command(context, name)
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _command_paths(command, (*prefix, name))


@pytest.mark.parametrize("command", [" ".join(p) for p in _command_paths(cli)])
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(cli, [*command.split(), "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    assert f"extctl {command}" in result.output


USAGE_ERRORS = [
    (["serve"], "extctl serve", "Missing argument 'MODULE:CLASS'."),
    (["serve", "tests.helpers.procs:Rewrite", "--workers", "abc"], "extctl serve",
     "Invalid value for '--workers': 'abc' is not a valid integer range."),
    (["bogus"], "extctl", "No such command 'bogus'."),
    (["gen", "envoy", "--nope"], "extctl gen envoy", "No such option '--nope'."),
]


def test_version_and_usage_errors():
    from importlib.metadata import version

    runner = CliRunner()
    shown = runner.invoke(cli, ["--version"], prog_name="extctl")
    assert shown.exit_code == 0
    assert shown.output == f"extctl, version {version('envoy-extkit')}\n"
    for args, usage, error in USAGE_ERRORS:
        result = runner.invoke(cli, args, prog_name="extctl")
        assert result.exit_code == 2, args
        # The usage of the command misused, then one line naming what was wrong.
        lines = result.output.splitlines()
        assert lines[0].startswith(f"Usage: {usage} [OPTIONS]"), result.output
        assert [line for line in lines if "rror" in line] == [f"Error: {error}"], result.output
        assert lines[-1] == f"Error: {error}"


def test_nested_command_options_read_extctl_environment_variables(tmp_path):
    import yaml

    result = CliRunner().invoke(cli, ["gen", "envoy"], env={
        "EXTCTL_GEN_ENVOY_LISTEN": "127.0.0.1:12345",
        "EXTCTL_GEN_ENVOY_UPSTREAM": "127.0.0.1:8081 127.0.0.1:8082",  # multiple: spaces
        "EXTCTL_GEN_ENVOY_FORMAT": "json"})
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(result.output)
    listener = config["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == 12345
    upstream = config["static_resources"]["clusters"][0]
    assert len(upstream["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2


def test_json_options_from_the_environment_are_one_per_line():
    import yaml

    result = CliRunner().invoke(cli, ["gen", "gateway", "--name", "n", "--route", "r"], env={
        "EXTCTL_GEN_GATEWAY_WASM_IMAGE": f"a=oci://r.example/a:1@sha256:{'a' * 64} "
                                         f"b=oci://r.example/b:1@sha256:{'b' * 64}",
        "EXTCTL_GEN_GATEWAY_WASM_CONFIG": 'a={"words": ["x", "y"]}\nb={"on": true}'})
    assert result.exit_code == 0, result.output
    wasm = next(yaml.safe_load_all(result.output))["spec"]["wasm"]
    assert [w["config"] for w in wasm] == [{"words": ["x", "y"]}, {"on": True}]


def test_shell_completion_script_and_completions():
    import os
    import subprocess
    import sys

    extctl_bin = Path(sys.executable).parent / "extctl"
    script = subprocess.run([str(extctl_bin)], env={**os.environ,
                                                    "_EXTCTL_COMPLETE": "bash_source"},
                            capture_output=True, text=True, timeout=30)
    assert script.returncode == 0
    assert "_extctl_completion" in script.stdout and "complete " in script.stdout
    words = subprocess.run([str(extctl_bin)], env={
        **os.environ, "_EXTCTL_COMPLETE": "bash_complete", "COMP_WORDS": "extctl ge",
        "COMP_CWORD": "1"}, capture_output=True, text=True, timeout=30)
    assert "plain,gen" in words.stdout.split()


def test_new_reports_json(tmp_path):
    import json

    result = CliRunner().invoke(cli, ["new", "wasm", "w", "-C", str(tmp_path), "--output",
                                      "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["template"] == "wasm-wat" and report["path"] == str(tmp_path / "w")
    assert "filter.wat" in report["files"] and "envoy-configs/gateway.yaml" in report["files"]


def test_every_options_environment_variable_is_named_after_its_flag():
    """EXTCTL_<COMMAND>_<OPTION> comes from the parameter's name: it must be the flag's."""
    import click

    def options(group, prefix):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from options(command, (*prefix, name))
                continue
            for param in command.params:
                if isinstance(param, click.Option) and not param.hidden:
                    yield (*prefix, name), param

    mismatched = []
    for path, param in options(cli, ()):
        flag = next(o for o in param.opts if o.startswith("--"))
        if param.name != flag[2:].replace("-", "_"):
            mismatched.append((" ".join(path), flag, param.name))
    assert mismatched == []


def test_gen_gateway_names_the_policy_after_the_class_by_default():
    result = CliRunner().invoke(cli, ["gen", "gateway", "tests.helpers.procs:FullDuplexRedact",
                                      "--route",
                                      "r", "--uds", "/var/run/extproc/x.sock"])
    assert result.exit_code == 0, result.output
    assert "name: full-duplex-redact\n" in result.output
    assert "name: full-duplex-redact-extproc\n" in result.output  # the Backend


def test_dev_without_envoy_fails_before_starting_anything(tmp_path, monkeypatch):
    started = tmp_path / "started"
    (tmp_path / "noenvoy_app.py").write_text(
        "import extproc, pathlib\n"
        "class App(extproc.Processor):\n"
        "    @classmethod\n"
        "    async def on_startup(cls):\n"
        f"        pathlib.Path({str(started)!r}).write_text('yes')\n"
        "    async def on_request_headers(self, headers):\n"
        "        return None\n")
    monkeypatch.setenv("EXTCTL_ENVOY_BINARY", str(tmp_path / "missing-envoy"))
    result = CliRunner().invoke(cli, ["dev", "noenvoy_app:App", "--app-dir", str(tmp_path),
                                      "--port", "0"])
    assert result.exit_code == 5, result.output
    assert result.output.count("\n") == 1 and "EXTCTL_ENVOY_BINARY" in result.output
    assert not started.exists()


def test_gen_to_a_path_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(cli, ["gen", "envoy", "-o", str(blocker / "envoy.yaml")])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and "cannot write" in result.output
    assert blocker.read_text() == "not a directory"


def test_dev_live_view_lists_exactly_what_the_hooks_changed(extctl):
    import json

    proc = extctl("dev", "tests.helpers.procs:Rewrite", "--port", "0", "--output", "json")
    port_match, _ = wait_for_line(proc, r"try: curl -i http://127\.0\.0\.1:(\d+)/")
    port = int(port_match.group(1))
    http(port, "/p", headers={"x-internal": "drop", "x-multi": "first"})
    line, _ = wait_for_line(proc, r"^\{.*\}$", view=True)
    http(port, "/", headers={"x-deny": "1"})
    denied, _ = wait_for_line(proc, r"^\{.*\}$", view=True)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    view = json.loads(line.group(0))
    assert (view["method"], view["path"], view["status"]) == ("GET", "/p", 200)
    assert view["sent"] == ["request_headers", "response_headers"]
    request, response = view["hooks"]
    assert (request["phase"], request["outcome"]) == ("request_headers", "ok")
    assert sorted(request["set"]) == ["x-path", "x-replaced"]
    assert request["add"] == ["x-multi"] and request["remove"] == ["x-internal"]
    assert response["phase"] == "response_headers"
    assert sorted(response["set"]) == ["x-processed-by", "x-request-path"]
    assert "add" not in response and "body" not in request
    refused = json.loads(denied.group(0))
    assert (refused["status"], refused["sent"]) == (403, ["request_headers"])
    assert refused["hooks"][0]["immediate_response"] == 403


def test_dev_text_live_view_lists_set_added_and_removed_headers(extctl):
    proc = extctl("dev", "tests.helpers.procs:Rewrite", "--port",
                  "0")  # --output text is the default
    port_match, _ = wait_for_line(proc, r"try: curl -i http://127\.0\.0\.1:(\d+)/")
    http(int(port_match.group(1)), "/p", headers={"x-internal": "drop", "x-multi": "first"})
    wait_for_line(proc, r"^GET /p -> 200 in [\d.]+ ms \(sent: request_headers, "
                         r"response_headers\)$", view=True)
    request, _ = wait_for_line(proc, r"^  request_headers [\d.]+ ms: (.*)$", view=True)
    response, _ = wait_for_line(proc, r"^  response_headers [\d.]+ ms: (.*)$", view=True)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)

    def changes(line: re.Match[str]) -> dict[str, list[str]]:
        parts = [part.split(" ", 1) for part in line.group(1).split("; ")]
        return {what: sorted(names.split(", ")) for what, names in parts}

    assert changes(request) == {"set": ["x-path", "x-replaced"], "add": ["x-multi"],
                                "remove": ["x-internal"]}
    assert changes(response) == {"set": ["x-processed-by", "x-request-path"]}


def test_dev_quiet_prints_no_live_view(extctl):
    import urllib.request

    proc = extctl("dev", "tests.helpers.procs:Rewrite", "--port", "0", "--quiet")
    port_match, lines = wait_for_line(proc, r"try: curl -i http://127\.0\.0\.1:(\d+)/")
    (metrics,) = [line.split()[1] for line in lines if line.startswith("metrics: ")]
    assert http(int(port_match.group(1)), "/p").status == 200
    # Until the stream has ended: counted as it ends, just before a view would print it.
    deadline = time.monotonic() + 10
    while True:
        text = urllib.request.urlopen(metrics, timeout=5).read().decode()
        if sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("grpc_server_handled_total{")) >= 1:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out == ""  # stdout carries the live view alone
    assert "stopped; removed " in err


def test_gen_envoy_writes_the_clusters_wasm_modules_call_out_to():
    import yaml

    result = CliRunner().invoke(cli, [
        "gen", "envoy", "--upstream", "127.0.0.1:8080", "--cluster", "auth=127.0.0.1:9000",
        "--grpc-cluster", "logs=collector.example:4317", "--format", "json"])
    assert result.exit_code == 0, result.output
    clusters = {c["name"]: c for c in yaml.safe_load(result.output)["static_resources"]["clusters"]}
    assert set(clusters) == {"upstream", "auth", "logs"}
    options_key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    assert "typed_extension_protocol_options" not in clusters["auth"]
    assert "http2_protocol_options" in clusters["logs"]["typed_extension_protocol_options"][
        options_key]["explicit_http_config"]
    assert clusters["auth"]["type"] == "STATIC" and clusters["logs"]["type"] == "STRICT_DNS"
    endpoint = clusters["auth"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1",
                                                                  "port_value": 9000}


@pytest.mark.parametrize(("args", "message"), [
    (["--cluster", "auth"], "cluster 'auth': give NAME=HOST:PORT"),
    (["--cluster", "upstream=127.0.0.1:1"], "cluster name 'upstream' is the generated config's"),
    (["--cluster", "a b=127.0.0.1:1"], "cluster name 'a b': use letters"),
    (["--cluster", "a=127.0.0.1:1", "--grpc-cluster", "a=127.0.0.1:2"],
     "cluster 'a' is given twice"),
    (["--grpc-cluster", "a=127.0.0.1"], "cluster a"),
])
def test_bad_clusters_are_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(cli, ["gen", "envoy", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


def test_dev_gives_a_wasm_module_the_grpc_cluster_it_streams_to(extctl, tmp_path):
    import wasmtime

    from tests.helpers.common import ROOT
    from tests.helpers.wasm_modules import GrpcServer

    module = tmp_path / "streams.wasm"
    module.write_bytes(wasmtime.wat2wasm((ROOT / "tests/helpers/wat/grpc_stream.wat").read_text()))
    server = GrpcServer()
    server.server.start()
    try:
        proc = extctl("dev", "--port", "0", "--wasm", str(module), "--grpc-cluster",
                      f"grpc=127.0.0.1:{server.port}")
        port_match, _ = wait_for_line(proc, r"try: curl -i http://127\.0\.0\.1:(\d+)/")
        reply = http(int(port_match.group(1)), "/echo")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        server.server.stop(0)
    assert proc.returncode == 0
    # the filter streamed the path to the server and went on once the stream closed OK
    assert reply.upstream_headers()["x-grpc-close"] == ["0"]
    assert [call["messages"] for call in server.calls] == [[b"/echo"]]
