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
from crds import validate
from fuzz_procs import BufferedSuffix, FullDuplexSwap, LateDeny, StreamedUpper, TrailerStamp
from http_peers import CASE, Message, Upstream, send_h1, send_h2
from patched_envoy import envoy_config, patched_stack
from procs import HeadersOnly

import extproc
from extctl.config import Deployment, GatewayOptions, Target
from extctl.config.envoy import to_yaml
from extctl.config.gateway import resources
from extproc import BodyMode, ProcessingMode
from extproc.testing import run_sync

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
def test_content_length_zero_stays_when_the_headers_end_the_message(mode, direction):
    both = ProcessingMode(request_headers=True, response_headers=True,
                          request_body=mode, response_body=mode,
                          request_trailers=mode is BodyMode.FULL_DUPLEX_STREAMED,
                          response_trailers=mode is BodyMode.FULL_DUPLEX_STREAMED)
    result = run_sync(HeadersOnly, method="POST", mode=both,
                      **{"headers" if direction == "request" else "response_headers":
                         {"content-length": "0"}})
    message = result.request if direction == "request" else result.response
    assert message is not None and message.headers.get("content-length") == "0"
    assert f"{direction}_body" not in result.sent
    # A body that follows takes the header away (Envoy cannot know its new length), except
    # where Envoy holds the headers until the body's answer (BUFFERED).
    result = run_sync(HeadersOnly, method="POST", mode=both,
                      **{"body" if direction == "request" else "response_body": b"x"})
    message = result.request if direction == "request" else result.response
    assert message is not None
    assert message.headers.get("content-length") == ("1" if mode is BodyMode.BUFFERED
                                                     else None)


@pytest.mark.envoy
def test_envoy_sends_no_body_after_content_length_zero(sock_dir, upstream):
    client, received = _through(StreamedUpper, sock_dir, upstream, "zero",
                                Message([], [b""]), Message([], [b""]))
    assert received.get("x-p-framing") == "0/-" and received.get("content-length") == "0"
    assert client.get("x-p-framing") == "0/-" and client.get("content-length") == "0"
    result = run_sync(StreamedUpper, method="POST", headers={"content-length": "0"},
                      response_headers={"content-length": "0"})
    assert result.sent == ["request_headers", "response_headers"]
    assert result.request is not None
    assert result.request.headers["x-p-framing"] == "0/-"
    assert result.request.headers["content-length"] == "0"
    assert result.response.headers["content-length"] == "0"


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
    caplog.set_level(logging.WARNING, logger="extproc")
    """The upstream holds its second chunk until the client has the response headers: the
    hook's 451 then comes after Envoy sent them, and Envoy resets the stream."""
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
