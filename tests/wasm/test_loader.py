"""Loading a module as Envoy 1.40 (V8, proxy-wasm-cpp-host) does: imports named any number of
times and in any order (Go's own compiler imports fd_write twice), imported memories and
tables, start functions, several memories, every WASI call Envoy answers; and refusing what
Envoy refuses or crashes on. Each shape runs through the emulator and through a real Envoy."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest
import wasmtime

from extctl.config import Deployment, WasmModule
from extctl.errors import EnvoyError
from extctl.testing import EnvoyProcess, Exchange, compare_with_envoy
from tests.helpers.wasm_modules import _wat
from wasm import ProxyWasm
from wasm.errors import MissingImports, UnsupportedAbi, WasmTrap

# What Envoy 1.40 answers each call of wasi_calls.wat (read through Envoy).
WASI_ANSWERS = (
    "00,=06000000,08,08,00,=06000000,08,52,00,=eeeeeeeeeeeeeeee,00,00,"
    "=000000000000000040000000000000000000000000000000,08,52,00,08,00,=0000000000000000,00,"
    "=eeeeeeee,00,=0000000000000000,00,=eeeeeeee,00,00,58,00,=0100000000000000,58,00,00,08,"
    "00,08,00,08,00,08,52,20,=00000000,58,08,00,08,00,=0000000000000000,08,58,58,58,58,"
    "=00000000,58,58,58,58,58,=0000000000000000,58,=000000000000eeee,58,=00000000,58,00,"
    "=eeeeeeee,00,28,00,00,=00000000,44,=eeeeeeee,08,52,58,08,after-exit")


def _shape(body: str = "", *, imports: str = "", memory: str = '(memory (export "memory") 1)'
           ) -> bytes:
    """A minimal proxy-wasm module of a given shape (what matters is whether it loads)."""
    return bytes(wasmtime.wat2wasm(f"""(module
      (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
      {imports} {memory}
      (global $heap (mut i32) (i32.const 1024))
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
        (local $at i32) (local.set $at (global.get $heap))
        (global.set $heap (i32.add (global.get $heap) (local.get $n))) (local.get $at))
      (func (export "proxy_on_context_create") (param i32 i32))
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
      (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (drop (call $log (i32.const 2) (i32.const 0) (i32.const 0))) (i32.const 0))
      {body}
      (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1)))"""))


# Shapes Envoy refuses or crashes on: the module, what the emulator raises, and Envoy's answer
# (its exit status at start, and the reason it logs; or "request" for a crash at the first
# host call).
REFUSED = {
    "global import": (
        _shape(imports='(import "env" "offset" (global i32))'),
        (MissingImports, r"does not provide: env\.offset$"),
        (1, "Failed to load Wasm module due to a missing import: env.offset")),
    "two imported memories": (
        _shape(imports='(import "env" "a" (memory 1)) (import "env" "b" (memory 1))', memory=""),
        (MissingImports, r"env\.b \(a second memory import: Envoy 1\.40 crashes"),
        (-11, "")),
    "two imported tables": (
        _shape(imports='(import "env" "a" (table 1 funcref)) (import "env" "b" (table 1 funcref))'),
        (MissingImports, r"env\.b \(a second table import: Envoy 1\.40 crashes"),
        (-11, "")),
    "start function calling proxy_log": (
        _shape('(func $start (drop (call $log (i32.const 2) (i32.const 0) (i32.const 0)))) '
               '(start $start)'),
        (WasmTrap, r"start function called env\.proxy_log: Envoy 1\.40 crashes"),
        (-11, "")),
    "WASI's own path_link signature": (
        _shape(imports='(import "wasi_snapshot_preview1" "path_link" '
                       '(func (param i32 i32 i32 i32 i32 i32 i32) (result i32)))'),
        (MissingImports, r"path_link \(declared with another signature"),
        (1, "import type mismatch: wasi_snapshot_preview1.path_link")),
    "no memory": (
        _shape(memory="(memory 1)"),
        (UnsupportedAbi, "neither exports nor imports a memory"),
        "request"),
}


def test_a_host_function_imported_twice_loads_and_both_imports_work():
    """Go 1.24's wasip1 output imports fd_write twice (the runtime's and syscall's)."""
    result = ProxyWasm(_wat("duplicate_imports.wat")).request()
    assert result.response_header("x-dup") == "yes"
    assert result.response_header("x-writes") == "0,0"
    assert [line.message for line in result.logs] == ["runtime", "syscall"]


