"""Proxy-wasm ABI 0.1.0, which Envoy 1.40 still loads and runs: its own host functions
(proxy_get_configuration, proxy_continue_request/response, proxy_clear_route_cache), headers
callbacks without end_of_stream, a missing header read as an empty value; what Envoy refuses
(another ABI's host functions, a callback of another signature) refused the same way.
tests/helpers/wat/abi_0_1_0.wat through the emulator and through Envoy."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as wasm_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import wrappers_pb2

from extctl.config import Deployment, WasmModule
from extctl.errors import EnvoyError
from extctl.testing import EnvoyProcess
from tests.helpers.common import http
from tests.helpers.wasm_modules import WAT
from wasm import ProxyWasm
from wasm.errors import MissingImports, UnsupportedAbi

SOURCE = (WAT / "abi_0_1_0.wat").read_text()
THREE_PARAMETERS = SOURCE.replace(
    "(param $context i32) (param $headers i32) (result i32)\n    (global.set $at",
    "(param $context i32) (param $headers i32) (param $end i32) (result i32)\n"
    "    (global.set $at")

# What Envoy 1.40 adds to a response with plugin configuration "plugin-cfg" and VM
# configuration "vm-cfg" (read through Envoy): every call answered OK, a missing header as
# an empty value, the plugin's configuration while creating the root context and configuring,
# the VM's otherwise.
ENVOY_ANSWER = {
    "x-status": "00,00,00,00,00,00,00,00,00,",
    "x-create-config": "[plugin-cfg]",
    "x-vm-config": "[vm-cfg]",
    "x-plugin-config": "[plugin-cfg]",
    "x-request-config": "[vm-cfg]",
}

# Modules Envoy refuses: the source, what the emulator raises, and the reason Envoy logs.
REFUSED = {
    "0.1.0 importing proxy_continue_stream": (
        SOURCE.replace('(import "env" "proxy_clear_route_cache"',
                       '(import "env" "proxy_continue_stream" (func (param i32) (result i32)))\n'
                       '  (import "env" "proxy_clear_route_cache"'),
        (MissingImports, r"does not provide: env\.proxy_continue_stream"),
        "Failed to load Wasm module due to a missing import: env.proxy_continue_stream"),
    "0.2.1 importing proxy_get_configuration": (
        SOURCE.replace("proxy_abi_version_0_1_0", "proxy_abi_version_0_2_1"),
        (MissingImports, r"does not provide: env\.proxy_get_configuration"),
        "Failed to load Wasm module due to a missing import: env.proxy_get_configuration"),
    "0.1.0 with 0.2's request headers callback": (
        THREE_PARAMETERS,
        (UnsupportedAbi, r"Bad function signature for: proxy_on_request_headers, want: i32 "
                         r"i32 -> i32, but the module exports: i32 i32 i32 -> i32"),
        "Bad function signature for: proxy_on_request_headers, want: i32 i32 -> i32, but the "
        "module exports: i32 i32 i32 -> i32"),
    "the first ABI export decides": (
        THREE_PARAMETERS.replace('(func (export "proxy_abi_version_0_1_0"))',
                                 '(func (export "proxy_abi_version_0_1_0")) '
                                 '(func (export "proxy_abi_version_0_2_1"))'),
        (UnsupportedAbi, r"\(ABI 0_1_0\): Bad function signature for: proxy_on_request_headers"),
        "Bad function signature for: proxy_on_request_headers"),
}


def _binary(source: str) -> bytes:
    return bytes(wasmtime.wat2wasm(source))


def _ours(pairs) -> dict[str, str]:
    return {k: v for k, v in pairs if k in ENVOY_ANSWER}


def test_an_abi_0_1_0_filter_runs_as_in_envoy():
    plugin = ProxyWasm(_binary(SOURCE), plugin_configuration="plugin-cfg",
                       vm_configuration="vm-cfg")
    assert plugin.abi == "0_1_0"
    result = plugin.request()
    assert _ours(result.response_headers) == ENVOY_ANSWER
    assert result.route_cache_cleared == 1  # proxy_clear_route_cache


def _lookup(abi: str, status: int, size: int) -> bytes:
    """A module whose request headers callback looks up a header the request lacks and traps
    unless the host answers ``status`` with a value of ``size`` bytes."""
    end_of_stream = "" if abi == "0_1_0" else "(param i32)"
    return _binary(f"""(module
      (import "env" "proxy_get_header_map_value"
        (func $get (param i32 i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 0) "missing")
      (global $heap (mut i32) (i32.const 1024))
      (func (export "proxy_abi_version_{abi}"))
      (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
        (local $at i32) (local.set $at (global.get $heap))
        (global.set $heap (i32.add (global.get $heap) (local.get $n))) (local.get $at))
      (func (export "proxy_on_context_create") (param i32 i32))
      (func (export "proxy_on_request_headers") (param i32 i32) {end_of_stream} (result i32)
        (i32.store (i32.const 24) (i32.const 77))
        (i32.store (i32.const 28) (i32.const 77))
        (if (i32.ne (call $get (i32.const 0) (i32.const 0) (i32.const 7) (i32.const 24)
                              (i32.const 28)) (i32.const {status}))
          (then unreachable))
        (if (i32.ne (i32.load (i32.const 28)) (i32.const {size})) (then unreachable))
        (i32.const 0)))""")


def test_a_missing_header_is_an_empty_value_in_0_1_0_and_not_found_after():
    assert ProxyWasm(_lookup("0_1_0", 0, 0)).request().status == 200
    assert ProxyWasm(_lookup("0_2_1", 1, 77)).request().status == 200


@pytest.mark.parametrize("case", REFUSED)
def test_the_emulator_refuses_what_envoy_refuses(case):
    source, (error, message), _ = REFUSED[case]
    with pytest.raises(error, match=message):
        ProxyWasm(_binary(source))


def test_an_earlier_0_2_1_export_makes_it_a_0_2_1_module():
    source = THREE_PARAMETERS.replace(
        '(func (export "proxy_abi_version_0_1_0"))',
        '(func (export "proxy_abi_version_0_2_1")) (func (export "proxy_abi_version_0_1_0"))')
    # imports of 0.1.0's functions: refused as a 0.2.1 module's, not for its callbacks
    with pytest.raises(MissingImports, match="proxy_get_configuration"):
        ProxyWasm(_binary(source))


# Through Envoy


def _bootstrap(module: Path, vm_configuration: str = "") -> object:
    """Envoy's config with ``module`` as its Wasm filter (plugin configuration "plugin-cfg")
    and the VM configuration given (which extctl's config does not set)."""
    bootstrap = Deployment.build(None, upstreams=["127.0.0.1:9"], wasm=[WasmModule(
        "abi", file=str(module), text="plugin-cfg")]).envoy_bootstrap()
    for listener in bootstrap.static_resources.listeners:
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                manager = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(manager)
                for http_filter in manager.http_filters:
                    if http_filter.name.startswith("envoy.filters.http.wasm"):
                        wasm = wasm_filter_pb2.Wasm()
                        http_filter.typed_config.Unpack(wasm)
                        wasm.config.vm_config.configuration.Pack(
                            wrappers_pb2.StringValue(value=vm_configuration))
                        http_filter.typed_config.Pack(wasm)
                network_filter.typed_config.Pack(manager)
    return bootstrap


@pytest.mark.envoy
def test_envoy_runs_an_abi_0_1_0_filter_as_the_emulator_does(tmp_path):
    module = tmp_path / "abi.wasm"
    module.write_bytes(_binary(SOURCE))
    with EnvoyProcess(_bootstrap(module, "vm-cfg"), tmp_path / "envoy") as envoy:
        replies = [http(envoy.port, "/") for _ in range(2)]
    emulator = ProxyWasm(module, plugin_configuration="plugin-cfg", vm_configuration="vm-cfg")
    for reply in replies:
        assert _ours(reply.headers.items()) == ENVOY_ANSWER
        assert _ours(emulator.request().response_headers) == ENVOY_ANSWER


@pytest.mark.envoy
@pytest.mark.parametrize("case", REFUSED)
def test_envoy_refuses_these_modules(tmp_path, case):
    source, _, reason = REFUSED[case]
    module = tmp_path / "abi.wasm"
    module.write_bytes(_binary(source))
    envoy = EnvoyProcess(_bootstrap(module), tmp_path / "envoy")
    with pytest.raises(EnvoyError, match="Envoy exited with 1 at start"):
        envoy.start()
    assert reason in envoy.log()
