"""``extctl pull`` of a tag after the tag was pushed again: the new module, as docker, oras and
skopeo give; a digest, or ``--pull-policy IfNotPresent``, is served from the cache without the
registry (its own registry here, stopped halfway)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import wasmtime

from tests.helpers.common import ROOT
from tests.helpers.oci import PASSWORD, USER, Registry, start_registry


def _extctl(reg: Registry, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extctl", *args, "--username", USER, "--password-stdin",
         "--ca-file", str(reg.ca_file), "--timeout", "5"],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
        env={**os.environ, "EXTCTL_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)})


def _pull(reg: Registry, cache: Path, ref: str, out: Path,
          *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    done = _extctl(reg, cache, "pull", ref, "-o", str(out), "--output", "json", *args)
    return done, json.loads(done.stdout) if done.returncode == 0 else {}


def test_pull_of_a_tag_pushed_again_gives_the_new_module(tmp_path, test_ca, wat_module):
    old = wat_module.read_bytes()
    new_module = tmp_path / "new.wasm"
    new_module.write_bytes(wasmtime.wat2wasm('(module (func (export "v2")))'))
    new = new_module.read_bytes()
    cache, out = tmp_path / "cache", tmp_path / "pulled.wasm"
    reg = start_registry(tmp_path / "reg", tls=test_ca)
    tag = f"oci://{reg.host}/filters/moving:v1"
    try:
        assert _extctl(reg, cache, "push", str(wat_module), tag).returncode == 0
        done, first = _pull(reg, cache, tag, out)
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == old and first["from_cache"] is False
        pushed = _extctl(reg, cache, "push", str(new_module), tag, "--output", "json")
        assert pushed.returncode == 0, pushed.stderr
        new_digest = json.loads(pushed.stdout)["digest"]
        done, second = _pull(reg, cache, tag, out)
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == new, "the tag's old module was served from the cache"
        assert second["digest"] == new_digest and second["from_cache"] is False
        assert second["sha256"] == hashlib.sha256(new).hexdigest()
        old_by_digest = f"oci://{reg.host}/filters/moving@{first['digest']}"
    finally:
        reg.stop()
    # Registry down: a digest comes from the cache, and a tag too when asked to; a tag by
    # default must be resolved, so it fails (exit 10) and writes nothing.
    done, by_digest = _pull(reg, cache, old_by_digest, tmp_path / "by-digest.wasm")
    assert done.returncode == 0, done.stderr
    assert by_digest["from_cache"] is True and (tmp_path / "by-digest.wasm").read_bytes() == old
    done, cached = _pull(reg, cache, tag, tmp_path / "cached.wasm",
                         "--pull-policy", "IfNotPresent")
    assert done.returncode == 0, done.stderr
    assert cached["from_cache"] is True and (tmp_path / "cached.wasm").read_bytes() == new
    done, _ = _pull(reg, cache, tag, tmp_path / "offline.wasm")
    assert done.returncode == 10
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert not (tmp_path / "offline.wasm").exists()
