"""The failure policy, driven in-process (no Envoy, no sockets): a hook that raises or returns
the wrong thing fails closed (or open, with ``fail_open``), and what a failed hook changed is
discarded."""

from __future__ import annotations

from typing import Any

import pytest

from extproc import (
    Body,
    BodyMode,
    Headers,
    MutationError,
    Processor,
)
from extproc.testing import run


class Boom(Processor):
    async def on_request_headers(self, headers: Headers) -> None:
        headers["x-half-done"] = "1"
        raise RuntimeError("secret-internal-detail")


class BoomOpen(Boom):
    fail_open = True


async def test_hook_exception_fails_closed() -> None:
    result = await run(Boom)
    assert result.immediate
    assert result.request is None
    assert result.status == 500
    assert result.response.body == b"processor error\n"
    assert result.details == "extproc_processor_error"
    assert b"secret-internal-detail" not in result.response.body
    assert "secret-internal-detail" not in result.details


async def test_custom_error_status_and_body() -> None:
    class Unavailable(Boom):
        error_status = 503
        error_body = b"try later\n"

    result = await run(Unavailable)
    assert result.status == 503
    assert result.response.body == b"try later\n"


async def test_hook_exception_fails_open() -> None:
    result = await run(BoomOpen, headers={"x-orig": "o"})
    assert not result.immediate
    assert result.status == 200
    assert result.request is not None
    assert result.request.headers["x-orig"] == "o"
    assert "x-half-done" not in result.request.headers


async def test_fail_open_header_changes_not_applied_in_buffered_body_answer() -> None:
    # In BUFFERED mode header changes travel with the body answer: the failed hook's must not.
    class BoomOpenBuffered(BoomOpen):
        request_body_mode = BodyMode.BUFFERED

        async def on_request_body(self, body: Body) -> None:
            pass

    result = await run(BoomOpenBuffered, method="POST", body=b"data")
    assert result.status == 200
    assert result.request is not None
    assert result.request.body == b"data"
    assert "x-half-done" not in result.request.headers


async def test_fail_open_in_buffered_body_hook_forwards_original() -> None:
    class BodyBoom(Processor):
        fail_open = True
        request_body_mode = BodyMode.BUFFERED

        async def on_request_headers(self, headers: Headers) -> None:
            headers["x-from-headers"] = "kept"

        async def on_request_body(self, body: Body) -> None:
            assert self.request_headers is not None
            self.request_headers["x-from-body"] = "dropped"
            body.data = b"half-done"
            raise RuntimeError("boom")

    result = await run(BodyBoom, method="POST", body=b"original")
    assert result.status == 200
    assert result.request is not None
    assert result.request.body == b"original"
    assert result.request.headers["x-from-headers"] == "kept"
    assert "x-from-body" not in result.request.headers


async def test_hook_returning_wrong_type_fails_closed() -> None:
    class WrongType(Processor):
        async def on_request_headers(self, headers: Headers) -> Any:
            return "continue"

    result = await run(WrongType)
    assert result.immediate
    assert result.status == 500
    assert result.details == "extproc_processor_error"

    class WrongTypeOpen(WrongType):
        fail_open = True

    assert (await run(WrongTypeOpen)).status == 200


async def test_dynamic_metadata_undeclared_namespace_fails_closed() -> None:
    caught: list[BaseException] = []

    class Undeclared(Processor):
        dynamic_metadata_namespaces = ("declared",)

        async def on_request_headers(self, headers: Headers) -> None:
            try:
                self.set_dynamic_metadata("other", "k", "v")
            except Exception as exc:
                caught.append(exc)
                raise

    result = await run(Undeclared)
    assert result.status == 500
    assert result.dynamic_metadata == {}
    assert [type(e) for e in caught] == [MutationError]


# Regression (fixed in 7df7427): fail_open kept the failed hook's dynamic metadata and sent
# it with the next answer.
async def test_fail_open_discards_dynamic_metadata_of_failed_hook() -> None:
    class MetaThenBoom(Processor):
        fail_open = True
        dynamic_metadata_namespaces = ("ns",)

        async def on_request_headers(self, headers: Headers) -> None:
            self.set_dynamic_metadata("ns", "half", "done")
            raise RuntimeError("boom")

        async def on_response_headers(self, headers: Headers) -> None:
            pass

    result = await run(MetaThenBoom)
    assert result.status == 200
    assert result.dynamic_metadata == {}


# A failed fail_open hook's body replacement and mode override are dropped with it: they must
# not ride on the next headers answer (the response's) either.
class ReplaceThenBoom(Processor):
    fail_open = True
    allow_mode_override = True

    async def on_request_headers(self, headers: Headers) -> None:
        if "x-replace" in headers:
            self.replace_body(b"half-done replacement")
        if "x-override" in headers:
            self.override_mode(response_body=BodyMode.BUFFERED)
        raise RuntimeError("boom")

    async def on_response_headers(self, headers: Headers) -> None:
        pass

    async def on_response_body(self, body: Body) -> None:
        body.data = body.data.upper()


@pytest.mark.parametrize("change", ["x-replace", "x-override"])
async def test_fail_open_discards_body_replacement_and_mode_override_of_failed_hook(
        change: str) -> None:
    result = await run(ReplaceThenBoom, method="POST", headers={change: "1"},
                       body=b"original request", response_body=b"original response")
    assert not result.immediate
    assert result.status == 200
    assert result.request is not None
    assert result.request.body == b"original request"
    assert result.response.body == b"original response"
    assert result.sent == ["request_headers", "response_headers"]
    assert result.mode is not None
    assert result.mode.response_body is None


# Regression (fixed in 7df7427): after a fail_open header hook the headers stayed unlocked,
# so a STREAMED body hook's header change was silently dropped.
async def test_headers_locked_after_fail_open_header_hook() -> None:
    caught: list[BaseException] = []

    class OpenThenLate(Processor):
        fail_open = True
        request_body_mode = BodyMode.STREAMED

        async def on_request_headers(self, headers: Headers) -> None:
            raise RuntimeError("boom")

        async def on_request_body(self, body: Body) -> None:
            assert self.request_headers is not None
            try:
                self.request_headers["x-late"] = "1"
            except MutationError as exc:
                caught.append(exc)

    result = await run(OpenThenLate, method="POST", body=b"data")
    assert result.request is not None
    assert "x-late" not in result.request.headers  # Envoy cannot apply it in STREAMED mode
    assert [type(e) for e in caught] == [MutationError]
