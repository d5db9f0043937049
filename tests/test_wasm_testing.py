"""wasm.testing.compare_with_envoy: the user-facing differential check, run as a user would,
with a scripted upstream answering what each exchange says."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from wasm.testing import Exchange, compare_with_envoy

pytestmark = pytest.mark.envoy

WAT = Path(__file__).resolve().parent / "wat"

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
    assert by_field[(1, "response_body")] == (b"one,<D>two<D><E>", b"one,<D>two<E>")
    assert by_field[(2, "upstream_body")] == (b"ab<D>cd<D><E>", b"ab<D>cd<E>")
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
    """The other WAT modules of tests/wat with the default framing (host_calls and framing
    above; callout.wat, whose check goes to the upstream cluster itself, in
    test_emulator_envoy_features.py)."""
    module = wasmtime.wat2wasm((WAT / f"{name}.wat").read_text())
    exchanges = [Exchange(path="/", headers={"x-job": "j1"}),
                 Exchange(method="POST", body=[b"a", b"b"], response_body=[b"c", b"d"]),
                 Exchange(headers={"x-deny": "1"}, status=503)]
    assert compare_with_envoy(bytes(module), requests=exchanges, name=name) == []
