"""Bodies and trailers through ``extproc.testing.run`` (no Envoy, no sockets): buffered,
streamed and full-duplex bodies, what a body hook may change, and mode overrides."""

from __future__ import annotations

import json
from typing import ClassVar

from extproc import (
    Body,
    BodyMode,
    Headers,
    MutationError,
    ProcessingMode,
    Processor,
)
from extproc.testing import run

# -- bodies ---------------------------------------------------------------------------------


class JsonRewrite(Processor):
    request_body_mode = BodyMode.BUFFERED

    async def on_request_headers(self, headers: Headers) -> None:
        pass

    async def on_request_body(self, body: Body) -> None:
        document = json.loads(body.data)
        document["added"] = "by the processor"
        body.data = json.dumps(document).encode()


async def test_buffered_body_rewrite_updates_content_length() -> None:
    original = b'{"a": 1}'
    result = await run(JsonRewrite, method="POST", body=original,
                       headers={"content-type": "application/json"})
    assert not result.immediate
    upstream = result.request
    assert upstream is not None
    assert json.loads(upstream.body) == {"a": 1, "added": "by the processor"}
    assert upstream.headers["content-length"] == str(len(upstream.body))
    assert upstream.headers["content-length"] != str(len(original))
    assert result.sent == ["request_headers", "request_body"]


async def test_buffered_body_sees_whole_body_once() -> None:
    seen: list[tuple[bytes, bool]] = []

    class Collect(Processor):
        request_body_mode = BodyMode.BUFFERED

        async def on_request_body(self, body: Body) -> None:
            seen.append((body.data, body.end_of_stream))

    result = await run(Collect, method="POST", body=[b"ab", b"cd", b"ef"])
    assert seen == [(b"abcdef", True)]
    assert result.request is not None
    assert result.request.body == b"abcdef"


class UpperResponse(Processor):
    response_body_mode = BodyMode.STREAMED
    eos_flags: ClassVar[list[bool]] = []

    async def on_response_body(self, body: Body) -> None:
        type(self).eos_flags.append(body.end_of_stream)
        body.data = body.data.upper()


async def test_streamed_response_body_rewritten_per_chunk() -> None:
    UpperResponse.eos_flags = []
    result = await run(UpperResponse, response_body=[b"ab", b"cd", b"ef"])
    assert result.response.chunks == [b"AB", b"CD", b"EF"]
    assert result.response.body == b"ABCDEF"
    assert result.sent == ["response_body"] * 3
    assert UpperResponse.eos_flags == [False, False, True]


class Redact(Processor):
    """Redacts WORD in both bodies, holding back enough bytes to catch a split occurrence."""

    request_body_mode = BodyMode.FULL_DUPLEX_STREAMED
    response_body_mode = BodyMode.FULL_DUPLEX_STREAMED
    WORD = b"password"
    MASK = b"*" * len(WORD)

    def __init__(self) -> None:
        self.held = {"request": b"", "response": b""}

    def _redact(self, direction: str, body: Body) -> None:
        data = (self.held[direction] + body.data).replace(self.WORD, self.MASK)
        if body.end_of_stream:
            self.held[direction] = b""
            body.data = data
            return
        keep = len(self.WORD) - 1
        self.held[direction] = data[-keep:]
        body.data = data[:-keep]

    async def on_request_body(self, body: Body) -> None:
        self._redact("request", body)

    async def on_response_body(self, body: Body) -> None:
        self._redact("response", body)


async def test_full_duplex_redacts_word_split_across_chunks() -> None:
    chunks = [b"my pass", b"word is x"]
    result = await run(Redact, method="POST", body=chunks, response_body=chunks)
    for message in (result.request, result.response):
        assert message is not None
        assert message.body == b"my ******** is x"
        # The whole first chunk was held back, then flushed with the last one.
        assert message.chunks == [b"my ******** is x"]
    assert result.sent == ["request_body", "request_body", "response_body", "response_body"]


async def test_full_duplex_flushes_when_trailers_arrive() -> None:
    chunks = [b"my pass", b"word is x"]
    result = await run(Redact, method="POST", body=chunks, trailers={"x-req-trailer": "1"},
                       response_body=chunks, response_trailers={"x-resp-trailer": "2"})
    assert not result.immediate
    for message in (result.request, result.response):
        assert message is not None
        assert message.body == b"my ******** is x"
        # Held bytes came out only in answer to the trailers.
        assert message.chunks == [b"my ******", b"** is x"]
    assert result.request is not None
    assert result.request.trailers is not None
    assert result.request.trailers["x-req-trailer"] == "1"
    assert result.response.trailers is not None
    assert result.response.trailers["x-resp-trailer"] == "2"
    assert result.sent == ["request_body", "request_body", "request_trailers",
                           "response_body", "response_body", "response_trailers"]


