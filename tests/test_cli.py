"""``extctl dev`` end to end, and CLI conventions every command keeps."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import http

from extctl.cli import cli


def _wait_for_line(proc, pattern: str, timeout: float = 30) -> tuple[re.Match[str], list[str]]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        match = re.search(pattern, line)
        if match:
            return match, lines
    raise AssertionError(f"no line matching {pattern!r}; got {lines} / "
                         f"{proc.stderr.read() if proc.poll() is not None else ''}")


def test_dev_runs_the_demo_through_a_real_envoy_and_cleans_up(extctl):
    proc = extctl("dev", "--port", "0")
    workdir_match, _ = _wait_for_line(proc, r"workdir: (\S+)")
    workdir = Path(workdir_match.group(1))
    port_match, lines = _wait_for_line(proc, r"try: curl -i http://127\.0\.0\.1:(\d+)/")
    port = int(port_match.group(1))
    assert workdir.exists() and (workdir / "extproc.sock").exists()
    assert any("phases: request_headers, response_body" in line for line in lines)
    ok = http(port, "/hello", headers={"x-echo-chunks": '["a secret"]'})
    denied = http(port, "/", headers={"x-deny": "1"})
    echoed = http(port, "/json")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert ok.status == 200 and ok.body == b"a ******"
    assert denied.status == 403 and denied.headers["x-denied-by"] == "extkit-demo"
    assert ["x-extkit-demo", "request seen"] in echoed.json()["headers"]
    assert not workdir.exists()
    assert "[envoy]" in err  # Envoy's log is shown
    assert "extctl.upstream" in err  # and the upstream's


def test_dev_with_a_user_processor(extctl):
    proc = extctl("dev", "procs:Rewrite", "--port", "0")
    port_match, _ = _wait_for_line(proc, r"try: curl -i http://127\.0\.0\.1:(\d+)/")
    reply = http(int(port_match.group(1)), "/p")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert reply.upstream_headers()["x-path"] == ["/p"]


def test_dev_port_in_use_exits_5_with_one_line(extctl):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = extctl("dev", "--port", str(taken.getsockname()[1]))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 5
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: Envoy exited with 1 at start: ")
    assert "Address already in use" in last


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    assert f"extctl {command}" in result.output


def test_version_and_usage_errors():
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).exit_code == 0
    result = runner.invoke(cli, ["serve"])
    assert result.exit_code == 2
    assert "Missing argument" in result.output
