"""End to end: a real Envoy, ext_proc over a Unix socket, an upstream echoing what it got."""

from __future__ import annotations

import json
import logging
import socket

import pytest

from tests.helpers.procs import (
    BufferedBig,
    BufferedJson,
    BypassChecks,
    FailOpen,
    FullDuplexRedact,
    HeadersOnly,
    Metadata,
    ModeOverride,
    Rewrite,
    RoutingAllowed,
    Streamed,
)

pytestmark = pytest.mark.envoy


def test_request_headers_set_appended_removed_and_response_header_added(make_stack):
    with make_stack(Rewrite) as s:
        reply = s.get("/a/b?q=1", headers={"x-internal": "drop me", "x-replaced": "old",
                                           "x-multi": "first"})
        rejected = s.envoy.stats("http.ingress.ext_proc.rejected_header_mutations")
    assert reply.status == 200
    assert rejected == {"http.ingress.ext_proc.rejected_header_mutations": 0}
    seen = reply.upstream_headers()
    assert seen["x-path"] == ["/a/b?q=1"]
    assert seen["x-replaced"] == ["new"]
    # Envoy joins repeated request headers for HTTP/1 upstreams, in order.
    assert ",".join(seen["x-multi"]).replace(" ", "") == "first,second"
    assert "x-internal" not in seen
    assert reply.headers["x-processed-by"].startswith("extkit-")
    assert reply.headers["x-request-path"] == "/a/b?q=1"


def test_streamed_response_body_rewritten_chunk_by_chunk(make_stack):
    chunks = ["the secret is ", "not a secret ", "any more"]
    with make_stack(Streamed) as s:
        reply = s.get("/", headers={"x-echo-chunks": json.dumps(chunks)})
        counts = dict(s.counts)
    assert reply.status == 200
    body = reply.body.decode()
    assert "secret" not in body
    assert body.startswith("the ****** is [1]not a ****** [2]any more[3]")
    assert counts["response_body"] >= 3  # one message per upstream chunk (plus end of stream)


def test_buffered_json_request_body_rewritten_with_correct_content_length(make_stack):
    payload = json.dumps({"user": "ada", "items": list(range(50))}).encode()
    with make_stack(BufferedJson) as s:
        reply = s.get("/orders", method="POST", body=payload,
                      headers={"content-type": "application/json"})
    assert reply.status == 200
    echoed = reply.json()
    document = json.loads(echoed["body"])
    assert document["added_by"] == "extkit" and document["user"] == "ada"
    seen = reply.upstream_headers()
    assert seen["content-length"] == [str(echoed["body_length"])]
    assert int(seen["content-length"][0]) == len(echoed["body"]) > len(payload)
    assert seen["x-body-mode"] == ["buffered"]
    assert not echoed["chunked"]


def test_full_duplex_redacts_a_word_split_across_chunks_both_ways(make_stack):
    with make_stack(FullDuplexRedact) as s:
        response = s.get("/", headers={"x-echo-chunks": json.dumps(["my pass", "word is x"])})
        request = s.get("/up", method="POST", chunks=[b"top pass", b"word!"])
    assert response.status == 200
    assert response.body == b"my ******** is x"
    assert request.status == 200
    assert request.json()["body"] == "top ********!"


def _raw_chunked_with_trailers(port: int, chunks: list[bytes], trailers: dict[str, str]) -> bytes:
    request = b"POST /t HTTP/1.1\r\nhost: local\r\ntransfer-encoding: chunked\r\n\r\n"
    for chunk in chunks:
        request += b"%x\r\n%s\r\n" % (len(chunk), chunk)
    request += b"0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in trailers.items()).encode()
    request += b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while not data.endswith(b"\r\n0\r\n\r\n"):
            part = conn.recv(65536)
            if not part:
                break
            data += part
    return data


def test_full_duplex_with_trailers_flushes_held_bytes_and_forwards_trailers(make_stack):
    with make_stack(FullDuplexRedact, http1_trailers=True) as s:
        raw = _raw_chunked_with_trailers(s.envoy.port, [b"top pass", b"word!"], {"x-t": "1"})
        counts = dict(s.counts)
    # The response is chunked by Envoy (and held back by the processor): undo the framing.
    head, _, framed = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    body = b""
    while framed:
        size_line, _, framed = framed.partition(b"\r\n")
        size = int(size_line, 16)
        body, framed = body + framed[:size], framed[size + 2:]
        if size == 0:
            break
    echoed = json.loads(body)
    assert echoed["body"] == "top ********!"
    assert ["x-t", "1"] in echoed["trailers"]
    assert ["x-trailer-seen", "yes"] in echoed["trailers"]
    assert counts["request_trailers"] == 1


