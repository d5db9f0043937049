"""The built module in a real Envoy: what it does to requests and responses."""

from extctl.config import WasmModule


def _filter(module, configuration=""):
    return WasmModule("wasm-tagger", file=str(module), text=configuration)


def test_marks_responses_with_the_configured_value(envoy_stack, module):
    with envoy_stack(wasm=[_filter(module, "tagged")]) as stack:
        reply = stack.get("/")
    assert reply.status == 200
    assert reply.headers["x-filter"] == "tagged"


def test_empty_configuration_means_on(envoy_stack, module):
    with envoy_stack(wasm=[_filter(module)]) as stack:
        assert stack.get("/").headers["x-filter"] == "on"


def test_denies_requests_with_x_deny(envoy_stack, module):
    with envoy_stack(wasm=[_filter(module, "tagged")]) as stack:
        reply = stack.get("/", headers={"x-deny": "1"})
    assert reply.status == 403
    assert reply.body == b"denied by wasm\n"
    assert reply.headers["x-denied-by"] == "wasm"