async def test_trailers_hooks_modify_trailers() -> None:
    class Trailers(Processor):
        async def on_request_trailers(self, trailers: Headers) -> None:
            trailers["x-checksum"] = "abc"
            del trailers["x-drop"]

        async def on_response_trailers(self, trailers: Headers) -> None:
            trailers.add("x-extra", "2")

    result = await run(Trailers, method="POST", body=b"data",
                       trailers={"x-drop": "1", "x-keep": "k"},
                       response_trailers={"x-extra": "1"})
    assert result.request is not None
    assert result.request.trailers is not None
    assert result.request.trailers.to_dict() == {"x-keep": "k", "x-checksum": "abc"}
    assert result.response.trailers is not None
    assert result.response.trailers.get_all("x-extra") == ["1", "2"]
    assert result.sent == ["request_trailers", "response_trailers"]


def _header_in_body_hook(mode: BodyMode, caught: list[BaseException]) -> type[Processor]:
    class HeaderFromBody(Processor):
        request_body_mode = mode

        async def on_request_headers(self, headers: Headers) -> None:
            pass

        async def on_request_body(self, body: Body) -> None:
            assert self.request_headers is not None
            try:
                self.request_headers["x-from-body"] = str(len(body.data))
            except Exception as exc:
                caught.append(exc)
                raise

    return HeaderFromBody


async def test_request_headers_locked_in_streamed_body_hook() -> None:
    caught: list[BaseException] = []
    result = await run(_header_in_body_hook(BodyMode.STREAMED, caught), method="POST",
                       body=b"12345")
    assert result.immediate
    assert result.status == 500
    assert len(caught) == 1
    assert isinstance(caught[0], MutationError)
    assert "already sent" in str(caught[0])


async def test_request_headers_mutable_in_buffered_body_hook() -> None:
    caught: list[BaseException] = []
    result = await run(_header_in_body_hook(BodyMode.BUFFERED, caught), method="POST",
                       body=b"12345")
    assert caught == []
    assert not result.immediate
    assert result.request is not None
    assert result.request.headers["x-from-body"] == "5"


async def test_headers_sent_without_hook_are_locked_in_streamed_mode() -> None:
    caught: list[BaseException] = []

    class BodyOnly(Processor):
        request_body_mode = BodyMode.STREAMED

        async def on_request_body(self, body: Body) -> None:
            assert self.request_headers is not None  # sent because of mode= below
            try:
                self.request_headers["x-late"] = "1"
            except Exception as exc:
                caught.append(exc)
                raise

    mode = ProcessingMode(request_headers=True, response_headers=False,
                          request_body=BodyMode.STREAMED)
    result = await run(BodyOnly, method="POST", body=b"data", mode=mode)
    assert result.sent == ["request_headers", "request_body"]
    assert result.status == 500
    assert [type(e) for e in caught] == [MutationError]


async def test_body_mode_envoy_states_wins_over_class() -> None:
    # Envoy's protocol_config names the body mode it was configured with (here BUFFERED, via
    # mode=); the loop answers in that shape although the class asked for STREAMED.
    seen: list[tuple[bytes, bool]] = []

    class Streamed(Processor):
        request_body_mode = BodyMode.STREAMED

        async def on_request_headers(self, headers: Headers) -> None:
            pass

        async def on_request_body(self, body: Body) -> None:
            seen.append((body.data, body.end_of_stream))
            assert self.request_headers is not None
            self.request_headers["x-len"] = str(len(body.data))  # allowed: BUFFERED

    mode = ProcessingMode(request_headers=True, response_headers=False,
                          request_body=BodyMode.BUFFERED)
    result = await run(Streamed, method="POST", body=[b"abc", b"def"], mode=mode)
    assert seen == [(b"abcdef", True)]
    assert not result.immediate
    assert result.request is not None
    assert result.request.headers["x-len"] == "6"


# -- mode override --------------------------------------------------------------------------


class InspectSome(Processor):
    allow_mode_override = True

    async def on_request_headers(self, headers: Headers) -> None:
        if "x-inspect" in headers:
            self.override_mode(response_body=BodyMode.BUFFERED)

    async def on_response_body(self, body: Body) -> None:
        body.data = body.data.upper()


async def test_override_mode_enables_response_body() -> None:
    result = await run(InspectSome, headers={"x-inspect": "1"}, response_body=b"hello")
    assert result.sent == ["request_headers", "response_body"]
    assert result.mode is not None
    assert result.mode.response_body is BodyMode.BUFFERED
    assert result.response.body == b"HELLO"


async def test_without_override_response_body_not_sent() -> None:
    result = await run(InspectSome, response_body=b"hello")
    assert result.sent == ["request_headers"]
    assert result.mode is not None
    assert result.mode.response_body is None
    assert result.response.body == b"hello"


async def test_override_mode_without_allow_fails_closed() -> None:
    caught: list[BaseException] = []

    class NotAllowed(Processor):
        async def on_request_headers(self, headers: Headers) -> None:
            try:
                self.override_mode(response_trailers=True)
            except Exception as exc:
                caught.append(exc)
                raise

    result = await run(NotAllowed, response_trailers={"x-t": "1"})
    assert result.status == 500
    assert result.immediate
    assert len(caught) == 1
    assert isinstance(caught[0], MutationError)
    assert "allow_mode_override" in str(caught[0])