def test_immediate_response_403_with_body_and_header(make_stack):
    with make_stack(Rewrite) as s:
        reply = s.get("/", headers={"x-deny": "1"})
    assert reply.status == 403
    assert reply.body == b"denied\n"
    assert reply.headers["x-why"] == "policy"


def test_hook_exception_fails_closed_then_next_request_works(make_stack, caplog, capfd,
                                                            transport):
    caplog.set_level(logging.ERROR, logger="extproc")
    with make_stack(Rewrite, preserve_external_request_id=True) as s:
        failed = s.get("/", headers={"x-boom": "1", "x-request-id": "req-boom-1"})
        after = s.get("/fine")
    assert failed.status == 500
    assert b"secret internal detail" not in failed.body
    assert after.status == 200
    assert after.upstream_headers()["x-path"] == ["/fine"]
    if transport == "pyvoy":  # logged by the Envoy process, on the same stderr
        err = capfd.readouterr().err
        assert "Rewrite.on_request_headers failed (x-request-id=req-boom-1)" in err
        assert "RuntimeError: secret internal detail" in err  # with the traceback
        return
    records = [r for r in caplog.records if "on_request_headers failed" in r.getMessage()]
    assert records, "the hook failure must be logged"
    assert "req-boom-1" in records[0].getMessage()
    assert records[0].exc_info is not None  # with the traceback


def test_fail_open_class_passes_the_request_unchanged(make_stack):
    with make_stack(FailOpen) as s:
        reply = s.get("/", headers={"x-boom": "1", "x-internal": "kept"})
    assert reply.status == 200
    seen = reply.upstream_headers()
    assert seen["x-internal"] == ["kept"]  # unchanged: the hook's work is not applied
    assert "x-path" not in seen


def test_headers_only_processor_receives_no_body_messages(make_stack):
    with make_stack(HeadersOnly) as s:
        for _ in range(3):
            reply = s.get("/", method="POST", body=b"x" * 5000)
            assert reply.status == 200
            assert reply.json()["body_length"] == 5000
        reply = s.get("/", headers={"x-echo-chunks": json.dumps(["a", "b", "c"])})
        assert reply.body == b"abc"
        counts = dict(s.counts)
    assert counts == {"request_headers": 4}


def test_dynamic_metadata_and_attributes(make_stack):
    with make_stack(Metadata,
                    route_headers=[("x-from-metadata", "%DYNAMIC_METADATA(extkit:tenant)%")]) as s:
        reply = s.get("/attr/path", method="PUT", body=b"{}")
    seen = reply.upstream_headers()
    assert seen["x-attr-path"] == ["/attr/path"]
    assert seen["x-attr-method"] == ["PUT"]
    assert seen["x-from-metadata"] == ["blue"]


def test_mode_override_asks_for_the_response_body_per_request(make_stack):
    with make_stack(ModeOverride) as s:
        plain = s.get("/", headers={"x-echo-chunks": json.dumps(["abc"])})
        before = dict(s.counts)
        upper = s.get("/", headers={"x-echo-chunks": json.dumps(["abc"]), "x-want-body": "1"})
        after = dict(s.counts)
    assert plain.body == b"abc"
    assert "response_body" not in before
    assert upper.body == b"ABC"
    assert after["response_body"] == 1


def test_direct_response_without_upstream(sock_dir):
    from tests.helpers.common import stack

    with stack(HeadersOnly, sock_dir, None) as s:
        reply = s.get("/")
        counts = dict(s.counts)
    assert reply.status == 200 and reply.body == b"ok\n"
    assert counts == {"request_headers": 1}


def _mutation_cases() -> list[tuple[str, str, str, str]]:
    """Every (kind, action, name, value) over the names extproc/_headers.py's rules speak of:
    its tables' names, host, every pseudo-header, an x-envoy-* name and an ordinary one
    (content-type: the client sends it, and so does the upstream)."""
    from extproc import _headers as rules

    names = (set(rules.ROUTING_HEADERS) | set().union(*rules._SETTABLE_PSEUDO.values())
             | {"host", ":authority", ":method", ":path", ":scheme", ":status",
                "x-envoy-original-path", "content-type"})
    values = {":path": "/evil", ":method": "DELETE", ":scheme": "https", ":status": "418",
              ":authority": "evil.example", "host": "evil.example"}
    return [(kind, action, name, values.get(name, "evil")) for kind in ("request", "response")
            for action in ("set", "add", "remove") for name in sorted(names)]


def _refused(kind: str, action: str, name: str, value: str) -> bool:
    """Whether Headers, as a hook of BypassChecks gets it, refuses the mutation."""
    from extproc import Headers, MutationError

    headers = Headers(kind=kind, allow_routing=BypassChecks.allow_routing_mutations,
                      allow_envoy=BypassChecks.allow_envoy_mutations)
    try:
        if action == "set":
            headers[name] = value
        elif action == "add":
            headers.add(name, value)
        else:
            del headers[name]
    except MutationError:
        return True
    return False


