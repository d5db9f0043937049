"""Processor hooks through ``extproc.testing.run`` (no Envoy, no sockets): header mutations,
immediate responses, and the per-request helpers (dynamic metadata, route cache,
attributes, earlier phases, one instance per request, run_sync, lifespan)."""

from __future__ import annotations

from typing import Any

import pytest

from extproc import (
    Headers,
    ImmediateResponse,
    MutationError,
    Processor,
)
from extproc.testing import lifespan, run, run_sync

# -- headers through run() ------------------------------------------------------------------


class Rewrite(Processor):
    # What this file tests is the mutations, not time: a long deadline, so that a pause of the
    # whole test process (a full garbage collection late in a long suite) is not a 504.
    message_timeout = 5.0

    async def on_request_headers(self, headers: Headers) -> None:
        headers["x-replaced"] = "new"
        headers.add("x-multi", "second")
        headers["x-added"] = "1"
        del headers["x-internal"]

    async def on_response_headers(self, headers: Headers) -> None:
        headers["x-processed"] = "yes"


async def test_header_set_add_remove_reach_upstream() -> None:
    result = await run(Rewrite, headers={"x-replaced": "old", "x-multi": "first",
                                         "x-internal": "secret", "x-keep": "k"})
    upstream = result.request
    assert upstream is not None
    assert upstream.headers["x-replaced"] == "new"
    assert upstream.headers.get_all("x-multi") == ["first", "second"]
    assert upstream.headers["x-added"] == "1"
    assert "x-internal" not in upstream.headers
    assert upstream.headers["x-keep"] == "k"
    assert result.response.headers["x-processed"] == "yes"
    assert result.status == 200
    assert not result.immediate
    assert result.sent == ["request_headers", "response_headers"]


async def test_only_requested_phases_are_sent() -> None:
    class HeadersOnly(Processor):
        async def on_request_headers(self, headers: Headers) -> None:
            headers["x-seen"] = "1"

    result = await run(HeadersOnly, method="POST", body=b"request body",
                       trailers={"x-t": "1"}, response_body=b"response body",
                       response_trailers={"x-rt": "2"})
    assert result.sent == ["request_headers"]
    assert result.request is not None
    assert result.request.body == b"request body"
    assert result.request.headers["x-seen"] == "1"
    assert result.response.body == b"response body"


class Deny(Processor):
    async def on_request_headers(self, headers: Headers) -> ImmediateResponse | None:
        if "x-deny" in headers:
            return ImmediateResponse(403, body=b"denied\n", headers={"x-why": "policy"},
                                     details="policy")
        return None

    async def on_response_headers(self, headers: Headers) -> None:
        headers["x-response"] = "1"


async def test_immediate_response_from_request_headers() -> None:
    result = await run(Deny, headers={"x-deny": "1"}, body=b"payload")
    assert result.immediate
    assert result.request is None
    assert result.status == 403
    assert result.response.body == b"denied\n"
    assert result.response.headers["x-why"] == "policy"
    assert result.details == "policy"
    assert result.sent == ["request_headers"]  # nothing after the answer
    allowed = await run(Deny)
    assert not allowed.immediate
    assert allowed.status == 200
    assert allowed.response.headers["x-response"] == "1"


# -- per-request helpers --------------------------------------------------------------------


async def test_dynamic_metadata_declared_namespace() -> None:
    class Meta(Processor):
        dynamic_metadata_namespaces = ("my.ns",)

        async def on_request_headers(self, headers: Headers) -> None:
            self.set_dynamic_metadata("my.ns", "user", "alice")
            self.set_dynamic_metadata("my.ns", "score", 3)

    result = await run(Meta)
    assert result.dynamic_metadata == {"my.ns": {"user": "alice", "score": 3}}


async def test_clear_route_cache() -> None:
    class Reroute(Processor):
        async def on_request_headers(self, headers: Headers) -> None:
            if "x-reroute" in headers:
                headers[":path"] = "/elsewhere"
                self.clear_route_cache()

    assert (await run(Reroute, headers={"x-reroute": "1"})).route_cache_cleared
    assert not (await run(Reroute)).route_cache_cleared


