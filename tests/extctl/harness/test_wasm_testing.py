"""extctl.testing.compare_with_envoy: the user-facing differential check, run as a user would,
with a scripted upstream answering what each exchange says."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from extctl.testing import Exchange, compare_with_envoy
from tests.helpers.wasm_modules import callout_module

pytestmark = pytest.mark.envoy

WAT = Path(__file__).resolve().parents[2] / "helpers" / "wat"

EXCHANGES = [
    Exchange(path="/a?q=1", headers={"x-copy": "c", "x-remove": "r"},
             response_headers={"x-up": "1"}, response_body=b"sized"),
    Exchange(method="POST", path="/p", body=b"abc", status=201,
             response_body=[b"one,", b"two"], response_trailers={"x-t": "1"}),
    Exchange(method="POST", path="/c", body=[b"ab", b"cd"], status=404,
             response_headers={"content-type": "text/plain"}, response_body=b"nope"),
]


def test_the_emulator_agrees_with_envoy_on_a_filter_that_touches_everything(tmp_path):
    module = tmp_path / "host_calls.wasm"
    module.write_bytes(wasmtime.wat2wasm((WAT / "host_calls.wat").read_text()))
    # host_calls prefixes request bodies but keeps content-length: chunked bodies only
    chunked = [e for e in EXCHANGES if not isinstance(e.body, bytes) or not e.body]
    assert compare_with_envoy(module, requests=chunked, configuration="cfg-1") == []


def test_differences_are_reported(tmp_path):
    module = wasmtime.wat2wasm((WAT / "framing.wat").read_text())
    # the same module, but the emulator told to frame bodies as HTTP/2 does
    found = compare_with_envoy(bytes(module), requests=EXCHANGES, framing="http2")
    by_field = {(d.request, d.what): (d.envoy, d.emulator) for d in found}
    assert by_field[(1, "upstream_body")] == (b"abc<D><E>", b"abc<E>")
    assert by_field[(2, "upstream_body")] == (b"ab<D>cd<D><E>", b"ab<D>cd<E>")
    assert by_field[(2, "response_body")] == (b"nope<D><E>", b"nope<E>")
    # trailers end exchange 1's response in either framing: no empty last frame to differ on
    assert (1, "response_body") not in by_field
    assert (0, "status") not in by_field
    assert compare_with_envoy(bytes(module), requests=EXCHANGES) == []


def test_envoy_stack_answers_with_a_fixed_scripted_reply():
    from extctl.testing import envoy_stack

    with envoy_stack(upstream=(201, {"x-scripted": "yes"}, [b"a", b"b"], {})) as stack:
        reply = stack.get("/anything", headers={"x-echo-status": "500"})  # not echoed
    assert (reply.status, reply.body) == (201, b"ab")
    assert reply.headers["x-scripted"] == "yes"


@pytest.mark.parametrize("name", ["add_header", "append_request_header", "queue"])
def test_every_module_here_agrees_with_envoy(name):
    """The other WAT modules of tests/helpers/wat with the default framing (host_calls and framing
    above; callout.wat, whose check goes to the upstream cluster itself, in
    test_emulator_envoy_features.py)."""
    module = wasmtime.wat2wasm((WAT / f"{name}.wat").read_text())
    exchanges = [Exchange(path="/", headers={"x-job": "j1"}),
                 Exchange(method="POST", body=[b"a", b"b"], response_body=[b"c", b"d"]),
                 Exchange(headers={"x-deny": "1"}, status=503)]
    assert compare_with_envoy(bytes(module), requests=exchanges, name=name) == []


def _checker(call):
    from wasm import Reply

    status = int(call.header("x-echo-status") or 200)
    return Reply(status, {"content-type": "text/plain"}, f"{status} for {call.header(':path')}"
                 .encode())


def test_a_callout_filter_is_compared_with_its_cluster_served_for_real():
    requests = [Exchange(path="/a", headers={"x-keep": "1"}),
                Exchange(path="/b", headers={"x-deny": "1"})]
    # without the cluster, Envoy refuses the call and the filter lets the request go; the
    # emulator (told of the cluster) pauses it: a difference, so the cluster must be served
    assert compare_with_envoy(callout_module(), requests=requests,
                              upstreams={"checkers": _checker}) == []


def test_a_callout_difference_names_the_calls(tmp_path):
    from wasm import Reply

    calls: list[str] = []

    def drifting(call):  # answers the two runs differently: the comparison must see it
        calls.append(call.header(":path") or "")
        return Reply(200 if len(calls) == 1 else 403)

    found = compare_with_envoy(callout_module(), requests=[Exchange(path="/a")],
                               upstreams={"checkers": drifting})
    by_field = {d.what: (d.envoy, d.emulator) for d in found}
    assert by_field["status"] == (200, 403)
    assert "calls" not in by_field  # both made the same call
    assert calls == ["/check", "/check"]


def test_a_timeout_cannot_be_served_for_real():
    from wasm import CalloutReset, HostError

    def resets(call):
        raise CalloutReset("gone")

    with pytest.raises(HostError, match="cannot be made to time out or reset on cue"):
        compare_with_envoy(callout_module(), requests=[Exchange()],
                           upstreams={"checkers": resets})


def test_grpc_streams_are_compared_with_a_real_grpc_server_behind_the_cluster():
    from tests.helpers.wasm_modules import MODULE, Talk

    requests = [Exchange(path="/echo"), Exchange(path="/deny"), Exchange(path="/late"),
                Exchange(path="/echo", headers={"x-end": "1"})]
    # (the module logs the gRPC answers' headers, x-envoy-upstream-service-time included)
    assert compare_with_envoy(MODULE, requests=requests, grpc_upstreams={"grpc": Talk()},
                              logs=False) == []
    # a plain handler serves each message as a unary call would, on both sides
    upper = compare_with_envoy(MODULE, requests=requests[:1], grpc_upstreams={
        "grpc": lambda call: (0, {}, call.body.upper())}, logs=False)
    assert upper == []


def test_a_grpc_difference_is_reported_and_clusters_are_named_once():
    from tests.helpers.wasm_modules import MODULE, Talk

    class Moody(Talk):  # allows the first stream it sees (Envoy's run), denies the next
        seen = 0

        def received(self, stream, message):
            Moody.seen += 1
            if Moody.seen > 1:
                stream.close(7, "moody")
            else:
                super().received(stream, message)

    found = compare_with_envoy(MODULE, requests=[Exchange(path="/echo")],
                               grpc_upstreams={"grpc": Moody()})
    by_field = {d.what: (d.envoy, d.emulator) for d in found}
    assert by_field["upstream_headers"][0]["x-grpc-close"] == "0"
    assert by_field["upstream_headers"][1]["x-grpc-close"] == "7"
    assert "grpc" not in by_field  # the upstream received the same in both
    with pytest.raises(ValueError, match="either in upstreams or in grpc_upstreams"):
        compare_with_envoy(MODULE, requests=[], upstreams={"grpc": _checker},
                           grpc_upstreams={"grpc": Talk()})


def test_a_stateful_grpc_handler_sees_the_same_streams_in_both_runs():
    from tests.helpers.wasm_modules import MODULE, Talk

    events: list[str] = []

    class Recording(Talk):
        def opened(self, stream):
            events.append(f"open {stream.token}")

        def cancelled(self, stream):
            events.append(f"cancel {stream.token}")

    requests = [Exchange(path="/deny", headers={"x-keep": "1"}), Exchange(path="/late"),
                Exchange(path="/echo", headers={"x-cancel": "1"}), Exchange(path="/echo")]
    assert compare_with_envoy(MODULE, requests=requests,
                              grpc_upstreams={"grpc": Recording()}, logs=False) == []
    # the real server numbers streams as the emulator does; an upstream that closed is not
    # told of a cancel; a stream cancelled before it was sent may reach the real server
    # (late) or not at all
    through_envoy, emulated = events[:events.index("open 6", 1)], \
        events[events.index("open 6", 1):]
    assert emulated == ["open 6", "open 10", "open 14", "cancel 14", "open 18"]
    assert [e for e in through_envoy if "14" not in e] == ["open 6", "open 10", "open 18"]


@pytest.mark.parametrize(("answer", "message"), [
    (lambda s: s.send_metadata({"bad name": "v"}), "sent metadata 'bad name', a name gRPC"),
    (lambda s: s.close(0, trailers={"x-v": "a\nb"}), "which gRPC refuses"),
    (lambda s: s.close(20), "status 20, which gRPC cannot send"),
    (lambda s: None, "never ended gRPC stream test.Chat/Talk after the filter ended its side"),
])
def test_what_a_real_grpc_upstream_cannot_send_is_a_host_error(answer, message):
    from tests.helpers.wasm_modules import MODULE
    from wasm import GrpcStreamHandler, HostError

    class Handler(GrpcStreamHandler):
        def received(self, stream, data):
            answer(stream)

        def half_closed(self, stream):
            pass  # never closes: the last case

    with pytest.raises(HostError, match=message):
        compare_with_envoy(MODULE, requests=[Exchange(path="/x")],
                           grpc_upstreams={"grpc": Handler()})


TRAILED = [
    Exchange(method="POST", body=[b"ab", b"cd"], trailers={"x-rt": "1"},
             response_body=[b"x", b"y"], response_trailers={"x-pt": "2", "x-pu": "3"}),
    Exchange(method="POST", body=[], trailers={"x-rt": "1"}, response_body=[],
             response_trailers={"x-pt": "2"}),  # trailers right after the headers
    Exchange(method="POST", body=[b"ab"], response_body=[b"x"]),  # chunked, no trailers
    # a body with a content-length has none: nothing sent, nothing seen
    Exchange(method="POST", body=b"ab", trailers={"x-not-sent": "1"}, response_body=b"x",
             response_trailers={"x-not-sent": "1"}),
]


def test_trailers_end_a_body_as_in_envoy():
    """tests/helpers/wat/trailers.wat records each direction's callbacks (headers, each body call
    and its end of stream, trailers) in the trailers and a response header, and marks each body
    call in the body: Envoy and the emulator agree on all of it, trailers both ways."""
    module = bytes(wasmtime.wat2wasm((WAT / "trailers.wat").read_text()))
    assert compare_with_envoy(module, requests=TRAILED) == []
    # what both saw: the trailers, not an empty last frame, end the body
    from wasm import ProxyWasm

    plugin = ProxyWasm(module)
    seen = [plugin.request(method="POST", body=e.body, response_body=e.response_body,
                           trailers=e.trailers or None,
                           response_trailers=e.response_trailers or None)
            for e in TRAILED[:3]]
    assert [(r.request_body, r.response_body) for r in seen] == [
        (b"ab<D>cd<D>", b"x<D>y<D>"), (b"", b""), (b"ab<D><E>", b"x<D><E>")]
    assert [r.response_header("x-request-calls") for r in seen] == ["H0DDT1", "H0T1", "H0DE"]
    assert seen[0].request_trailers == [("x-rt", "1"), ("x-calls", "H0DDT1")]
    assert seen[0].response_trailers == [("x-pt", "2"), ("x-pu", "3"), ("x-calls", "H0DDT2")]
    assert seen[1].response_trailers == [("x-pt", "2"), ("x-calls", "H0T1")]


def test_a_trap_is_compared_per_request_and_a_trap_at_teardown_is_reported_apart():
    """A callback that traps: that request and every later one get Envoy's 503 (the VM
    failed, the config fails closed), in both runs; the root context's proxy_on_done trapping
    when the VM goes is the emulator's teardown failure, not a difference."""
    module = bytes(wasmtime.wat2wasm((WAT / "trap.wat").read_text()))
    requests = [Exchange(path="/ok"), Exchange(path="/t", headers={"x-trap": "1"}),
                Exchange(path="/after")]
    found = compare_with_envoy(module, requests=requests)
    assert found == [] and found.teardown is None  # (a failed VM is not torn down)
    healthy = compare_with_envoy(module, requests=[requests[0], requests[2]])
    assert healthy == []
    assert healthy.teardown is not None and "proxy_on_done trapped" in healthy.teardown