def _seen(kind: str, name: str, reply) -> object:
    """What the other side got of ``name``: the upstream (request), the client (response)."""
    if kind == "response":
        return reply.status if name == ":status" else reply.headers.get(name)
    echoed = reply.json()
    pseudo = {":path": echoed["path"], ":method": echoed["method"]}
    if name in pseudo:
        return pseudo[name]
    return reply.upstream_headers().get("host" if name == ":authority" else name)


def test_envoy_ignores_exactly_the_mutations_headers_refuses(make_stack):
    """The mutations Headers refuses (MutationError) are those a real Envoy ignores: it
    counts them as rejected, or takes them to no effect (``:status`` on a request); every
    other one changes what the upstream or the client gets."""
    cases = _mutation_cases()
    stat = "http.ingress.ext_proc.rejected_header_mutations"
    sent = {"host": "orig.example", "content-type": "text/orig", "x-envoy-original-path": "/o"}
    ignored, counted_but_applied = {}, []
    with make_stack(BypassChecks) as s:
        control = s.get("/orig", headers={**sent, "x-mutation": '["none", "set", "x", ""]'})
        assert control.status == 200
        rejected = s.envoy.stats(stat)[stat]
        for case in cases:
            kind, _, name, _ = case
            reply = s.get("/orig", headers={**sent, "x-mutation": json.dumps(case)})
            assert reply.status in (200, 418), (case, reply)
            total = s.envoy.stats(stat)[stat]
            counted, rejected = total - rejected, total
            unchanged = _seen(kind, name, reply) == _seen(kind, name, control)
            if counted and not unchanged:
                counted_but_applied.append(case)
            ignored[case] = bool(counted) or unchanged
    assert not counted_but_applied  # what Envoy counts as rejected changes nothing
    refused = {case: _refused(*case) for case in cases}
    assert any(refused.values()) and not all(refused.values())
    differ = {case: ("refused" if refused[case] else "allowed",
                     "ignored" if ignored[case] else "applied")
              for case in cases if refused[case] != ignored[case]}
    assert not differ, differ


def test_routing_mutation_applies_when_the_class_allows_it(make_stack):
    with make_stack(RoutingAllowed) as s:
        reply = s.get("/", headers={"host": "orig.example"})
    assert reply.upstream_headers()["host"] == ["rewritten.example"]


def test_buffered_body_larger_than_grpc_default_message_size(make_stack):
    payload = bytes(range(256)) * (5 * 1024 * 1024 // 256)  # 5 MiB, answered as 10 MiB
    with make_stack(BufferedBig) as s:
        reply = s.get("/big", method="POST", body=payload)
    assert reply.status == 200
    echoed = reply.json()
    assert echoed["body_length"] == 2 * len(payload)
    assert reply.upstream_headers()["content-length"] == [str(2 * len(payload))]
    assert echoed["body"].encode("latin-1") == payload + payload



def test_client_cidr_allow_and_deny_honour_xff_trusted_hops(sock_dir, echo):
    """RBAC on the client address X-Forwarded-For yields with 1 trusted hop."""
    from tests.helpers.common import stack

    with stack(HeadersOnly, sock_dir, echo, allow_cidrs=["10.0.0.0/8"],
               deny_cidrs=["10.9.0.0/16"], xff_trusted_hops=1) as s:
        allowed = s.get("/", headers={"x-forwarded-for": "10.1.2.3"})
        denied = s.get("/", headers={"x-forwarded-for": "10.9.1.1"})
        outside = s.get("/", headers={"x-forwarded-for": "192.168.1.1"})
        # The address before the trusted hop is what counts, not the first one in the list.
        spoofed = s.get("/", headers={"x-forwarded-for": "10.1.2.3, 192.168.1.1"})
    assert allowed.status == 200 and allowed.upstream_headers()["x-seen"] == ["1"]
    assert denied.status == 403
    assert outside.status == 403
    assert spoofed.status == 403


def test_client_cidrs_cannot_be_spoofed_with_x_forwarded_for_without_trusted_hops(sock_dir,
                                                                                   echo):
    from tests.helpers.common import stack

    with stack(HeadersOnly, sock_dir, echo, allow_cidrs=["10.0.0.0/8"]) as s:
        spoofed = s.get("/", headers={"x-forwarded-for": "10.1.2.3"})
    with stack(HeadersOnly, sock_dir, echo, deny_cidrs=["127.0.0.0/8"]) as s:
        denied = s.get("/", headers={"x-forwarded-for": "10.1.2.3"})
    assert spoofed.status == 403  # the peer is 127.0.0.1, whatever the header says
    assert denied.status == 403
