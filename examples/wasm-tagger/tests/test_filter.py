"""The built module in a real Envoy: what it does to requests and responses."""

from extctl.config import WasmModule
from extctl.testing import Exchange, compare_with_envoy


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


def test_the_emulator_agrees_with_envoy(module):
    """The unit tests' emulator, checked against Envoy on the same requests."""
    assert compare_with_envoy(module, configuration="tagged", name="wasm-tagger", requests=[
        Exchange(path="/", headers={"x-user": "ada"}),
        Exchange(headers={"x-deny": "1"}),
        Exchange(method="POST", body=[b"a", b"b"], response_body=[b"c", b"d"]),
    ]) == []
