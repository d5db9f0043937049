"""wasm.emulator: proxy-wasm filters run from pytest, no Envoy: each host function's effect,
the templates' filters (WAT and the AssemblyScript SDK), and modules that misbehave."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
import wasmtime
from click.testing import CliRunner

from extctl.cli import cli
from extctl.testing import Exchange, compare_with_envoy
from tests.helpers.wasm_modules import _module
from wasm.abi import LogLevel, MapType, deserialize_map, serialize_map
from wasm.emulator import ProxyWasm
from wasm.errors import MemoryAccess, MissingImports, UnsupportedAbi, WasmTrap

WAT = Path(__file__).resolve().parents[1] / "helpers" / "wat"


def _wat(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((WAT / name).read_text()))


LOG = '(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))'


def test_map_serialisation_round_trips_and_refuses_garbage():
    pairs = [(b":path", b"/"), (b"x-a", b""), (b"x-b", b"v\x00w")]
    assert deserialize_map(serialize_map(pairs)) == pairs
    assert deserialize_map(b"") == []
    with pytest.raises(ValueError):
        deserialize_map(struct.pack("<I", 5))


def test_host_calls_module_headers_body_properties_and_config():
    with ProxyWasm(_wat("host_calls.wat"), plugin_configuration="cfg-1",
                   clock=lambda: 1_234_567_890_123) as plugin:
        result = plugin.request(method="POST", path="/p?q=1", body=[b"ab", b"cd"],
                                headers={"x-copy": "v", "x-remove": "gone", "x-copied": "old"},
                                response_headers={"x-up": "1"})
    assert result.status == 200 and result.upstream_reached
    assert result.request_header("x-copied") == "v"  # replaced, not added
    assert [v for k, v in result.request_headers if k == "x-copied"] == ["v"]
    assert result.request_header("x-remove") is None
    assert result.request_header("x-path") == "/p?q=1"  # from the request.path property
    assert result.request_body == b"prefix:abcd"  # buffered to the end, then changed
    # Envoy's HTTP/1.1 framing: each chunk, then an empty frame that ends the stream.
    assert [(phase, action.name) for phase, action in result.actions] == [
        ("request_headers", "Continue"), ("request_body", "StopIterationAndBuffer"),
        ("request_body", "StopIterationAndBuffer"), ("request_body", "Continue"),
        ("response_headers", "Continue")]
    assert result.response_header("x-up") == "1"  # pairs read and written back intact
    assert result.response_header("x-config") == "cfg-1"
    assert [line.message for line in result.logs] == ["request headers"]
    assert result.logs[0].level == LogLevel.INFO
    assert plugin.shared_data.get(b"time") == (struct.pack("<Q", 1_234_567_890_123), 1)
    assert plugin.metrics.snapshot() == {"requests": 1}


def test_host_calls_module_ticks_shared_data_and_metrics_across_requests():
    plugin = ProxyWasm(_wat("host_calls.wat"))
    assert plugin.tick_period_ms == 1000
    before = plugin.request()
    plugin.tick()
    after = plugin.request()
    assert before.request_header("x-ticked") is None
    assert after.request_header("x-ticked") == "yes"
    assert after.response_header("x-config") == "none"  # empty configuration
    assert plugin.metrics.snapshot() == {"requests": 2}
    # One CAS counter for every key, as in Envoy: time (1), ticked (2), time again (3).
    assert plugin.shared_data.get(b"ticked") == (b"yes", 2)
    assert plugin.shared_data.get(b"time")[1] == 3


@pytest.mark.parametrize(("fixture", "root_id"), [("wat_template_module", ""),
                                                  ("as_template_module", "tmpl-filter")])
def test_template_filters_in_the_emulator(request, fixture, root_id):
    module = request.getfixturevalue(fixture)
    with ProxyWasm(module, plugin_configuration="tagged", root_id=root_id) as plugin:
        passed = plugin.request(path="/a")
        denied = plugin.request(headers={"x-deny": "1"})
    assert passed.status == 200 and passed.response_header("x-filter") == "tagged"
    assert denied.status == 403 and not denied.upstream_reached
    assert denied.local_response is not None
    assert denied.local_response.body == denied.response_body == b"denied by wasm\n"
    assert denied.response_header("x-denied-by") == "wasm"
    # Envoy sends a local reply back through the filter: it tags that too.
    assert denied.response_header("x-filter") == "tagged"


def test_the_sdk_filter_with_an_empty_configuration_and_a_wrong_root_id(as_template_module):
    """The AssemblyScript SDK reads the configuration even when it is empty; the template's
    guard avoids the trap, and a wrong root id fails at start, as in Envoy."""
    with ProxyWasm(as_template_module, root_id="tmpl-filter") as plugin:
        assert plugin.request().response_header("x-filter") == "on"
    with pytest.raises(WasmTrap) as trapped:
        ProxyWasm(as_template_module, root_id="other")
    assert trapped.value.callback in ("proxy_on_context_create", "proxy_on_vm_start")


def test_a_trap_names_the_callback_and_the_next_plugin_runs():
    with pytest.raises(WasmTrap, match="proxy_on_request_headers trapped") as trapped:
        ProxyWasm(_module("(unreachable)")).request()
    assert not trapped.value.fuel_exhausted
    fine = ProxyWasm(_wat("host_calls.wat")).request()
    assert fine.status == 200


def test_a_trapped_plugin_refuses_further_calls():
    plugin = ProxyWasm(_module("(unreachable)"))
    with pytest.raises(WasmTrap):
        plugin.request()
    with pytest.raises(WasmTrap, match="unusable after proxy_on_request_headers trapped"):
        plugin.request()


def test_a_loop_runs_out_of_fuel_quickly_and_the_budget_is_configurable():
    looping = _module("(loop $forever (br $forever)) (i32.const 0)")
    started = time.monotonic()
    with pytest.raises(WasmTrap, match="ran out of fuel after 1000000 instructions") as out:
        ProxyWasm(looping, fuel=1_000_000).request()
    assert out.value.fuel_exhausted and out.value.callback == "proxy_on_request_headers"
    assert time.monotonic() - started < 10
    counted = _module("""(local $i i32)
        (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
                 (br_if $l (i32.lt_u (local.get $i) (i32.const 100000))))
        (i32.const 0)""")
    with pytest.raises(WasmTrap, match="fuel"):
        ProxyWasm(counted, fuel=10_000).request()
    assert ProxyWasm(counted, fuel=10_000_000).request().status == 200


def test_a_module_asking_for_a_gigabyte_fails_clearly():
    with pytest.raises(WasmTrap, match="memory"):
        ProxyWasm(_module("(i32.const 0)", memory=16384))  # 1 GiB up front
    growing = _module("""(if (i32.eq (memory.grow (i32.const 16384)) (i32.const -1))
                           (then (unreachable))) (i32.const 0)""")
    with pytest.raises(WasmTrap, match="proxy_on_request_headers trapped"):
        ProxyWasm(growing, memory_limit=64 * 1024 * 1024).request()
    assert ProxyWasm(_wat("host_calls.wat")).request().status == 200


def test_an_out_of_bounds_pointer_is_a_clear_error():
    bad = _module("(drop (call $log (i32.const 2) (i32.const 0x7fff0000) (i32.const 16))) "
                  "(i32.const 0)", imports=LOG)
    with pytest.raises(MemoryAccess, match=r"proxy_log: the module passed 16 bytes at "
                                           r"2147418112, outside its 65536-byte memory"):
        ProxyWasm(bad).request()


def test_imports_the_emulator_lacks_are_named_at_load_time():
    module = _module("(i32.const 0)", imports="""
        (import "env" "proxy_made_up" (func (param i32) (result i32)))
        (import "env" "proxy_also_made_up" (func (result i32)))""")
    with pytest.raises(MissingImports) as missing:
        ProxyWasm(module)
    assert missing.value.names == ("env.proxy_made_up", "env.proxy_also_made_up")
    assert "env.proxy_made_up, env.proxy_also_made_up" in str(missing.value)


@pytest.mark.parametrize(("abi", "message"), [("9_9_9", "ABI 9_9_9 is not supported")])
def test_unsupported_abis_are_refused(abi, message):
    with pytest.raises(UnsupportedAbi, match=message):
        ProxyWasm(_module("(i32.const 0)", abi=abi))


def test_a_module_without_an_abi_is_not_proxy_wasm():
    with pytest.raises(UnsupportedAbi, match="not a proxy-wasm module"):
        ProxyWasm(bytes(wasmtime.wat2wasm('(module (memory (export "memory") 1))')))


def test_inspect_flags_imports_the_emulator_cannot_provide(tmp_path):
    module = tmp_path / "m.wasm"
    module.write_bytes(_module("(i32.const 0)", imports="""
        (import "env" "proxy_made_up" (func (param i32) (result i32)))
        (import "env" "proxy_grpc_stream" (func (param i32 i32 i32 i32 i32 i32 i32 i32 i32)
                                                (result i32)))"""))
    text = CliRunner().invoke(cli, ["inspect", str(module)])
    assert "emulator: would refuse it: env.proxy_made_up" in text.output
    import json

    report = json.loads(CliRunner().invoke(cli, ["inspect", str(module), "--output",
                                                 "json"]).output)
    assert report["emulator"] == {"missing": ["env.proxy_made_up"]}
    wrong = tmp_path / "wrong.wasm"
    wrong.write_bytes(_module("(i32.const 0)", imports='(import "env" "proxy_log" '
                                                       '(func (param i32 i32) (result i32)))'))
    assert "would refuse it: env.proxy_log (signature)" in CliRunner().invoke(
        cli, ["inspect", str(wrong)]).output
    unknown = tmp_path / "unknown.wasm"
    unknown.write_bytes(_module("(i32.const 0)", abi="9_9_9"))
    assert "would refuse it: proxy-wasm ABI 9_9_9" in CliRunner().invoke(
        cli, ["inspect", str(unknown)]).output
    old = tmp_path / "old.wasm"  # continue_stream came with 0.2.0
    old.write_bytes(_module("(i32.const 0)", abi="0_1_0", imports='(import "env" '
                            '"proxy_continue_stream" (func (param i32) (result i32)))'))
    assert "would refuse it: env.proxy_continue_stream" in CliRunner().invoke(
        cli, ["inspect", str(old)]).output
    fine = tmp_path / "fine.wasm"
    fine.write_bytes(_wat("host_calls.wat"))
    assert "emulator: provides every import" in CliRunner().invoke(
        cli, ["inspect", str(fine)]).output


@pytest.mark.parametrize(("wat", "check"), [
    ("add_header.wat", lambda r: r.response_header("x-wasm") == "added"),
    ("append_request_header.wat",
     lambda r: [v for k, v in r.request_headers if k == "x-order"] == ["ext_proc", "wasm"]),
])
def test_the_other_wat_modules_of_the_tests(wat, check):
    """The modules the end-to-end tests load into Envoy behave the same here."""
    result = ProxyWasm(_wat(wat)).request(headers=[("x-order", "ext_proc")])
    assert result.status == 200
    assert check(result)


def test_the_pytest_fixture_closes_plugins(proxy_wasm):
    plugin = proxy_wasm(_wat("host_calls.wat"), plugin_configuration="x")
    assert plugin.request().response_header("x-config") == "x"
    broken = proxy_wasm(_module("(unreachable)"))
    with pytest.raises(WasmTrap):
        broken.request()  # and the fixture's teardown does not fail on it


def test_step_by_step_http_context():
    plugin = ProxyWasm(_wat("host_calls.wat"))
    context = plugin.http_context()
    assert context.on_request_headers({":path": "/s", "x-copy": "1"}, end_of_stream=False)\
        .continues
    assert context.on_request_body(b"a", end_of_stream=False).name == "StopIterationAndBuffer"
    assert context.on_request_body(b"b", end_of_stream=True).continues
    assert context.take_body("request") == b"prefix:ab"
    assert ("x-copied", "1") in context.headers(MapType.REQUEST_HEADERS)
    context.finish()


def test_host_calls_inside_a_loop_do_not_refill_the_fuel():
    """Allocations the host makes during a callback spend the callback's budget."""
    module = _module("""(loop $again
          (drop (call $get_header (i32.const 0) (i32.const 512) (i32.const 5) (i32.const 0)
                                  (i32.const 4)))
          (br $again))
        (i32.const 0)""", imports="""
        (import "env" "proxy_get_header_map_value"
          (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
        (data (i32.const 512) ":path")""")
    with pytest.raises(WasmTrap, match="ran out of fuel") as out:
        ProxyWasm(module, fuel=200_000).request()
    assert out.value.callback == "proxy_on_request_headers"


