"""The emulator against a real Envoy: the same modules and requests give the same headers,
bodies and local responses (for what the filters touch; Envoy's own headers aside)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import wasmtime

from extctl.config import WasmModule
from extctl.testing import envoy_stack
from wasm.emulator import ProxyWasm

pytestmark = pytest.mark.envoy

WAT = Path(__file__).resolve().parents[1] / "helpers" / "wat"
# Headers Envoy or the echo upstream add on their own, and x-ticked, which depends on when
# Envoy's 1 s timer fires.
IGNORED = ("x-envoy-", "x-forwarded-", "x-request-id", "x-echo-", "x-ticked")

REQUESTS = [
    {"path": "/"},
    {"path": "/a/b?q=1", "headers": {"x-copy": "copied", "x-remove": "bye", "x-keep": "k"}},
    {"path": "/deny", "headers": {"x-deny": "1"}},
    {"path": "/post", "method": "POST", "chunks": [b"first,", b"second"]},
]


def _ours(pairs) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in pairs:
        if name.startswith("x-") and not name.startswith(IGNORED):
            found.setdefault(name, []).append(value)
    return found


def _echo(request):
    """What the echo upstream answers: the request as JSON."""
    answer = {"headers": [[k, v] for k, v in request.headers.items() if not k.startswith(":")],
              "body": request.body.decode("latin-1")}
    return 200, {"content-type": "application/json"}, json.dumps(answer).encode()


def _through_envoy(module: Path, configuration: str, root_id: str) -> list[dict]:
    plugin = WasmModule("under-test", file=str(module), text=configuration,
                        root_id=root_id)
    seen = []
    with envoy_stack(wasm=[plugin]) as stack:
        for request in REQUESTS:
            reply = stack.get(request["path"], method=request.get("method", "GET"),
                              headers=request.get("headers"), chunks=request.get("chunks"))
            reached = reply.headers.get("content-type") == "application/json"
            upstream = reply.json() if reached else None
            seen.append({
                "status": reply.status,
                "response": _ours(reply.headers.items()),
                "upstream": _ours(upstream["headers"]) if upstream else None,
                "upstream_body": upstream["body"].encode("latin-1") if upstream else None,
                "local_body": None if reached else reply.body,
            })
    return seen


def _through_emulator(module: Path, configuration: str, root_id: str) -> list[dict]:
    seen = []
    with ProxyWasm(module, plugin_configuration=configuration, root_id=root_id) as plugin:
        for request in REQUESTS:
            result = plugin.request(path=request["path"], method=request.get("method", "GET"),
                                    headers=request.get("headers"),
                                    body=request.get("chunks", b""), upstream=_echo)
            seen.append({
                "status": result.status,
                "response": _ours(result.response_headers),
                "upstream": _ours(result.request_headers) if result.upstream_reached else None,
                "upstream_body": result.request_body if result.upstream_reached else None,
                "local_body": None if result.upstream_reached else result.response_body,
            })
    return seen


@pytest.fixture(scope="module")
def host_calls_module(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wat") / "host_calls.wasm"
    path.write_bytes(wasmtime.wat2wasm((WAT / "host_calls.wat").read_text()))
    return path


@pytest.mark.parametrize(("module_fixture", "configuration", "root_id"), [
    ("wat_template_module", "tagged", ""),
    ("as_template_module", "tagged", "tmpl-filter"),  # built with a real SDK
    ("host_calls_module", "cfg-1", ""),
])
def test_emulator_and_envoy_agree(request, module_fixture, configuration, root_id):
    module = request.getfixturevalue(module_fixture)
    envoy = _through_envoy(module, configuration, root_id)
    emulated = _through_emulator(module, configuration, root_id)
    for sent, in_envoy, in_emulator in zip(REQUESTS, envoy, emulated, strict=True):
        assert in_emulator == in_envoy, sent
    # The comparison has teeth: the filters changed what both sides saw.
    assert any(seen["response"] for seen in envoy)
    if module_fixture != "host_calls_module":
        assert envoy[2]["status"] == 403 and envoy[2]["local_body"] == b"denied by wasm\n"
    else:
        assert envoy[1]["upstream"]["x-copied"] == ["copied"]
        assert envoy[3]["upstream_body"] == b"prefix:first,second"