async def test_clear_route_cache_refused_in_response_phase() -> None:
    caught: list[BaseException] = []

    class Late(Processor):
        async def on_response_headers(self, headers: Headers) -> None:
            try:
                self.clear_route_cache()
            except Exception as exc:
                caught.append(exc)
                raise

    result = await run(Late)
    assert result.status == 500
    assert [type(e) for e in caught] == [MutationError]


async def test_attributes_and_metadata_context() -> None:
    seen: dict[str, Any] = {}

    class Reader(Processor):
        async def on_request_headers(self, headers: Headers) -> None:
            seen["attributes"] = dict(self.attributes)
            seen["metadata"] = self.metadata_context

    await run(Reader, attributes={"request.path": "/x"},
              metadata_context={"ns": {"k": "v"}})
    assert seen["attributes"] == {"request.path": "/x"}
    assert seen["metadata"] == {"ns": {"k": "v"}}


async def test_attributes_empty_without_any() -> None:
    seen: dict[str, Any] = {}

    class Reader(Processor):
        async def on_request_headers(self, headers: Headers) -> None:
            seen["attributes"] = dict(self.attributes)
            seen["metadata"] = self.metadata_context

    await run(Reader)
    assert seen == {"attributes": {}, "metadata": {}}


async def test_later_phases_read_request_headers() -> None:
    class Echo(Processor):
        async def on_request_headers(self, headers: Headers) -> None:
            headers["x-added-early"] = "a"

        async def on_response_headers(self, headers: Headers) -> None:
            assert self.request_headers is not None
            headers["x-user"] = self.request_headers["x-user"]
            headers["x-early"] = self.request_headers["x-added-early"]

    result = await run(Echo, headers={"x-user": "alice"})
    assert result.response.headers["x-user"] == "alice"
    assert result.response.headers["x-early"] == "a"


async def test_request_headers_locked_in_response_phase() -> None:
    caught: list[BaseException] = []

    class TooLate(Processor):
        async def on_request_headers(self, headers: Headers) -> None:
            pass

        async def on_response_headers(self, headers: Headers) -> None:
            assert self.request_headers is not None
            try:
                self.request_headers["x-late"] = "1"
            except Exception as exc:
                caught.append(exc)
                raise

    result = await run(TooLate)
    assert result.status == 500
    assert [type(e) for e in caught] == [MutationError]


async def test_one_instance_per_request() -> None:
    instances: list[Processor] = []  # kept alive, so two instances never share an id()

    class Counter(Processor):
        async def on_request_headers(self, headers: Headers) -> None:
            self.count = getattr(self, "count", 0) + 1
            instances.append(self)
            headers["x-count"] = str(self.count)

        async def on_response_headers(self, headers: Headers) -> None:
            headers["x-count"] = str(self.count)

    first = await run(Counter)
    second = await run(Counter)
    for result in (first, second):
        assert result.request is not None
        assert result.request.headers["x-count"] == "1"
        assert result.response.headers["x-count"] == "1"  # same instance within a request
    assert len(instances) == 2
    assert instances[0] is not instances[1]


def test_run_sync() -> None:
    result = run_sync(Rewrite, headers={"x-internal": "secret"})
    assert result.request is not None
    assert "x-internal" not in result.request.headers
    assert result.request.headers["x-replaced"] == "new"


async def test_lifespan_calls_startup_and_shutdown() -> None:
    events: list[str] = []

    class Lifecycle(Processor):
        @classmethod
        async def on_startup(cls) -> None:
            events.append("startup")

        @classmethod
        async def on_shutdown(cls) -> None:
            events.append("shutdown")

        async def on_request_headers(self, headers: Headers) -> None:
            events.append("request")

    async with lifespan(Lifecycle) as cls:
        assert cls is Lifecycle
        assert events == ["startup"]
        await run(Lifecycle)
    assert events == ["startup", "request", "shutdown"]


async def test_lifespan_shuts_down_after_error() -> None:
    events: list[str] = []

    class Lifecycle(Processor):
        @classmethod
        async def on_shutdown(cls) -> None:
            events.append("shutdown")

    with pytest.raises(KeyError):
        async with lifespan(Lifecycle):
            raise KeyError("x")
    assert events == ["shutdown"]