# Envoy's rules (proxy-wasm-cpp-host and Envoy's wasm context), each checked here

HOST = r"""
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes"
    (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (data (i32.const 100) "x-late")
  (data (i32.const 112) "1")
  (data (i32.const 120) "request\00path")
  (data (i32.const 140) "x-statuses")
  (data (i32.const 160) "!")
  (data (i32.const 170) "not ok here")
  (data (i32.const 200) "\01\00\00\00" "\0c\00\00\00\10\00\00\00"
                        "content-type\00application/json\00")
  (data (i32.const 300) "{}")
  (data (i32.const 320) "log")
  (data (i32.const 330) "done")
"""


def _digit(status_call: str, at: int) -> str:
    """Store a call's status as an ASCII digit at ``at``."""
    return f"(i32.store8 (i32.const {at}) (i32.add (i32.const 48) {status_call}))"


@pytest.mark.envoy
def test_maps_buffers_and_properties_exist_only_when_envoy_lends_them():
    statuses = "".join([
        _digit("(call $add (i32.const 0) (i32.const 100) (i32.const 6) (i32.const 112) "
               "(i32.const 1))", 400),  # request headers, after they were forwarded
        _digit("(call $property (i32.const 120) (i32.const 12) (i32.const 0) (i32.const 4))",
               401),  # request.path, read from those headers
        _digit("(call $get_buffer (i32.const 7) (i32.const 0) (i32.const 10) (i32.const 0) "
               "(i32.const 4))", 402),  # the plugin configuration, outside on_configure
        _digit("(call $pairs (i32.const 1) (i32.const 0) (i32.const 4))", 403),  # trailers
    ])
    module = _module("(i32.const 0)", imports=HOST, extra=f"""
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
        {statuses}
        (drop (call $add (i32.const 2) (i32.const 140) (i32.const 10) (i32.const 400)
                         (i32.const 4)))
        (i32.const 0))""")
    # through Envoy and in the emulator alike
    assert compare_with_envoy(module, configuration="cfg", requests=[
        Exchange(), Exchange(method="POST", body=[b"a"], response_body=[b"b"])]) == []
    result = ProxyWasm(module, plugin_configuration="cfg").request()
    # BAD_ARGUMENT, NOT_FOUND, NOT_FOUND, OK (an empty map)
    assert result.response_header("x-statuses") == "2110"
    assert result.request_header("x-late") is None


