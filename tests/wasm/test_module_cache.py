"""Compiled modules reused: within a process, and on disk across processes (wasm.compiled),
never deserializing a file this cache did not write for that module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.wasm_modules import _module, _wat
from wasm import ProxyWasm, compiled

# A fresh process loading a module: where the compiled module came from, and that it works.
LOAD = """
import sys
from wasm import ProxyWasm
for path in sys.argv[1:]:
    plugin = ProxyWasm(path)
    print(plugin.vm.origin, plugin.request().response_header("x-module"))
"""


def _tagged(tag: str) -> bytes:
    """A module adding x-module: ``tag`` to responses (each tag its own module)."""
    return _module("(i32.const 0)", imports="""
        (import "env" "proxy_add_header_map_value"
          (func $add (param i32 i32 i32 i32 i32) (result i32)))""", extra=f"""
        (data (i32.const 100) "x-module")
        (data (i32.const 120) "{tag}")
        (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
          (drop (call $add (i32.const 2) (i32.const 100) (i32.const 8) (i32.const 120)
                           (i32.const {len(tag)})))
          (i32.const 0))""")


@pytest.fixture
def modules(tmp_path: Path) -> dict[str, Path]:
    found = {}
    for tag in ("alpha", "beta"):
        found[tag] = tmp_path / f"{tag}.wasm"
        found[tag].write_bytes(_tagged(tag))
    return found


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("EXTCTL_WASM_CACHE", str(directory))
    return directory


def _load(*paths: Path, env: dict[str, str] | None = None,
          as_reader: bool = False) -> list[str]:
    """Load each module in one fresh process: "origin tag" per module. ``as_reader``: without
    the power to write where the file mode says no (root's is dropped)."""
    command = [sys.executable, "-c", LOAD, *map(str, paths)]
    if as_reader and os.geteuid() == 0:
        command = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})},
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.cwasm"))


def test_a_second_process_deserializes_what_the_first_compiled(cache, modules):
    assert _load(modules["alpha"]) == ["compiled alpha"]
    [written] = _files(cache)
    assert written.stat().st_mode & 0o777 == 0o600
    assert _load(modules["alpha"], modules["beta"]) == ["disk alpha", "compiled beta"]
    assert _load(modules["alpha"], modules["beta"]) == ["disk alpha", "disk beta"]
    assert len(_files(cache)) == 2


def test_a_process_reuses_the_module_it_compiled(cache, tmp_path):
    module = _tagged("gamma")
    compiled.clear_memory()
    first = ProxyWasm(module)
    second = ProxyWasm(module)
    # Another fuel setting is another engine, compiled separately.
    unlimited = ProxyWasm(module, fuel=None)
    assert (first.vm.origin, second.vm.origin, unlimited.vm.origin) == (
        "compiled", "memory", "compiled")
    assert second.request().response_header("x-module") == "gamma"
    assert unlimited.request().response_header("x-module") == "gamma"
    compiled.clear_memory()
    assert ProxyWasm(module).vm.origin == "disk"


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x7fELF not a module at all" * 100)


def _others(path: Path) -> None:
    """The valid file of another module, under this module's name."""
    [other] = [p for p in _files(path.parent) if p != path]
    path.write_bytes(other.read_bytes())


def _writable_by_others(path: Path) -> None:
    path.chmod(0o666)


@pytest.mark.parametrize("spoil", [_flip_last_byte, _truncate, _garbage, _others,
                                   _writable_by_others])
def test_a_spoiled_cache_file_is_compiled_afresh_and_replaced(cache, modules, spoil):
    _load(modules["beta"])
    beta = _files(cache)
    assert _load(modules["alpha"]) == ["compiled alpha"]
    [alpha] = set(_files(cache)) - set(beta)
    spoil(alpha)
    assert _load(modules["alpha"]) == ["compiled alpha"]
    assert _load(modules["alpha"]) == ["disk alpha"]  # the file was written again
    assert alpha.stat().st_mode & 0o777 == 0o600


def test_a_read_only_cache_directory_is_read_and_never_required(cache, modules):
    assert _load(modules["alpha"]) == ["compiled alpha"]
    cache.chmod(0o555)
    try:
        assert _load(modules["alpha"], modules["beta"], as_reader=True) == [
            "disk alpha", "compiled beta"]
        assert _load(modules["beta"], as_reader=True) == ["compiled beta"]
    finally:
        cache.chmod(0o755)
    assert len(_files(cache)) == 1
    assert not list(cache.glob(".tmp-*"))


def test_the_cache_lives_in_the_user_cache_directory_and_can_be_turned_off(tmp_path, modules):
    home = {"EXTCTL_WASM_CACHE": "", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert _load(modules["alpha"], env=home) == ["compiled alpha"]
    assert len(_files(tmp_path / "xdg" / "envoy-extkit" / "wasm")) == 1
    off = {"EXTCTL_WASM_CACHE": "off", "XDG_CACHE_HOME": str(tmp_path / "other")}
    assert _load(modules["alpha"], env=off) == ["compiled alpha"]
    assert _load(modules["alpha"], env=off) == ["compiled alpha"]
    assert not (tmp_path / "other").exists()


def test_the_least_recently_used_files_go_past_the_size_limit(cache, monkeypatch):
    compiled.clear_memory()
    ProxyWasm(_tagged("old"))
    [old] = _files(cache)
    os.utime(old, (1, 1))
    ProxyWasm(_tagged("recent"))
    monkeypatch.setattr(compiled, "_DISK_LIMIT", old.stat().st_size * 2 + 1)
    ProxyWasm(_tagged("newest"))
    assert old not in _files(cache) and len(_files(cache)) == 2


def test_a_module_given_as_text_is_cached_as_its_binary(cache):
    text = (Path(__file__).resolve().parents[1] / "helpers" / "wat" / "host_calls.wat"
            ).read_bytes()
    compiled.clear_memory()
    assert ProxyWasm(text).vm.origin == "compiled"
    compiled.clear_memory()
    assert ProxyWasm(_wat("host_calls.wat")).vm.origin == "disk"
