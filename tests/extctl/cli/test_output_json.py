"""``--output json``: stdout is JSON alone, for ``| jq``; banners, progress, logs and errors go
to stderr. Every command that takes ``--output``, run as users run it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.common import ROOT, http
from tests.helpers.oci import PASSWORD, USER, Registry


def _extctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "extctl", *args], input=stdin,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _json(done: subprocess.CompletedProcess[str], exit_code: int = 0) -> Any:
    assert done.returncode == exit_code, done.stderr
    return json.loads(done.stdout)  # the whole of stdout, nothing before or after


class _Pipes:
    """stdout and stderr of a running ``extctl``, each read line by line on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=lambda s=stream, lines=lines: lines.extend(s),
                                          daemon=True)
                         for stream, lines in ((proc.stdout, self.out), (proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    def wait_for(self, lines: list[str], pattern: str, count: int = 1) -> re.Match[str]:
        """The ``count``-th line of ``lines`` (``self.out`` or ``self.err``) matching."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [m for m in (re.search(pattern, line) for line in list(lines)) if m]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r}; stdout: {self.out}; stderr: {self.err}")

    def finish(self) -> int:
        code = self.proc.wait(30)
        for reader in self._readers:
            reader.join(10)
        return code


@pytest.mark.envoy
def test_dev_health_and_doctor_print_only_json_on_stdout(extctl):
    proc = extctl("dev", "tests.helpers.procs:Rewrite", "--port", "0", "--output", "json")
    pipes = _Pipes(proc)
    socket_path = pipes.wait_for(pipes.err, r"^processor: Rewrite on unix:(\S+) ").group(1)
    admin = pipes.wait_for(pipes.err, r"^envoy: http://127\.0\.0\.1:\d+ \(admin http://(\S+)\)")
    port = int(pipes.wait_for(pipes.err, r"^try: curl -i http://127\.0\.0\.1:(\d+)/").group(1))
    assert http(port, "/p").status == 200
    assert http(port, "/", headers={"x-deny": "1"}).status == 403
    pipes.wait_for(pipes.out, r"^\{", count=2)  # one view per request

    health = _json(_extctl("health", "--uds", socket_path, "--output", "json"))
    assert health == [{"address": socket_path, "status": "SERVING", "detail": ""}]
    doctor = _extctl("doctor", "--admin", f"http://{admin.group(1)}",
                     "tests.helpers.procs:Rewrite", "--output", "json")
    assert _json(doctor)["ok"] is True

    proc.send_signal(signal.SIGINT)
    assert pipes.finish() == 0
    assert [(view["path"], view["status"]) for view in map(json.loads, pipes.out)] == [
        ("/p", 200), ("/", 403)]
    assert "Ctrl-C stops everything.\n" in pipes.err
    assert any(line.startswith("stopped; removed ") for line in pipes.err)


def test_registry_and_project_commands_print_only_json_on_stdout(registry: Registry,
                                                                 wat_module, tmp_path):
    auth = ("--username", USER, "--password-stdin", "--ca-file", str(registry.ca_file))
    ref = f"oci://{registry.host}/json/only:v1"
    pushed = _json(_extctl("push", str(wat_module), ref, *auth, "--output", "json",
                           stdin=PASSWORD))
    digest = pushed["digest"]
    out = tmp_path / "pulled.wasm"
    pulled = _json(_extctl("pull", ref, "-o", str(out), "--cache-dir", str(tmp_path / "c"),
                           *auth, "--output", "json", stdin=PASSWORD))
    assert pulled["digest"] == digest
    remote = _json(_extctl("inspect", ref, *auth, "--output", "json", stdin=PASSWORD))
    assert remote["sha256"] == _json(_extctl("inspect", str(out), "--output", "json"))["sha256"]
    verified = _json(_extctl("verify", str(out), "--sha256", pulled["sha256"], "--output",
                             "json"))
    assert verified["ok"] is True
    checked = _json(_extctl("check", ref, *auth, "--output", "json", stdin=PASSWORD))
    assert checked["accepted"] is True
    rejected = tmp_path / "manifest.json"
    rejected.write_text(json.dumps({"schemaVersion": 2, "layers": []}))
    assert _json(_extctl("check", str(rejected), "--output", "json"), 9)["accepted"] is False
    for template in (("extproc", "guard"), ("wasm", "tagger")):
        created = _json(_extctl("new", *template, "-C", str(tmp_path), "--output", "json"))
        assert Path(created["path"]).is_dir()
    # A failure: nothing on stdout, one line on stderr.
    missing = _extctl("pull", f"oci://{registry.host}/json/none:v1", "-o", str(out), *auth,
                      "--output", "json", stdin=PASSWORD)
    assert missing.returncode == 8 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and missing.stderr.startswith("error: ")