@pytest.mark.envoy
def test_body_buffer_reads_whole_and_edits_only_at_the_ends():
    """tests/helpers/wat/body_edits.wat edits each body once it has all of it and appends what each
    host call answered: the same through Envoy and in the emulator."""
    module = _wat("body_edits.wat")
    assert compare_with_envoy(module, requests=[
        Exchange(method="POST", body=b"abc", response_body=b"abc"),
        Exchange(method="POST", body=[b"ab", b"c"], response_body=[b"a", b"bc"])]) == []
    result = ProxyWasm(module).request(method="POST", body=b"abc", response_body=b"abc")
    # read with length 0xFFFFFFFF (all of it) and appended, "!" appended at 0xFFFFFFFF, an
    # insert in the middle refused (BAD_ARGUMENT: 2), the first byte replaced, "[" prepended,
    # the length (8), "]" appended at the length and past it; 5 bytes read from past the end:
    # OK, nothing
    assert result.request_body == result.response_body == b"[<bcabc!]]=0002000<008>00<000>0"


def test_local_reply_headers_details_and_header_action_2():
    replying = _module("""(drop (call $local (i32.const 418) (i32.const 170) (i32.const 11)
                              (i32.const 300) (i32.const 2) (i32.const 200) (i32.const 42)
                              (i32.const -1)))
                          (i32.const 1)""", imports=HOST)
    result = ProxyWasm(replying).request()
    assert result.status == 418 and result.response_body == b"{}"
    assert [v for k, v in result.response_headers if k == "content-type"] == [
        "application/json"]  # the filter's own, not text/plain beside it
    assert result.response_header("content-length") == "2"
    assert result.local_response is not None
    assert result.local_response.details == "not_ok_here"
    assert result.local_response.grpc_status is None
    onward = ProxyWasm(_module("(i32.const 2)")).request()  # ContinueAndEndStream
    assert onward.upstream_reached and onward.paused is None


