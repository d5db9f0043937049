"""Where a message's body starts and ends, through a real Envoy and through
``extproc.testing``: a chunked message with an empty body, ``content-length: 0``, HTTP/1.1 and
HTTP/2 trailers through the generated configs, and a local answer that comes too late.

Each was a difference between the two that a differential fuzz found; Envoy is the reference.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

import extproc
from extctl.config import Deployment, GatewayOptions, Target
from extctl.config.envoy import to_yaml
from extctl.config.gateway import resources
from extproc import BodyMode, ImmediateResponse, ProcessingMode
from extproc.testing import run_sync
from tests.helpers.crds import validate
from tests.helpers.fuzz_procs import (
    BufferedSuffix,
    FullDuplexSwap,
    LateDeny,
    StreamedUpper,
    TrailerStamp,
)
from tests.helpers.http_peers import CASE, Message, Upstream, send_h1, send_h2
from tests.helpers.patched_envoy import envoy_config, patched_stack
from tests.helpers.procs import HeadersOnly

SENDERS = {"h1": send_h1, "h2": send_h2}


@pytest.fixture
def upstream() -> Any:
    server = Upstream()
    yield server
    server.close()


def _through(cls: type[extproc.Processor], sock_dir: Path, upstream: Upstream, case: str,
             request: Message, answer: Message, protocol: str = "h1", **options: Any) -> Any:
    upstream.answers[case] = (200, answer)
    request.headers.append((CASE, case))
    with patched_stack(cls, sock_dir, upstream.address, **options) as stack:
        client = SENDERS[protocol](stack.envoy.port, request)
    return client, upstream.wait(case)


@pytest.mark.envoy
def test_a_chunked_message_with_an_empty_body_runs_the_body_hook(sock_dir, upstream):
    client, received = _through(BufferedSuffix, sock_dir, upstream, "empty",
                                Message([], [], chunked=True), Message([], [], chunked=True))
    assert received.body == b"!" and received.get("x-p-length") == "0"
    assert client.body == b"!" and client.get("x-p-length") == "0"

    result = run_sync(BufferedSuffix, method="POST", headers={"transfer-encoding": "chunked"},
                      body=b"", response_headers={"transfer-encoding": "chunked"})
    assert result.sent == ["request_headers", "request_body", "response_headers",
                           "response_body"]
    assert result.request is not None and result.request.body == b"!"
    assert result.response.body == b"!"
    # Envoy's HTTP/1 codec takes the framing header out of a request (not of a response).
    assert result.request.headers["x-p-framing"] == received.get("x-p-framing") == "-/-"
    assert result.response.headers["x-p-framing"] == client.get("x-p-framing") == "-/chunked"


@pytest.mark.parametrize("mode", [BodyMode.STREAMED, BodyMode.BUFFERED,
                                  BodyMode.BUFFERED_PARTIAL, BodyMode.FULL_DUPLEX_STREAMED])
@pytest.mark.parametrize("direction", ["request", "response"])
def test_content_length_goes_where_envoy_drops_it_even_without_a_body(mode, direction):
    """Envoy cannot know the length a processor will leave: it drops content-length in these
    modes (BUFFERED keeps it: the headers wait for the body's answer), also from a message
    whose headers end it."""
    both = ProcessingMode(request_headers=True, response_headers=True,
                          request_body=mode, response_body=mode,
                          request_trailers=mode is BodyMode.FULL_DUPLEX_STREAMED,
                          response_trailers=mode is BodyMode.FULL_DUPLEX_STREAMED)
    kept = mode is BodyMode.BUFFERED
    for given in ({"content-length": "0"}, {"content-length": "1"}):
        body = b"x" if given["content-length"] == "1" else b""
        result = run_sync(HeadersOnly, method="POST", mode=both, **(
            {"headers": given, "body": body} if direction == "request"
            else {"response_headers": given, "response_body": body}))
        message = result.request if direction == "request" else result.response
        assert message is not None
        assert message.headers.get("content-length") == (given["content-length"] if kept
                                                         else None)
        assert (f"{direction}_body" in result.sent) is bool(body)


@pytest.mark.envoy
def test_envoy_drops_content_length_zero_and_sends_no_body(sock_dir, upstream):
    """A GET upstream (HTTP/1.1's codec adds no length to it) and an HTTP/2 client (no codec
    adds one): what the filter left, unchanged."""
    upstream.answers["zero"] = (200, Message([("content-length", "0")]))
    with patched_stack(StreamedUpper, sock_dir, upstream.address) as stack:
        client = send_h2(stack.envoy.port, Message([(CASE, "zero"), ("content-length", "0")]),
                         method="GET")
    received = upstream.wait("zero")
    assert received is not None and received.get("x-p-framing") == "0/-"
    assert received.get("content-length") is None and client.get("content-length") is None
    assert client.get("x-p-framing") == "0/-"
    result = run_sync(StreamedUpper, headers={"content-length": "0"},
                      response_headers={"content-length": "0"})
    assert result.sent == ["request_headers", "response_headers"]
    assert result.request is not None
    assert result.request.headers["x-p-framing"] == "0/-"
    assert "content-length" not in result.request.headers
    assert "content-length" not in result.response.headers


@pytest.mark.envoy
@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 304), ("GET", 204)])
@pytest.mark.parametrize("cls", [StreamedUpper, BufferedSuffix])
def test_responses_without_a_body_pass_whatever_their_headers_say(sock_dir, upstream, method,
                                                                  status, cls):
    headers = [("content-length", "5")] if status != 204 else []
    upstream.answers["bodiless"] = (status, Message(list(headers)))
    with patched_stack(cls, sock_dir, upstream.address) as stack:
        client = send_h2(stack.envoy.port, Message([(CASE, "bodiless")]), method=method)
    result = run_sync(cls, method=method, status=status, response_headers=headers)
    assert (client.status, client.complete, client.body) == (status, True, b"")
    assert (result.status, result.reset, result.response.body) == (status, False, b"")
    assert result.response.headers.get("content-length") == client.get("content-length")
    assert "response_body" not in result.sent


@pytest.mark.envoy
@pytest.mark.parametrize("protocol", ["h1", "h2"])
def test_trailer_hooks_run_through_the_generated_config(sock_dir, upstream, protocol):
    """No option given: the config keeps HTTP/1.1 trailers because the class takes them.
    (The HTTP/2 request goes without a content-length: with one, the HTTP/1.1 upstream
    could not be sent trailers.)"""
    request = Message([], [b"body"], trailers=[("x-c-trailer", "t"), ("x-drop", "d")],
                      chunked=True)
    answer = Message([], [b"answer"], trailers=[("x-c-trailer", "a")])
    client, received = _through(TrailerStamp, sock_dir, upstream, f"t-{protocol}", request,
                                answer, protocol)
    assert received.trailers == [("x-c-trailer", "t"), ("x-p-stamp", "request:2")]
    assert client.get("x-p-request-trailers") == "1"
    assert client.trailers == [("x-c-trailer", "a"), ("x-p-stamp", "response:1")]

    result = run_sync(TrailerStamp, method="POST", body=b"body",
                      trailers=[("x-c-trailer", "t"), ("x-drop", "d")], response_body=b"answer",
                      response_trailers=[("x-c-trailer", "a")])
    assert result.request is not None and result.request.trailers is not None
    assert result.request.trailers.items() == received.trailers
    assert result.response.trailers is not None
    assert result.response.trailers.items() == client.trailers
    assert result.response.headers["x-p-request-trailers"] == "1"


@pytest.mark.parametrize("cls", [TrailerStamp, FullDuplexSwap])
def test_trailers_are_kept_exactly_for_classes_that_take_them(cls):
    def enabled(processor: type[extproc.Processor], **options: Any) -> int:
        config = envoy_config(processor, ["/x.sock"], "127.0.0.1:1", **options)
        return to_yaml(config).count("enable_trailers: true")

    assert enabled(cls) == 2  # the listener's codec and the upstream cluster's
    assert enabled(StreamedUpper) == 0
    assert enabled(StreamedUpper, http1_trailers=True) == 2
    assert enabled(cls, http1_trailers=False) == 0


def test_gen_gateway_keeps_trailers_on_the_gateway_for_classes_that_take_them():
    """Through Envoy Gateway, only a full-duplex body takes trailers (its processingMode has
    no trailer setting)."""
    route = [Target("HTTPRoute", "web")]
    with_gateway = Deployment(FullDuplexSwap, ["/x.sock"], gateway=GatewayOptions(
        name="p", targets=route, client_gateway="eg"))
    docs = resources(with_gateway)
    (client,) = [d for d in docs if d["kind"] == "ClientTrafficPolicy"]
    assert client["spec"] == {"targetRefs": [{"group": "gateway.networking.k8s.io",
                                              "kind": "Gateway", "name": "eg"}],
                              "http1": {"enableTrailers": True}}
    for doc in docs:
        validate(doc)
    # Without a Gateway to attach it to, the rendered file says what is missing.
    bare = Deployment(FullDuplexSwap, ["/x.sock"], gateway=GatewayOptions(name="p",
                                                                          targets=route))
    assert "ClientTrafficPolicy" not in [d["kind"] for d in resources(bare)]
    assert "http1.enableTrailers" in bare.render()["gateway.yaml"].split("apiVersion")[0]
    plain = Deployment(StreamedUpper, ["/x.sock"], gateway=GatewayOptions(
        name="p", targets=route, client_gateway="eg"))
    assert "ClientTrafficPolicy" not in [d["kind"] for d in resources(plain)]
    assert "enableTrailers" not in plain.render()["gateway.yaml"]


@pytest.mark.envoy
@pytest.mark.parametrize("protocol", ["h1", "h2"])
def test_an_answer_after_the_response_headers_went_is_a_reset(sock_dir, upstream, protocol,
                                                              caplog):
    """The upstream holds its second chunk until the client has the response headers: the
    hook's 451 then comes after Envoy sent them, and Envoy resets the stream."""
    caplog.set_level(logging.WARNING, logger="extproc")
    gate = threading.Event()
    answer = Message([], [b"first part, ", b"then STOP"], chunked=True, gate=gate)
    upstream.answers["late"] = (200, answer)
    with patched_stack(LateDeny, sock_dir, upstream.address) as stack:
        client = SENDERS[protocol](stack.envoy.port, Message([(CASE, "late")]),
                                   on_headers=gate.set)
    assert (client.status, client.complete, client.body) == (200, False, b"first part, ")
    # The server said so at the hook's answer.
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "after the response headers went to the client" in warning.getMessage()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="extproc"):
        result = run_sync(LateDeny, response_body=[b"first part, ", b"then STOP"])
    assert result.reset and result.immediate
    assert (result.status, result.response.body) == (200, b"first part, ")
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "after the response headers went to the client" in warning.getMessage()
    # Buffered, the hook decides before the headers go: the 451 reaches the client.
    buffered = ProcessingMode(response_body=BodyMode.BUFFERED)
    caplog.clear()
    result = run_sync(LateDeny, response_body=[b"first part, ", b"then STOP"], mode=buffered)
    assert not result.reset and result.status == 451
    assert result.response.body == b"marker found\n"
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


class TrailerDeny(extproc.Processor):
    """A 451 from the response trailers' hook: always after the headers went."""

    message_timeout = 10.0

    async def on_response_trailers(self, trailers: extproc.Headers) -> ImmediateResponse:
        return ImmediateResponse(451, body="no\n")


def test_a_reset_at_the_trailers_leaves_the_client_the_body_already_sent():
    """Without a body phase the body went on before the trailers reached the hook."""
    mode = ProcessingMode(response_trailers=True)
    result = run_sync(TrailerDeny, mode=mode, response_body=[b"hel", b"lo"],
                      response_trailers={"x-t": "1"})
    assert result.reset and result.status == 200
    assert result.response.body == b"hello" and result.response.trailers is None