def test_imported_memory_and_table_and_a_start_function():
    result = ProxyWasm(_wat("imported_memory.wat")).request()
    assert result.response_header("x-started") == "yes"
    assert result.response_header("x-indirect") == "table"


def test_data_goes_to_the_last_exported_memory_whatever_its_name():
    result = ProxyWasm(_wat("memories.wat")).request(headers={"x-user": "ada"})
    assert result.response_header("x-memory") == "heap"
    assert result.response_header("x-user") == "ada"  # written by the host into "heap"


def test_every_wasi_call_answers_as_envoy_does():
    result = ProxyWasm(_wat("wasi_calls.wat")).request()
    assert result.response_header("x-wasi") == WASI_ANSWERS
    assert [(line.level.name, line.message) for line in result.logs] == [
        ("INFO", "hello"), ("ERROR", "world")]


def test_a_trap_after_proc_exit_says_so():
    """Envoy returns from proc_exit (wasi_calls.wat carries on after it); a Rust or Go exit
    then runs into `unreachable`."""
    exiting = _shape('(func (export "proxy_on_response_headers") (param i32 i32 i32) '
                     '(result i32) (call $exit (i32.const 3)) unreachable)',
                     imports='(import "wasi_snapshot_preview1" "proc_exit" '
                             '(func $exit (param i32)))')
    with pytest.raises(WasmTrap, match=r"unreachable.*after proc_exit\(3\)"):
        ProxyWasm(exiting).request()


@pytest.mark.parametrize("shape", REFUSED)
def test_the_emulator_refuses_what_envoy_refuses(shape):
    module, (error, message), _ = REFUSED[shape]
    with pytest.raises(error, match=message):
        ProxyWasm(module)


# Through Envoy


def _file(tmp_path: Path, module: bytes) -> Path:
    path = tmp_path / "module.wasm"
    path.write_bytes(module)
    return path


@pytest.mark.envoy
@pytest.mark.parametrize("fixture", ["duplicate_imports.wat", "imported_memory.wat",
                                     "memories.wat", "wasi_calls.wat"])
def test_envoy_runs_these_shapes_as_the_emulator_does(tmp_path, fixture):
    module = _file(tmp_path, _wat(fixture))
    assert compare_with_envoy(module, requests=[
        Exchange(headers={"x-user": "ada"}), Exchange(method="POST", body=b"x")]) == []


@pytest.mark.envoy
@pytest.mark.parametrize("shape", REFUSED)
def test_envoy_refuses_or_crashes_on_what_the_emulator_refuses(tmp_path, shape):
    module, _, envoy_answer = REFUSED[shape]
    bootstrap = Deployment.build(None, upstreams=["127.0.0.1:9"], wasm=[WasmModule(
        "shape", file=str(_file(tmp_path, module)))]).envoy_bootstrap()
    envoy = EnvoyProcess(bootstrap, tmp_path / "envoy")
    if envoy_answer == "request":  # loads, then dies at the first host call
        with envoy:
            connection = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
            with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
                connection.request("GET", "/")
                connection.getresponse()
            assert envoy.process is not None and envoy.process.wait(10) == -11
        return
    status, reason = envoy_answer
    with pytest.raises(EnvoyError, match=f"Envoy exited with {status} at start"):
        envoy.start()
    assert reason in envoy.log()