def test_a_trap_on_one_side_only_is_a_difference_named_trap(monkeypatch):
    """The emulator made not to trap (a fault injected on its side): the comparison names the
    callback Envoy's log reports and the statuses."""
    import wasm.emulator

    request = wasm.emulator.ProxyWasm.request

    def no_trap(self, method="GET", path="/", **kwargs):
        headers = [(k, v) for k, v in kwargs.pop("headers", None) or [] if k != "x-trap"]
        return request(self, method, path, headers=headers, **kwargs)

    monkeypatch.setattr(wasm.emulator.ProxyWasm, "request", no_trap)
    module = bytes(wasmtime.wat2wasm((WAT / "trap.wat").read_text()))
    found = compare_with_envoy(module, requests=[Exchange(headers={"x-trap": "1"})])
    by_field = {(d.request, d.what): (d.envoy, d.emulator) for d in found}
    assert by_field[(0, "trap")] == ("proxy_on_request_headers", None)
    assert by_field[(0, "status")] == (503, 200)


def test_logs_metrics_and_the_authority_are_compared(tmp_path, monkeypatch):
    """host_calls logs a line per request and counts requests in a metric: both compared over
    the run; an exchange's authority reaches the filter and the upstream on both sides. Lines
    and counts made to differ on the emulator's side are reported as request -1."""
    import wasm.emulator

    module = bytes(wasmtime.wat2wasm((WAT / "host_calls.wat").read_text()))
    requests = [Exchange(path="/a", authority="tenant.example"), Exchange(path="/b")]
    assert compare_with_envoy(module, requests=requests, configuration="cfg-1") == []

    request = wasm.emulator.ProxyWasm.request

    def extra(self, *args, **kwargs):
        result = request(self, *args, **kwargs)
        self.state.logs.append(type(self.logs[0])(self.logs[0].level, "extra", 0))
        self.metrics.values["requests"] += 1
        return result

    monkeypatch.setattr(wasm.emulator.ProxyWasm, "request", extra)
    found = compare_with_envoy(module, requests=requests[:1], configuration="cfg-1")
    by_field = {(d.request, d.what): (d.envoy, d.emulator) for d in found}
    assert set(by_field) == {(-1, "logs"), (-1, "metrics")}
    envoy_lines, emulator_lines = by_field[(-1, "logs")]
    assert [m for _, m in emulator_lines if m not in {m for _, m in envoy_lines}] == ["extra"]
    assert by_field[(-1, "metrics")] == ({"requests": 1}, {"requests": 2})


def test_the_vm_configuration_reaches_the_module_in_both_runs():
    """vm_configuration= is what proxy_on_vm_start reads, in Envoy (vm_config.configuration)
    and in the emulator; the module shows it in a response header, compared."""
    from wasm import ProxyWasm

    module = bytes(wasmtime.wat2wasm((WAT / "vm_config.wat").read_text()))
    with ProxyWasm(module, vm_configuration="vm-1") as plugin:
        assert plugin.request().response.headers["x-vm-config"] == "vm-1"
    assert compare_with_envoy(module, requests=[Exchange()], vm_configuration="vm-1") == []