def test_stream_end_runs_on_log_before_on_done():
    module = _module("(i32.const 0)", imports=HOST, extra="""
      (func (export "proxy_on_log") (param i32)
        (drop (call $log (i32.const 2) (i32.const 320) (i32.const 3))))
      (func (export "proxy_on_delete") (param i32)
        (drop (call $log (i32.const 2) (i32.const 330) (i32.const 4))))""")
    plugin = ProxyWasm(module)
    plugin.request()
    assert [line.message for line in plugin.logs] == ["log", "done"]


def test_a_plugin_refusing_its_configuration_fails_to_start():
    from wasm.errors import StartFailed

    with pytest.raises(StartFailed, match="proxy_on_configure answered false"):
        ProxyWasm(_module("(i32.const 0)", configure="(i32.const 0)"),
                  plugin_configuration="bad")


def test_imports_declared_with_another_signature_or_for_another_abi_are_refused():
    wrong = _module("(i32.const 0)",
                    imports='(import "env" "proxy_log" (func (param i32 i32) (result i32)))')
    with pytest.raises(MissingImports, match=r"env\.proxy_log \(declared with another signature"):
        ProxyWasm(wrong)
    old = _module("(i32.const 0)", abi="0_2_0",
                  imports='(import "env" "proxy_get_log_level" (func (param i32) '
                          '(result i32)))')
    with pytest.raises(MissingImports, match=r"env\.proxy_get_log_level"):
        ProxyWasm(old)
    ProxyWasm(_module("(i32.const 0)", imports='(import "env" "proxy_get_log_level" '
                                               '(func (param i32) (result i32)))'))


