"""Features of the generated standalone Envoy config, each run through a real Envoy:
session persistence across two upstream instances, filter order, local Wasm modules."""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

import extproc
from extctl.config import Deployment, FilterPosition, SessionPersistence, WasmModule
from extctl.harness.echo import EchoServer
from extctl.testing import EnvoyProcess
from tests.helpers.common import WAT, http, stack
from tests.helpers.procs import AppendOrder

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="module")
def two_upstreams() -> Iterator[list[str]]:
    with EchoServer() as first, EchoServer() as second:
        yield [first.address, second.address]


@contextlib.contextmanager
def _envoy(tmp_path: Path, **options) -> Iterator[EnvoyProcess]:
    with EnvoyProcess(Deployment.build(**options).envoy_bootstrap(),
                      tmp_path / "envoy") as envoy:
        yield envoy


def _spread(port: int, requests: dict[str, dict], each: int = 3) -> dict[str, Counter[str]]:
    """For each client key, ``each`` requests with its options: which upstream answered."""
    seen: dict[str, Counter[str]] = {}
    for key, options in requests.items():
        for _ in range(each):
            reply = http(port, "/", **options)
            assert reply.status == 200, (key, reply.status, reply.body[:200])
            seen.setdefault(key, Counter())[reply.headers["x-echo-server"]] += 1
    return seen


def _assert_sticky(seen: dict[str, Counter[str]], upstreams: list[str]) -> None:
    assert sum(sum(c.values()) for c in seen.values()) >= 50
    for key, counts in seen.items():
        assert len(counts) == 1, f"{key} reached {dict(counts)}"
    # Stickiness is per client, not one upstream for everyone (20 keys: all on one upstream
    # by chance is a one-in-half-a-million event).
    assert {next(iter(c)) for c in seen.values()} == set(upstreams), seen


def test_round_robin_without_session_persistence_spreads_one_client(tmp_path, two_upstreams):
    """The control for the tests below: without hashing, one client reaches both upstreams."""
    with _envoy(tmp_path, upstreams=two_upstreams) as envoy:
        seen = _spread(envoy.port, {"one": {"headers": {"x-user": "ada"}},
                                    "two": {"headers": {"x-user": "ada"}}}, each=5)
    assert set(seen["one"] + seen["two"]) == set(two_upstreams)


@pytest.mark.parametrize("algorithm", ["ring_hash", "maglev"])
def test_same_header_value_reaches_the_same_upstream(tmp_path, two_upstreams, algorithm):
    session = SessionPersistence("Header", "x-user", algorithm=algorithm)
    with _envoy(tmp_path, upstreams=two_upstreams, session=session) as envoy:
        seen = _spread(envoy.port, {f"user{i}": {"headers": {"x-user": f"user{i}"}}
                                    for i in range(20)})
    _assert_sticky(seen, two_upstreams)


def test_same_source_address_reaches_the_same_upstream(tmp_path, two_upstreams):
    with _envoy(tmp_path, upstreams=two_upstreams,
                session=SessionPersistence("SourceIP")) as envoy:
        seen = _spread(envoy.port, {f"127.0.0.{i}": {"source": f"127.0.0.{i}"}
                                    for i in range(2, 22)})
    _assert_sticky(seen, two_upstreams)


def test_cookie_set_by_envoy_then_followed(tmp_path, two_upstreams):
    session = SessionPersistence("Cookie", "sticky", cookie_ttl="1h")
    with _envoy(tmp_path, upstreams=two_upstreams, session=session) as envoy:
        first = http(envoy.port, "/")
        cookie = first.headers["set-cookie"]
        match = re.match(r"sticky=([^;]+);.*Max-Age=3600", cookie)
        assert match, cookie
        follow = _spread(envoy.port, {"issued": {"headers": {"cookie": f"sticky={match[1]}"}}},
                         each=5)
        seen = _spread(envoy.port, {f"c{i}": {"headers": {"cookie": f"sticky=c{i}"}}
                                    for i in range(1, 20)})
    assert follow["issued"] == Counter({first.headers["x-echo-server"]: 5})
    _assert_sticky({**seen, **follow}, two_upstreams)


def _wasm(tmp_path: Path, wat: str) -> str:
    path = tmp_path / f"{wat}.wasm"
    path.write_bytes(wasmtime.wat2wasm((WAT / f"{wat}.wat").read_text()))
    return str(path)


