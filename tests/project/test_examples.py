"""The bundled examples: unit tests in-process (extproc.testing) and through a real Envoy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from header_auth import KEY_VARIABLE, HeaderAuth, sign
from json_responses import JsonResponses
from json_rewrite import JsonRewrite
from pii_redaction import PiiRedactFullDuplex, PiiRedactStreamed, luhn_valid, redact

from extctl.testing import envoy_stack
from extproc.testing import lifespan, run

KEY = "k" * 32
CARD = "4111 1111 1111 1111"  # passes the Luhn check
NOT_A_CARD = "4111 1111 1111 1112"


@pytest.fixture
def auth_key(monkeypatch):
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    return KEY.encode()


# header auth

async def test_auth_lets_a_valid_token_through_as_the_user(auth_key):
    token = sign(auth_key, "ada", int(time.time()) + 60)
    async with lifespan(HeaderAuth):
        result = await run(HeaderAuth, headers={"authorization": f"Bearer {token}"})
    assert result.request is not None
    assert result.request.headers["x-auth-user"] == "ada"
    assert "authorization" not in result.request.headers


@pytest.mark.parametrize(("authorization", "error"), [
    (None, None),
    ("Basic YTpi", None),
    ("Bearer ada.9999999999.0000", "invalid_token"),
    ("Bearer forged", "invalid_token"),
])
async def test_auth_refuses_with_401_and_a_challenge(auth_key, authorization, error):
    headers = {"authorization": authorization} if authorization else {}
    async with lifespan(HeaderAuth):
        result = await run(HeaderAuth, headers=headers)
    assert result.status == 401 and result.request is None
    expected = 'Bearer realm="extkit"' + (f', error="{error}"' if error else "")
    assert result.response.headers["www-authenticate"] == expected


async def test_auth_refuses_an_expired_or_foreign_token(auth_key):
    expired = sign(auth_key, "ada", int(time.time()) - 1)
    foreign = sign(b"another key of 32 characters....", "ada", int(time.time()) + 60)
    async with lifespan(HeaderAuth):
        for token in (expired, foreign):
            result = await run(HeaderAuth, headers={"authorization": f"Bearer {token}"})
            assert result.status == 401


async def test_auth_will_not_start_without_a_key(monkeypatch):
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    with pytest.raises(RuntimeError, match=KEY_VARIABLE):
        async with lifespan(HeaderAuth):
            pass


def test_auth_through_envoy(auth_key, transport):
    token = sign(auth_key, "ada", int(time.time()) + 60)
    with envoy_stack(HeaderAuth, transport=transport) as stack:
        denied = stack.get("/")
        allowed = stack.get("/", headers={"authorization": f"Bearer {token}"})
    assert denied.status == 401
    assert denied.headers["www-authenticate"] == 'Bearer realm="extkit"'
    assert allowed.status == 200
    seen = allowed.upstream_headers()
    assert seen["x-auth-user"] == ["ada"] and "authorization" not in seen


# PII redaction

def test_redact_masks_emails_and_luhn_valid_cards_only():
    text = f"mail ada@example.co.uk, card {CARD}, order {NOT_A_CARD}".encode()
    assert redact(text) == f"mail [email], card [card], order {NOT_A_CARD}".encode()
    assert luhn_valid(b"4111111111111111") and not luhn_valid(b"4111111111111112")


@pytest.mark.parametrize("processor", [PiiRedactStreamed, PiiRedactFullDuplex])
async def test_redaction_across_chunk_boundaries_in_process(processor):
    body = f"to: ada@example.com; pay with {CARD}; ref {NOT_A_CARD}.".encode()
    for split in range(1, len(body)):  # every place a chunk boundary can fall
        chunks = [body[:split], body[split:]]
        result = await run(processor, response_body=chunks)
        assert result.response.body == \
            f"to: [email]; pay with [card]; ref {NOT_A_CARD}.".encode(), split


@pytest.mark.parametrize("processor", [PiiRedactStreamed, PiiRedactFullDuplex])
def test_redaction_through_envoy_with_matches_split_across_chunks(processor, transport):
    chunks = ["contact: ada@exam", "ple.com and card 4111 11", "11 1111 1111 thanks"]
    with envoy_stack(processor, transport=transport) as stack:
        reply = stack.get("/", headers={"x-echo-chunks": json.dumps(chunks)})
        counts = dict(stack.counts)
    assert reply.status == 200
    assert reply.body == b"contact: [email] and card [card] thanks"
    assert counts["response_body"] >= 3


# JSON rewrite (BUFFERED)

async def test_json_rewrite_adds_fields_in_process():
    result = await run(JsonRewrite, method="POST", body=b'{"item": 1}',
                       headers={"x-request-id": "r-1"})
    assert result.request is not None
    assert json.loads(result.request.body) == {"item": 1, "request_id": "r-1",
                                               "gateway": "extkit"}
    refused = await run(JsonRewrite, method="POST", body=b"[1, 2]")
    assert refused.status == 400


def test_json_rewrite_through_envoy_fixes_content_length(transport):
    with envoy_stack(JsonRewrite, transport=transport) as stack:
        reply = stack.get("/orders", method="POST", body=b'{"item": 1}',
                          headers={"content-type": "application/json"})
        refused = stack.get("/orders", method="POST", body=b"not json")
    echoed = reply.json()
    # As an edge proxy, Envoy sets the request id itself; the processor saw that one.
    request_id = reply.upstream_headers()["x-request-id"][0]
    assert json.loads(echoed["body"]) == {"item": 1, "request_id": request_id,
                                          "gateway": "extkit"}
    assert reply.upstream_headers()["content-length"] == [str(echoed["body_length"])]
    assert refused.status == 400 and refused.body == b"expected a JSON object\n"


# per-request mode override

async def test_json_responses_asks_for_json_bodies_only_in_process():
    as_json = await run(JsonResponses, path="/j", response_body=b'{"a": 1}',
                        response_headers={"content-type": "application/json; charset=utf-8"})
    as_text = await run(JsonResponses, path="/t", response_body=b"plain",
                        response_headers={"content-type": "text/plain"})
    assert json.loads(as_json.response.body) == {"a": 1, "seen_path": "/j"}
    assert "response_body" in as_json.sent
    assert as_text.response.body == b"plain"
    assert as_text.sent == ["request_headers", "response_headers"]


def test_json_responses_through_envoy_body_sent_only_for_json(transport):
    with envoy_stack(JsonResponses, transport=transport) as stack:
        text = stack.get("/t", headers={"x-echo-chunks": '["plain text"]'})
        after_text = dict(stack.counts)
        as_json = stack.get("/j")  # the echo upstream answers JSON
        after_json = dict(stack.counts)
    assert text.body == b"plain text"
    assert "response_body" not in after_text
    assert as_json.json()["seen_path"] == "/j"
    assert after_json["response_body"] == 1


# a Wasm filter from a template, shipped through the registry

WASM_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wasm-tagger"


def test_wasm_example_is_the_current_wat_template(tmp_path):
    from extctl.scaffold import new_project
    from extctl.scaffold.source import ExtkitSource

    # As made by an envoy-extkit from a package index: the README names no local checkout.
    fresh = new_project("wasm-wat", "wasm-tagger", tmp_path, source=ExtkitSource("index"))
    def sources(root: Path) -> list[Path]:  # leaves out build output and tools' caches
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") or part in ("build", "__pycache__")
            for part in p.relative_to(root).parts[:-1]))

    files = sources(fresh)
    assert files == sources(WASM_EXAMPLE)
    for relative in files:
        assert (WASM_EXAMPLE / relative).read_bytes() == (fresh / relative).read_bytes(), \
            f"examples/wasm-tagger/{relative} differs: regenerate it with extctl new"


def test_wasm_example_pushed_pulled_by_digest_and_run_by_envoy(registry, tmp_path):
    import wasmtime

    import registry as oci
    from extctl.config import WasmModule
    from tests.helpers.oci import PASSWORD, USER

    module = tmp_path / "filter.wasm"
    module.write_bytes(wasmtime.wat2wasm((WASM_EXAMPLE / "filter.wat").read_text()))
    connection = oci.Connection(oci.Credentials(USER, PASSWORD, "t"),
                                ca_file=str(registry.ca_file))
    ref = f"oci://{registry.host}/examples/wasm-tagger:v1"
    pushed = oci.push(module, ref, connection=connection)
    pulled = oci.pull(ref, tmp_path / "pulled.wasm", sha256=pushed.digest, connection=connection)
    plugin = WasmModule("wasm-tagger", file=str(pulled.path), text="shipped")
    with envoy_stack(wasm=[plugin]) as stack:
        tagged = stack.get("/")
        denied = stack.get("/", headers={"x-deny": "yes"})
    assert tagged.headers["x-filter"] == "shipped"
    assert denied.status == 403 and denied.headers["x-denied-by"] == "wasm"