def test_header_map_rules():
    """Envoy's rules, which tests/test_emulator_envoy_features.py checks through Envoy."""
    from wasm.headers import HeaderMap

    headers = HeaderMap([(b"X-Forwarded-For", b"1.1.1.1"), (b"x-tag", b"a"),
                         (b":path", b"/")])
    headers.add(b"x-forwarded-for", b"2.2.2.2")  # inline: joined into one entry
    headers.add(b"x-tag", b"b")  # others: one entry per value
    headers.add(b":authority", b"h")  # pseudo-headers stay in front
    headers.replace(b"x-tag", b"c")  # every entry goes, the new one at the end
    headers.add(b"host", b"i")  # host is :authority in request headers
    assert headers.pairs == [(b":path", b"/"), (b":authority", b"h,i"),
                             (b"x-forwarded-for", b"1.1.1.1,2.2.2.2"), (b"x-tag", b"c")]
    assert headers.byte_size() == 6 + 13 + 30 + 6  # names and values, no separators
    # which names are inline depends on the map
    response = HeaderMap([(b"location", b"/a"), (b"accept", b"x")], MapType.RESPONSE_HEADERS)
    response.add(b"location", b"/b")
    response.add(b"accept", b"y")
    response.add(b"host", b"h")
    assert response.pairs == [(b"location", b"/a,/b"), (b"accept", b"x"), (b"accept", b"y"),
                              (b"host", b"h")]
    trailers = HeaderMap([(b"content-type", b"a"), (b"content-type", b"b")],
                         MapType.RESPONSE_TRAILERS)
    assert trailers.pairs == [(b"content-type", b"a"), (b"content-type", b"b")]


def test_metric_ids_carry_their_type_and_counters_add():
    from wasm.abi import MetricType, Status
    from wasm.state import Metrics

    metrics = Metrics()
    counter = metrics.define(MetricType.COUNTER, "c")
    gauge = metrics.define(MetricType.GAUGE, "g")
    histogram = metrics.define(MetricType.HISTOGRAM, "h")
    assert (counter % 4, gauge % 4, histogram % 4) == (0, 1, 2)
    assert metrics.define(MetricType.COUNTER, "c") != counter  # a fresh id, the same stat
    assert metrics.increment(counter, 0) == Status.BAD_ARGUMENT
    assert metrics.record(counter, 5) == Status.OK and metrics.record(counter, 2) == Status.OK
    assert metrics.value_of(counter) == (Status.OK, 7)
    assert metrics.increment(gauge, -3) == Status.OK
    assert metrics.value_of(histogram) == (Status.BAD_ARGUMENT, 0)
    assert metrics.record(histogram, 9) == Status.OK
    assert metrics.snapshot() == {"c": 7, "g": -3, "h": [9]}


def test_properties_given_to_the_emulator_override_the_built_in_ones():
    with ProxyWasm(_wat("host_calls.wat"), properties={"request.path": "/given"}) as plugin:
        result = plugin.request(path="/real")
    assert result.request_header("x-path") == "/given"


def test_inputs_the_emulator_refuses_or_accepts():
    from wasm.errors import InvalidModule

    with pytest.raises(InvalidModule, match="not a WebAssembly module"):
        ProxyWasm(b"garbage")
    with pytest.raises(ValueError, match="fuel must be a positive"):
        ProxyWasm(_wat("host_calls.wat"), fuel=-1)
    result = ProxyWasm(_wat("host_calls.wat")).request(
        headers={"x-copy": b"\xff raw", "x-name": "J\u00f6rg \u2713"})
    assert result.request_header("x-copied") == "\xff raw"  # bytes kept as they are
