"""Unit tests without Envoy: envoy-extkit's proxy-wasm emulator runs the built module."""

from wasm import ProxyWasm


def test_tags_responses_with_the_configuration(module):
    with ProxyWasm(module, plugin_configuration="tagged") as plugin:
        result = plugin.request(path="/", headers={"x-user": "ada"})
    assert result.status == 200
    assert result.response_header("x-filter") == "tagged"
    assert result.request_header("x-user") == "ada"  # what the upstream got


def test_denies_with_a_local_response(module):
    with ProxyWasm(module) as plugin:
        result = plugin.request(headers={"x-deny": "1"})
    assert not result.upstream_reached
    assert result.status == 403
    assert result.response_body == b"denied by wasm\n"
    assert result.response_header("x-denied-by") == "wasm"
