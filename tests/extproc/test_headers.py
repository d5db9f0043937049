"""Unit tests of ``extproc.Headers`` (plus ``Body`` and ``ImmediateResponse``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2

import extproc
from extproc import Body, Headers, ImmediateResponse, MutationError
from extproc._headers import header_mutation
from extproc.testing import run_sync

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD


def hv(key: str, raw: bytes = b"", value: str = "") -> base_pb2.HeaderValue:
    return base_pb2.HeaderValue(key=key, raw_value=raw, value=value)


def from_proto(values: list[base_pb2.HeaderValue], kind: str = "request",
               allow_routing: bool = False, allow_envoy: bool = False) -> Headers:
    return Headers._from_proto(values, kind, allow_routing, allow_envoy)


def effective_action(option: base_pb2.HeaderValueOption) -> int:
    """The action Envoy's ext_proc applies to one set_headers entry, on any Envoy version.

    Older Envoys read only the deprecated ``append`` flag (unset: false, overwrite); newer ones
    use ``append_action`` when it is not the default (0) and otherwise fall back to ``append``.
    An entry must mean the same to both.
    """
    legacy = APPEND if option.append.value else OVERWRITE
    modern = int(option.append_action) if option.append_action != APPEND else legacy
    assert legacy == modern, f"ambiguous set_headers entry: {option}"
    return int(legacy)


def sets(mutation: Any) -> list[tuple[str, bytes, str, int]]:
    """(key, raw_value, value, effective action) of each set_headers entry."""
    return [(o.header.key, o.header.raw_value, o.header.value, effective_action(o))
            for o in mutation.set_headers]


# -- reading --------------------------------------------------------------------------------


def test_constructor_lower_cases_names() -> None:
    h = Headers({"Content-Type": "text/plain", "X-Mixed-Case": "v"})
    assert list(h) == ["content-type", "x-mixed-case"]
    assert h["CONTENT-TYPE"] == "text/plain"
    assert h.get("X-MIXED-case") == "v"
    assert "X-Mixed-Case" in h


def test_reads_of_repeated_headers() -> None:
    h = from_proto([hv("set-cookie", b"a=1"), hv("x-one", b"1"), hv("set-cookie", b"b=2")])
    assert h["set-cookie"] == "a=1, b=2"
    assert h.get("set-cookie") == "a=1, b=2"
    assert h.get_all("set-cookie") == ["a=1", "b=2"]
    assert h.get_all("x-one") == ["1"]
    assert h.get_all("absent") == []
    assert list(h) == ["set-cookie", "x-one"]
    assert h.keys() == ["set-cookie", "x-one"]
    assert len(h) == 2
    assert h.items() == [("set-cookie", "a=1"), ("set-cookie", "b=2"), ("x-one", "1")]
    assert h.to_dict() == {"set-cookie": "a=1, b=2", "x-one": "1"}
    assert "x-one" in h
    assert "absent" not in h
    assert 42 not in h  # non-str membership is simply False


def test_constructor_accepts_pairs_with_repeats() -> None:
    h = Headers([("Accept", "a"), ("accept", "b")], kind="response")
    assert h.get_all("accept") == ["a", "b"]
    assert len(h) == 1


def test_missing_header() -> None:
    h = Headers({"x-a": "1"})
    with pytest.raises(KeyError):
        _ = h["x-b"]
    assert h.get("x-b") is None
    assert h.get("x-b", "fallback") == "fallback"


def test_non_ascii_bytes_round_trip_as_latin1() -> None:
    h = from_proto([hv("x-name", b"caf\xe9")])
    assert h["x-name"] == "caf\xe9"  # one char per byte
    h["x-copy"] = h["x-name"]
    mutation = h._take_mutation()
    assert sets(mutation) == [("x-copy", b"caf\xe9", "", OVERWRITE)]


def test_value_field_read_when_raw_value_empty() -> None:
    h = from_proto([hv("x-old", value="legacy"), hv("x-new", raw=b"raw")])
    assert h["x-old"] == "legacy"
    assert h["x-new"] == "raw"


def test_equality_with_mapping_and_headers() -> None:
    h = Headers({"x-a": "1"})
    assert h == {"X-A": "1"}
    assert h != {"x-a": "2"}
    assert h == Headers([("x-a", "1")])
    assert h != Headers([("x-a", "1"), ("x-a", "2")])


# -- writing and what reads see ---------------------------------------------------------------


def test_set_replaces_all_values() -> None:
    h = from_proto([hv("x-a", b"1"), hv("x-a", b"2")])
    h["X-A"] = "3"
    assert h["x-a"] == "3"
    assert h.get_all("x-a") == ["3"]
    assert h.changed


def test_set_new_header_is_visible() -> None:
    h = Headers({"x-a": "1"})
    h["x-b"] = "2"
    assert h["x-b"] == "2"
    assert "x-b" in h
    assert list(h) == ["x-a", "x-b"]
    assert len(h) == 2


def test_add_appends_to_existing_values() -> None:
    h = Headers({"x-a": "1"})
    h.add("x-a", "2")
    h.add("x-a", "3")
    assert h.get_all("x-a") == ["1", "2", "3"]
    assert h["x-a"] == "1, 2, 3"


def test_del_removes_and_is_noop_when_absent() -> None:
    h = Headers({"x-a": "1", "x-b": "2"})
    del h["x-a"]
    assert "x-a" not in h
    assert h.get("x-a") is None
    assert list(h) == ["x-b"]
    del h["x-never"]  # no error, as in Envoy
    assert "x-never" not in h


def test_pop_returns_value_and_removes() -> None:
    h = Headers({"x-a": "1"})
    assert h.pop("x-a") == "1"
    assert "x-a" not in h
    assert h.pop("x-a", "gone") == "gone"
    mutation = h._take_mutation()
    assert list(mutation.remove_headers) == ["x-a"]


def test_update_sets_each_name() -> None:
    h = Headers({"x-a": "1", "x-b": "2"})
    h.update({"X-A": "10", "x-c": "3"})
    h.update([("x-d", "4")])
    assert h.to_dict() == {"x-a": "10", "x-b": "2", "x-c": "3", "x-d": "4"}


def test_bytes_values_are_accepted() -> None:
    h = Headers()
    h["x-utf8"] = "é".encode()
    h["x-ba"] = bytearray(b"ba")  # type: ignore[assignment]
    h["x-mv"] = memoryview(b"mv")  # type: ignore[assignment]
    assert h["x-utf8"] == "\xc3\xa9"  # latin-1 view of the UTF-8 bytes
    assert h["x-ba"] == "ba"
    assert h["x-mv"] == "mv"
    mutation = h._take_mutation()
    assert sets(mutation)[0] == ("x-utf8", b"\xc3\xa9", "", OVERWRITE)


# -- folding order ------------------------------------------------------------------------


def test_del_then_set_keeps_value() -> None:
    h = Headers({"x-a": "old"})
    del h["x-a"]
    h["x-a"] = "new"
    assert h["x-a"] == "new"
    mutation = h._take_mutation()
    # Envoy applies removals first, so a remove here would not hurt, but none is needed.
    assert list(mutation.remove_headers) == []
    assert sets(mutation) == [("x-a", b"new", "", OVERWRITE)]


def test_set_then_del_is_absent() -> None:
    h = Headers({"x-a": "old"})
    h["x-a"] = "new"
    del h["x-a"]
    assert "x-a" not in h
    mutation = h._take_mutation()
    assert list(mutation.remove_headers) == ["x-a"]
    assert sets(mutation) == []


def test_add_after_del_keeps_only_new_value() -> None:
    h = Headers({"x-a": "old"})
    del h["x-a"]
    h.add("x-a", "new1")
    h.add("x-a", "new2")
    assert h.get_all("x-a") == ["new1", "new2"]
    mutation = h._take_mutation()
    assert list(mutation.remove_headers) == []
    # The first value overwrites (dropping "old"), the rest append.
    assert sets(mutation) == [("x-a", b"new1", "", OVERWRITE), ("x-a", b"new2", "", APPEND)]


def test_set_then_add() -> None:
    h = Headers({"x-a": "old"})
    h["x-a"] = "one"
    h.add("x-a", "two")
    assert h.get_all("x-a") == ["one", "two"]
    assert sets(h._take_mutation()) == [("x-a", b"one", "", OVERWRITE),
                                        ("x-a", b"two", "", APPEND)]


# -- _take_mutation -------------------------------------------------------------------------


def test_take_mutation_none_when_unchanged() -> None:
    h = from_proto([hv("x-a", b"1")])
    assert h["x-a"] == "1"
    assert not h.changed
    assert h._take_mutation() is None


def test_take_mutation_shape() -> None:
    h = from_proto([hv("x-keep", b"k"), hv("x-gone", b"g"), hv("x-multi", b"m1")])
    h["x-set"] = "s"
    h.add("x-multi", "m2")
    h.add("x-new", "n")
    del h["x-gone"]
    mutation = h._take_mutation()
    assert sets(mutation) == [
        ("x-set", b"s", "", OVERWRITE),
        ("x-multi", b"m2", "", APPEND),
        ("x-new", b"n", "", APPEND),
    ]
    assert list(mutation.remove_headers) == ["x-gone"]
    for option in mutation.set_headers:
        assert option.header.value == ""  # raw_value only: Envoy rejects both set


def test_take_mutation_clears_changes_and_keeps_state() -> None:
    h = from_proto([hv("x-a", b"1"), hv("x-gone", b"g")])
    h["x-b"] = "2"
    h.add("x-a", "1b")
    del h["x-gone"]
    assert h.changed
    assert h._take_mutation() is not None
    assert not h.changed
    assert h._take_mutation() is None  # nothing sent twice
    assert h.to_dict() == {"x-a": "1, 1b", "x-b": "2"}
    assert "x-gone" not in h
    # A later change starts from the new state.
    h.add("x-b", "3")
    assert h.get_all("x-b") == ["2", "3"]
    assert sets(h._take_mutation()) == [("x-b", b"3", "", APPEND)]


def test_take_mutation_state_after_replace_and_remove() -> None:
    h = from_proto([hv("x-a", b"old1"), hv("x-a", b"old2"), hv("x-b", b"b")])
    h["x-a"] = "new"
    del h["x-b"]
    h._take_mutation()
    assert h.get_all("x-a") == ["new"]
    assert "x-b" not in h
    assert h.items() == [("x-a", "new")]


def test_write_only_headers_parse_lazily_and_correctly() -> None:
    h = from_proto([hv("x-a", b"1")])
    h["x-b"] = "2"
    mutation = h._take_mutation()
    assert sets(mutation) == [("x-b", b"2", "", OVERWRITE)]
    assert h.to_dict() == {"x-a": "1", "x-b": "2"}


# -- refused mutations ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["host", ":authority", ":scheme", ":method"])
def test_routing_headers_need_allow_routing(name: str) -> None:
    h = Headers(kind="request")
    with pytest.raises(MutationError, match="allow_routing_mutations"):
        h[name] = "x"
    allowed = Headers(kind="request", allow_routing=True)
    allowed[name] = "example.org"
    assert allowed[name] == "example.org"


def test_path_settable_in_request() -> None:
    h = Headers({":path": "/a"}, kind="request")
    h[":path"] = "/b"
    assert h[":path"] == "/b"


@pytest.mark.parametrize("name", ["x-envoy-original-path", "X-Envoy-Retry-On"])
def test_x_envoy_headers_need_allow_envoy(name: str) -> None:
    with pytest.raises(MutationError, match="x-envoy"):
        Headers()[name] = "1"
    with pytest.raises(MutationError):
        Headers().add(name, "1")
    with pytest.raises(MutationError):
        del Headers({name: "1"})[name]
    h = Headers(allow_envoy=True)
    h[name] = "1"
    assert h[name] == "1"


def test_x_envoy_permission_of_one_class_does_not_leak_to_another() -> None:
    # The header-rule check remembers its verdicts; one class's allow_envoy_mutations must not
    # become every class's.
    class MayChangeEnvoy(extproc.Processor):
        allow_envoy_mutations = True

        async def on_request_headers(self, headers: Headers) -> None:
            headers["x-envoy-foo"] = "changed"

    refusals: list[MutationError] = []

    class MayNot(extproc.Processor):
        async def on_request_headers(self, headers: Headers) -> None:
            for change in (lambda: headers.__setitem__("x-envoy-foo", "changed"),
                           lambda: headers.add("x-envoy-foo", "changed"),
                           lambda: headers.__delitem__("x-envoy-foo")):
                with pytest.raises(MutationError, match="allow_envoy_mutations") as caught:
                    change()
                refusals.append(caught.value)

    for _ in range(2):  # the refused class before and after the permitted one
        result = run_sync(MayNot, headers={"x-envoy-foo": "original"})
        assert result.request is not None and not result.immediate
        assert result.request.headers["x-envoy-foo"] == "original"
        permitted = run_sync(MayChangeEnvoy, headers={"x-envoy-foo": "original"})
        assert permitted.request is not None
        assert permitted.request.headers["x-envoy-foo"] == "changed"
    assert len(refusals) == 6
    # The same holds for bare Headers in one process.
    allowed = Headers({"x-envoy-foo": "1"}, allow_envoy=True)
    allowed["x-envoy-foo"] = "2"
    allowed.add("x-envoy-foo", "3")
    del allowed["x-envoy-foo"]
    for change in (lambda h: h.__setitem__("x-envoy-foo", "2"),
                   lambda h: h.add("x-envoy-foo", "3"),
                   lambda h: h.__delitem__("x-envoy-foo")):
        with pytest.raises(MutationError, match="x-envoy"):
            change(Headers({"x-envoy-foo": "1"}))


@pytest.mark.parametrize("name", [":path", ":method", ":authority", ":scheme", ":status", "host"])
def test_removing_pseudo_headers_or_host_refused(name: str) -> None:
    for kind in ("request", "response"):
        h = Headers({name: "v"}, kind=kind, allow_routing=True)
        with pytest.raises(MutationError):
            del h[name]
        with pytest.raises(MutationError):
            h.pop(name)
        assert h[name] == "v"
        assert not h.changed


def test_pseudo_headers_by_kind() -> None:
    with pytest.raises(MutationError, match=":status"):
        Headers(kind="request")[":status"] = "200"
    with pytest.raises(MutationError, match=":path"):
        Headers(kind="response")[":path"] = "/x"
    with pytest.raises(MutationError):
        Headers(kind="response", allow_routing=True)[":authority"] = "a"
    with pytest.raises(MutationError):
        Headers(kind="trailers")[":path"] = "/x"
    response = Headers({":status": "200"}, kind="response")
    response[":status"] = "404"
    assert response[":status"] == "404"


def test_add_on_pseudo_header_refused() -> None:
    h = Headers({":path": "/"}, kind="request")
    with pytest.raises(MutationError, match="single-valued"):
        h.add(":path", "/other")
    with pytest.raises(MutationError):
        Headers(kind="response").add(":status", "200")
    assert h.get_all(":path") == ["/"]


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\x00b", b"a\r\nb", "\n"])
def test_cr_lf_nul_in_values_refused(value: str | bytes) -> None:
    h = Headers()
    with pytest.raises(MutationError, match="CR, LF or NUL"):
        h["x-a"] = value
    with pytest.raises(MutationError):
        h.add("x-a", value)
    assert "x-a" not in h
    assert not h.changed


@pytest.mark.parametrize("name", ["x a", "", "x:y", ":", "::path", "x\n", "x\u00e9", "a/b"])
def test_invalid_names_refused(name: str) -> None:
    h = Headers()
    with pytest.raises(MutationError, match="invalid header name"):
        h[name] = "v"
    with pytest.raises(MutationError):
        h.add(name, "v")
    assert not h.changed


def test_non_str_name_refused() -> None:
    with pytest.raises(MutationError):
        Headers()[b"x-a"] = "v"  # type: ignore[index]


def test_non_latin1_str_value_refused_but_bytes_accepted() -> None:
    h = Headers()
    with pytest.raises(MutationError, match="latin-1"):
        h["x-a"] = "snowman \u2603"
    h["x-a"] = "snowman \u2603".encode()
    assert h["x-a"].encode("latin-1") == "snowman \u2603".encode()


@pytest.mark.parametrize("value", [None, 1.5, True, ["a"], {"a": 1}, object()])
def test_non_str_bytes_values_refused(value: object) -> None:
    h = Headers()
    with pytest.raises(MutationError, match="must be str or bytes"):
        h["x-a"] = value  # type: ignore[assignment]
    with pytest.raises(MutationError):
        h.add("x-a", value)  # type: ignore[arg-type]
    assert not h.changed


@pytest.mark.parametrize("value", ["abc", "20", "2000", "600", "099", " 200", "", "-20"])
def test_bad_status_values_refused(value: str) -> None:
    h = Headers({":status": "200"}, kind="response")
    with pytest.raises(MutationError, match=":status"):
        h[":status"] = value
    assert h[":status"] == "200"


# Regression: 1xx and non-ASCII digits were accepted before 7df7427; Envoy's mutation checker
# ignores a :status below 200 and cannot parse "2\u00b2\u00b3" (str.isdigit() accepts it).
@pytest.mark.parametrize("value", ["100", "199", "2\u00b2\u00b3", "\u00b9\u00b2\u00b3"])
def test_status_values_envoy_ignores_refused(value: str) -> None:
    h = Headers({":status": "200"}, kind="response")
    with pytest.raises(MutationError):
        h[":status"] = value


def test_good_status_values_accepted() -> None:
    h = Headers(kind="response")
    for value in ("200", "404", "599", b"503"):
        h[":status"] = value
    assert h[":status"] == "503"


def test_mutation_error_is_value_error() -> None:
    assert issubclass(MutationError, ValueError)
    assert issubclass(MutationError, extproc.ExtprocError)
    with pytest.raises(ValueError):
        Headers()["host"] = "x"


# -- locking --------------------------------------------------------------------------------


def test_lock_refuses_every_mutation_with_reason() -> None:
    h = Headers({"x-a": "1"})
    h._lock("request headers were already sent on")
    mutations: list[Callable[[], object]] = [
        lambda: h.__setitem__("x-b", "2"),
        lambda: h.add("x-a", "2"),
        lambda: h.__delitem__("x-a"),
        lambda: h.pop("x-a"),
        lambda: h.update({"x-c": "3"}),
    ]
    for mutate in mutations:
        with pytest.raises(MutationError, match=r"^request headers were already sent on$"):
            mutate()
    assert h.to_dict() == {"x-a": "1"}  # reads still work, nothing changed
    assert not h.changed


# -- header_mutation ------------------------------------------------------------------------


def test_header_mutation_helper() -> None:
    mutation = header_mutation({"X-Why": "policy", "x-raw": b"\xff"})
    assert sets(mutation) == [("x-why", b"policy", "", OVERWRITE),
                              ("x-raw", b"\xff", "", OVERWRITE)]
    assert list(mutation.remove_headers) == []
    assert header_mutation(None) is None
    assert header_mutation({}) is None
    with pytest.raises(MutationError):
        header_mutation({"x-envoy-foo": "1"})
    with pytest.raises(MutationError):
        header_mutation({":path": "/"})  # default kind is response
    assert sets(header_mutation({":path": "/"}, kind="request")) == [
        (":path", b"/", "", OVERWRITE)]


# -- Body -----------------------------------------------------------------------------------


def test_body_data_and_changed() -> None:
    body = Body(b"abc", end_of_stream=True)
    assert body.data == b"abc"
    assert len(body) == 3
    assert body.end_of_stream
    assert not body.changed
    body.data = bytearray(b"xy")
    assert body.changed
    assert body.data == b"xy"
    assert type(body.data) is bytes
    body.data = memoryview(b"z")
    assert body.data == b"z"


def test_body_assigning_same_data_counts_as_change() -> None:
    body = Body(b"abc")
    body.data = b"abc"
    assert body.changed


@pytest.mark.parametrize("value", ["text", None, 5, [b"a"]])
def test_body_data_type_checked(value: object) -> None:
    body = Body(b"abc")
    with pytest.raises(TypeError, match=r"Body\.data must be bytes"):
        body.data = value  # type: ignore[assignment]
    assert body.data == b"abc"
    assert not body.changed


# -- ImmediateResponse ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [0, 100, 199, 1000, 65536])
def test_immediate_response_status_refused_where_envoy_would_not_send_it(status: int) -> None:
    with pytest.raises(ValueError, match=str(status)):
        ImmediateResponse(status)


@pytest.mark.parametrize("status", [200, 299, 418, 425, 451, 499, 600, 999])
def test_immediate_response_status_envoy_sends_as_is(status: int) -> None:
    assert ImmediateResponse(status).to_proto().status.code == status


def test_immediate_response_grpc_status_range() -> None:
    with pytest.raises(ValueError, match="grpc_status"):
        ImmediateResponse(403, grpc_status=17)
    assert ImmediateResponse(403, grpc_status=7).to_proto().grpc_status.status == 7


def test_immediate_response_to_proto() -> None:
    message = ImmediateResponse(403, body=b"denied\n", headers={"x-why": "policy"},
                                details="policy_denied").to_proto()
    assert message.status.code == 403
    assert message.body == b"denied\n"
    assert message.details == "policy_denied"
    assert sets(message.headers) == [("x-why", b"policy", "", OVERWRITE)]
    assert not message.HasField("grpc_status")


def test_immediate_response_str_body_encoded_and_no_headers() -> None:
    message = ImmediateResponse(429, body="caf\u00e9 \u2603").to_proto()
    assert message.status.code == 429
    assert message.body == "caf\u00e9 \u2603".encode()
    assert not message.HasField("headers")


@pytest.mark.parametrize("kwargs", [
    {"headers": {"x-bad": "a\nb"}}, {"headers": {"x bad": "1"}}, {"headers": {"x": object()}},
    {"headers": [("x", "1")]}, {"body": 3}, {"body": None}, {"details": 3},
    {"grpc_status": True}, {"grpc_status": "1"},
])
def test_immediate_response_bad_values_refused_where_the_hook_builds_it(kwargs) -> None:
    # At construction, inside the hook: the class's fail policy applies to it.
    with pytest.raises(MutationError):
        ImmediateResponse(403, **kwargs)