@pytest.mark.parametrize(("order", "expected"), [
    ((), ["ext_proc", "wasm"]),  # Envoy Gateway's default: ext_proc, then wasm
    ((FilterPosition("wasm", "before", "ext_proc"),), ["wasm", "ext_proc"]),
    ((FilterPosition("ext_proc", "after", "wasm"),), ["wasm", "ext_proc"]),
])
def test_filter_order_changes_what_the_upstream_sees(tmp_path, sock_dir, echo, order,
                                                     expected):
    wasm = WasmModule("order", file=_wasm(tmp_path, "append_request_header"),
                      text="{}")
    with stack(AppendOrder, sock_dir, echo, wasm=[wasm], filter_order=order) as s:
        reply = s.get("/")
        names = s.envoy.http_filters()
    assert reply.status == 200
    values = [v.strip() for v in ",".join(reply.upstream_headers()["x-order"]).split(",")]
    assert values == expected
    assert [n.split("/")[0].removeprefix("envoy.filters.http.") for n in names] == [
        *expected, "router"]


def test_local_module_and_rbac_order_by_default(tmp_path, echo):
    """A local module runs; RBAC sits after the Wasm filters (Envoy Gateway's default), so a
    denied request was still seen by them."""
    module = WasmModule("resp", file=_wasm(tmp_path, "add_header"))
    with _envoy(tmp_path, upstreams=[echo.address], wasm=[module],
                deny_cidrs=["127.0.0.0/8"]) as envoy:
        denied = http(envoy.port, "/")
    assert denied.status == 403
    assert denied.headers["x-wasm"] == "added"
    moved = (FilterPosition("rbac", "before", "wasm"),)
    with _envoy(tmp_path, upstreams=[echo.address], wasm=[module], deny_cidrs=["127.0.0.0/8"],
                filter_order=moved) as envoy:
        early = http(envoy.port, "/")
    assert early.status == 403
    assert "x-wasm" not in early.headers


@pytest.mark.parametrize("client_cert", [True, False])
def test_processor_over_tcp_with_tls_and_client_certificates(tmp_path, echo, test_ca,
                                                             client_cert):
    from extctl.config import EnvoyOptions, ProcessorTls
    from extproc import ServerThread
    from tests.helpers.oci import free_port
    from tests.helpers.procs import HeadersOnly

    address = f"127.0.0.1:{free_port()}"
    tls = ProcessorTls(str(test_ca["ca.pem"]),
                       str(test_ca["client.pem"]) if client_cert else None,
                       str(test_ca["client.key"]) if client_cert else None)
    with ServerThread(HeadersOnly, address=address, tls_cert=str(test_ca["server.pem"]),
                      tls_key=str(test_ca["server.key"]),
                      tls_client_ca=str(test_ca["ca.pem"])):
        config = Deployment(HeadersOnly, [address], upstreams=[echo.address],
                            envoy=EnvoyOptions(processor_tls=tls))
        with EnvoyProcess(config.envoy_bootstrap(), tmp_path / "tls") as envoy:
            reply = http(envoy.port, "/")
    if client_cert:
        assert reply.status == 200
        assert reply.upstream_headers()["x-seen"] == ["1"]
    else:  # the processor refuses Envoy's handshake; failing closed, Envoy answers 500
        assert reply.status == 500


class ChangesEnvoyHeaders(extproc.Processor):
    allow_envoy_mutations = True

    async def on_request_headers(self, headers: extproc.Headers) -> None:
        headers["x-envoy-foo"] = "changed"
        headers["x-envoy-added"] = "by-processor"


class ChangesEnvoyHeadersWithoutPermission(ChangesEnvoyHeaders):
    """The same filter, configured as a class that does not ask for the permission."""

    allow_envoy_mutations = False


@pytest.mark.parametrize(("configured_from", "permitted"), [
    (ChangesEnvoyHeaders, True), (ChangesEnvoyHeadersWithoutPermission, False)])
def test_allow_envoy_mutations_decides_whether_envoy_applies_x_envoy_changes(
        sock_dir, echo, configured_from, permitted):
    """The processor always sends the x-envoy-* changes; Envoy applies them only when the
    config generated from the class carries the permission."""
    from extproc import ServerThread

    socket_path = str(sock_dir / "p.sock")
    with ServerThread(ChangesEnvoyHeaders, uds=socket_path) as server:
        config = Deployment(configured_from, [socket_path], upstreams=[echo.address])
        with EnvoyProcess(config.envoy_bootstrap(), sock_dir / "envoy") as envoy:
            reply = http(envoy.port, "/", headers={"x-envoy-foo": "original"})
        assert server.server.message_counts.get("request_headers") == 1
    assert reply.status == 200, reply.body[:200]
    seen = reply.upstream_headers()
    if permitted:
        assert seen["x-envoy-foo"] == ["changed"]
        assert seen["x-envoy-added"] == ["by-processor"]
    else:
        assert seen["x-envoy-foo"] == ["original"]
        assert "x-envoy-added" not in seen
