"""Every attribute Envoy 1.40 gives a Wasm module, read through Envoy and through the emulator
by the same probe (tests/helpers/wat/properties.wat: in configure, request headers, response
headers and the log callback it reads each path of its configuration and logs the value in hex,
or the status).

The two must answer the same paths in the same callbacks (a path Envoy starts to answer, or
stops answering, fails here), with the same bytes where Envoy's value does not depend on the
run; a stand-in (wasm.properties.STAND_INS) has the type of Envoy's value. Header maps are
compared less the headers Envoy and the test's upstream add on their own, and their sizes each
against its own side's map.
"""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path

import pytest
import wasmtime

from extctl.config import ConfigError, EnvoyOptions, WasmModule
from extctl.testing import EnvoyClient, Exchange, compare_with_envoy
from wasm import ProxyWasm
from wasm.abi import deserialize_map

pytestmark = pytest.mark.envoy

WAT = Path(__file__).resolve().parents[1] / "helpers" / "wat"
NAME, ROOT_ID = "under-test", "probe"

# How each path's value is compared when both sides give one.
EXACT = "exact"
INT = "int"            # a stand-in int, timestamp or duration: 8 little-endian bytes
ADDRESS = "address"    # a stand-in IP:port
UUID = "uuid"          # a stand-in request id
BYTES = "bytes"        # a stand-in message or list: present on both sides, that is all
HEADERS = "headers"    # a header map, less the names Envoy and the upstream add
SIZE = "size"          # a header map's size: the byte size of the same side's map

_TLS = ["tls_version", "subject_local_certificate", "subject_peer_certificate",
        "dns_san_local_certificate", "dns_san_peer_certificate", "uri_san_local_certificate",
        "uri_san_peer_certificate", "sha256_peer_certificate_digest", "peer_certificate"]

PATHS: dict[str, str] = {
    # request
    "request": EXACT, "request.path": EXACT, "request.url_path": EXACT,
    "request.host": EXACT, "request.scheme": EXACT, "request.method": EXACT,
    "request.headers": HEADERS, "request.headers_bytes": SIZE, "request.referer": EXACT,
    "request.useragent": EXACT, "request.time": INT, "request.id": UUID,
    "request.protocol": EXACT, "request.query": EXACT, "request.duration": INT,
    "request.size": EXACT, "request.total_size": INT,
    "request.headers.user-agent": EXACT, "request.headers.x-forwarded-proto": EXACT,
    "request.headers.x-absent": EXACT,
    # response
    "response": EXACT, "response.code": EXACT, "response.code_details": EXACT,
    "response.flags": EXACT, "response.grpc_status": EXACT, "response.headers": HEADERS,
    "response.headers_bytes": SIZE, "response.trailers": HEADERS, "response.size": EXACT,
    "response.total_size": INT, "response.backend_latency": INT,
    "response.headers.x-up": EXACT,
    # connection
    "source": EXACT, "source.address": ADDRESS, "source.port": INT,
    "destination": EXACT, "destination.address": ADDRESS, "destination.port": INT,
    "connection": EXACT, "connection.id": INT, "connection.mtls": EXACT,
    "connection.requested_server_name": EXACT, "connection.transport_failure_reason": EXACT,
    "connection.termination_details": EXACT, "connection_id": INT,
    **{f"connection.{name}": EXACT for name in _TLS},
    # upstream
    "upstream": EXACT, "upstream.address": ADDRESS, "upstream.port": INT,
    "upstream.num_endpoints": EXACT, "upstream.local_address": ADDRESS,
    "upstream.transport_failure_reason": EXACT, "upstream.request_attempt_count": EXACT,
    "upstream.cx_pool_ready_duration": INT, "upstream.locality": EXACT,
    **{f"upstream.{name}": EXACT for name in _TLS},
    # metadata and filter state
    "metadata": EXACT, "metadata.filter_metadata": EXACT, "filter_state": EXACT,
    "upstream_filter_state": EXACT,
    # configuration
    "xds": EXACT, "xds.cluster_name": EXACT, "xds.cluster_metadata": EXACT,
    "xds.listener_direction": EXACT, "xds.listener_metadata": EXACT, "xds.route_name": EXACT,
    "xds.route_metadata": EXACT, "xds.virtual_host_name": EXACT,
    "xds.virtual_host_metadata": EXACT, "xds.upstream_host_metadata": EXACT,
    "xds.upstream_host_locality_metadata": EXACT, "xds.filter_chain_name": EXACT,
    "xds.node": BYTES, "xds.node.id": EXACT, "xds.node.cluster": EXACT,
    "xds.node.metadata": EXACT, "xds.node.locality": EXACT, "xds.node.user_agent_name": EXACT,
    "xds.node.user_agent_version": EXACT, "xds.node.user_agent_build_version": BYTES,
    "xds.node.user_agent_build_version.version": BYTES,
    "xds.node.user_agent_build_version.version.major_number": EXACT,
    "xds.node.user_agent_build_version.version.minor_number": EXACT,
    "xds.node.extensions": BYTES, "xds.node.client_features": EXACT,
    "xds.node.listening_addresses": EXACT, "xds.node.dynamic_parameters": EXACT,
    # the plugin
    "plugin_name": EXACT, "plugin_root_id": EXACT, "plugin_vm_id": EXACT,
    # names earlier Envoys gave a Wasm module, now under xds (NOT_FOUND in 1.40)
    **{name: EXACT for name in ("node", "cluster_name", "cluster_metadata", "route_name",
                                "route_metadata", "listener_direction", "listener_metadata",
                                "upstream_host_metadata")},
}

# Headers Envoy adds on its own (the client's address, ids, its route's and router's
# headers), and the header EnvoyClient's route adds to find each exchange.
ENVOY_OWN = re.compile(r"x-forwarded-for|x-envoy-.*|x-request-id|x-extkit-exchange|server|date")
# What Envoy's codec takes off the response headers once the filters have seen them: the log
# callback's map lacks it, the emulator's keeps it (a header-map matter, not a property's).
ENCODED_OFF = re.compile(r"transfer-encoding")

DENIED = {"x-probe-deny": "1"}
REQUESTS = [
    {"method": "GET", "path": "/a/b?q=1", "headers": {"user-agent": "probe/1",
                                                      "referer": "http://r/"},
     "response_headers": {"x-up": "1"}, "response_body": b"hello"},
    {"method": "POST", "path": "/p", "body": b"abcde", "response_body": [b"xy", b"z"],
     "response_trailers": {"grpc-status": "7", "x-t": "1"}},
    {"method": "GET", "path": "/", "status": 404},  # a response without a body
    {"method": "GET", "path": "/", "headers": DENIED},  # answered locally, 403
]
PHASES = ("configure", "request_headers", "response_headers", "log")
LINE = re.compile(r"^\[[^\]]*\]\[\d+\]\[\w+\]\[wasm\] \[[^\]]*\] wasm log [^:\n]*: "
                  r"(\w+) ([^=\s]+)=(.*)$", re.M)

Seen = dict[tuple[str, str], str]  # (phase, path) -> hex, NOT_FOUND or "status N"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wat") / "properties.wasm"
    path.write_bytes(wasmtime.wat2wasm((WAT / "properties.wat").read_text()))
    return path


def _seen(lines: list[tuple[str, str, str]]) -> Seen:
    return {(phase, path): value for phase, path, value in lines}


def _through_envoy(module: Path) -> tuple[list[Seen], str]:
    plugin = WasmModule(NAME, file=str(module), text="\n".join(PATHS), root_id=ROOT_ID)
    seen = []
    with EnvoyClient(wasm=[plugin], component_log_level="wasm:trace",
                     http1_trailers=True) as client:
        assert client.envoy is not None
        authority = f"127.0.0.1:{client.port}"
        log = client.envoy.log()
        configured = [line for line in LINE.findall(log) if line[0] == "configure"]
        offset = len(log)
        for spec in REQUESTS:
            reply = client.request(authority=authority, **spec)
            assert reply.status == (403 if spec.get("headers") is DENIED
                                    else spec.get("status", 200))
            # the log callback runs after the client has the response
            deadline = time.monotonic() + 10
            while True:
                log = client.envoy.log()
                lines = LINE.findall(log, offset)
                if sum(phase == "log" for phase, _, _ in lines) >= len(PATHS):
                    break
                assert time.monotonic() < deadline, "Envoy's log callback never ran"
                time.sleep(0.02)
            offset = len(log)
            seen.append(_seen(configured + lines))
    return seen, authority


def _through_emulator(module: Path, authority: str) -> list[Seen]:
    plugin = ProxyWasm(module, plugin_configuration="\n".join(PATHS), root_id=ROOT_ID,
                       plugin_name=NAME, vm_id=NAME)
    configured = [line.message for line in plugin.logs]
    seen = []
    for spec in REQUESTS:
        body = spec.get("body", b"")
        response_body = spec.get("response_body", b"")
        # what the filter gets through Envoy from EnvoyClient: http.client's headers
        # (accept-encoding, the length, the rest), then the x-forwarded-proto Envoy adds
        headers = [("accept-encoding", "identity")]
        if body:
            headers.append(("content-length", str(len(body))))
        headers += [*spec.get("headers", {}).items(), ("x-forwarded-proto", "http")]
        answered = list(spec.get("response_headers", {}).items())
        answered.append(("transfer-encoding", "chunked") if isinstance(response_body, list)
                        else ("content-length", str(len(response_body))))
        result = plugin.request(spec["method"], spec["path"], authority=authority,
                                headers=headers, body=body, status=spec.get("status", 200),
                                response_headers=answered, response_body=response_body,
                                response_trailers=spec.get("response_trailers"))
        messages = configured + [line.message for line in result.logs]
        seen.append(_seen([m.group(1, 2, 3) for m in map(_probe_line.match, messages) if m]))
    return seen


_probe_line = re.compile(r"(\w+) ([^=\s]+)=(.*)$")


def _value(hex_or_status: str) -> bytes | None:
    """The value's bytes, None for a status."""
    if hex_or_status == "NOT_FOUND" or hex_or_status.startswith("status "):
        return None
    return bytes.fromhex(hex_or_status)


def _header_map(data: bytes, phase: str) -> dict[bytes, bytes]:
    return {name: value for name, value in deserialize_map(data)
            if not ENVOY_OWN.fullmatch(name.decode("latin-1"))
            and not (phase == "log" and ENCODED_OFF.fullmatch(name.decode("latin-1")))}


def _known(index: int, phase: str, path: str) -> bool:
    """A known difference, of header maps rather than properties: Envoy still lends the
    request headers to the response callbacks of a local reply sent from their own callback
    (the reply goes out before that callback is over); the emulator lends them no more."""
    return (REQUESTS[index].get("headers") is DENIED and phase == "response_headers"
            and path.startswith("request."))


def _differences(index: int, envoy: Seen, emulator: Seen) -> list[str]:
    found: list[str] = []
    for phase in PHASES:
        for path, kind in PATHS.items():
            where = f"request {index} {phase} {path}"
            if _known(index, phase, path):
                continue
            theirs, ours = envoy.get((phase, path)), emulator.get((phase, path))
            if theirs is None or ours is None:
                found.append(f"{where}: not probed (Envoy {theirs}, emulator {ours})")
                continue
            a, b = _value(theirs), _value(ours)
            if a is None or b is None:
                if theirs != ours:
                    found.append(f"{where}: Envoy {theirs[:80]}, emulator {ours[:80]}")
                continue
            if kind == EXACT and a != b:
                found.append(f"{where}: Envoy {a[:80]!r}, emulator {b[:80]!r}")
            elif kind == INT and len(a) != len(b):
                found.append(f"{where}: Envoy's is {len(a)} bytes, emulator's {len(b)}")
            elif kind == ADDRESS and not all(re.fullmatch(rb"127\.0\.0\.1:\d+", v)
                                             for v in (a, b)):
                found.append(f"{where}: Envoy {a!r}, emulator {b!r}: not IP:port")
            elif kind == UUID and not all(re.fullmatch(rb"[0-9a-f-]{36}", v) for v in (a, b)):
                found.append(f"{where}: Envoy {a!r}, emulator {b!r}: not a UUID")
            elif kind == HEADERS and _header_map(a, phase) != _header_map(b, phase):
                found.append(f"{where}: Envoy {_header_map(a, phase)}, "
                             f"emulator {_header_map(b, phase)}")
            elif kind == SIZE:
                found += [f"{where}: {side}'s {value!r} is not its map's size {size}"
                          for side, value, size in _sizes(phase, path, a, b, envoy, emulator)
                          if value != size]
    return found


def _sizes(phase: str, path: str, envoy_value: bytes, emulator_value: bytes,
           envoy: Seen, emulator: Seen) -> list[tuple[str, int, int]]:
    """Each side's size of a header map against the byte size of its own map."""
    of = path.removesuffix("_bytes")
    checked = []
    for side, value, seen in (("Envoy", envoy_value, envoy),
                              ("emulator", emulator_value, emulator)):
        pairs = deserialize_map(bytes.fromhex(seen[(phase, of)]))
        checked.append((side, struct.unpack("<q", value)[0],
                        sum(len(name) + len(v) for name, v in pairs)))
    return checked


def test_every_attribute_envoy_gives_the_emulator_gives(probe: Path) -> None:
    envoy, authority = _through_envoy(probe)
    emulator = _through_emulator(probe, authority)
    found = [difference for index, (theirs, ours) in enumerate(zip(envoy, emulator, strict=True))
             for difference in _differences(index, theirs, ours)]
    assert not found, "\n".join(found)
    # the known difference still holds (when the emulator lends those headers, drop _known)
    denied = REQUESTS.index({"method": "GET", "path": "/", "headers": DENIED})
    assert envoy[denied][("response_headers", "request.path")] == b"/".hex()
    assert emulator[denied][("response_headers", "request.path")] == "NOT_FOUND"
    # the comparison has teeth: Envoy answered in every phase, and not the same everywhere
    answered = {(phase, path) for seen in envoy for (phase, path), value in seen.items()
                if _value(value) is not None}
    assert {phase for phase, _ in answered} == set(PHASES)
    assert ("configure", "xds.node.user_agent_name") in answered
    assert ("request_headers", "xds.cluster_name") in answered
    assert envoy[0][("response_headers", "request.path")] == "NOT_FOUND"
    assert _value(envoy[1][("log", "response.grpc_status")]) == struct.pack("<q", 7)


# What a configuration sets (wasm.configured.FORMS), given to compare_with_envoy, which writes
# it into Envoy's configuration and gives it to the emulator; the probe reads each leaf and
# the attribute holding it.
CONFIGURED: dict[str | tuple[str, ...], str | int | float | bool] = {
    "xds.node.id": "node-1", "xds.node.cluster": "edge",
    "xds.node.metadata.team": "payments",
    "xds.route_name": "checkout",
    "xds.route_metadata.filter_metadata.extkit.tier": "gold",
    "xds.virtual_host_metadata.filter_metadata.extkit.canary": True,
    "xds.cluster_metadata.filter_metadata.extkit.weight": 3,
    ("xds", "listener_metadata", "filter_metadata", "com.example", "zone"): "a",
    "metadata.filter_metadata.extkit.limit": 2.5,
}
READ = ["xds.node.id", "xds.node.cluster", "xds.node.metadata", "xds.node.metadata.team",
        "xds.route_name", "xds.route_metadata", "xds.route_metadata.filter_metadata",
        "xds.route_metadata.filter_metadata.extkit.tier",
        "xds.virtual_host_metadata", "xds.virtual_host_metadata.filter_metadata.extkit.canary",
        "xds.cluster_metadata", "xds.cluster_metadata.filter_metadata.extkit",
        "xds.cluster_metadata.filter_metadata.extkit.weight", "xds.listener_metadata",
        "metadata", "metadata.filter_metadata.extkit.limit"]


def test_what_the_configuration_sets_reads_the_same_through_envoy(probe: Path) -> None:
    requests = [Exchange("GET", "/a")]
    found = compare_with_envoy(probe, requests=requests, root_id=ROOT_ID,
                               configuration="\n".join(READ), name=NAME,
                               properties=CONFIGURED)
    assert found == [], "\n".join(map(str, found))
    # both sides read the values, not NOT_FOUND on both: the emulator's lines hold them
    plugin = ProxyWasm(probe, plugin_configuration="\n".join(READ), root_id=ROOT_ID,
                       properties=CONFIGURED)
    seen = _seen([m.group(1, 2, 3) for m in map(_probe_line.match,
                                                 [line.message for line in plugin.logs]) if m])
    seen.update(_seen([m.group(1, 2, 3) for m in map(
        _probe_line.match, [line.message for line in plugin.get("/a").logs]) if m]))
    assert _value(seen[("configure", "xds.node.id")]) == b"node-1"
    assert _value(seen[("configure", "xds.node.metadata.team")]) == b"payments"
    assert seen[("configure", "xds.route_name")] == "NOT_FOUND"  # no route for the root
    assert _value(seen[("request_headers", "xds.route_name")]) == b"checkout"
    assert _value(seen[("request_headers", "xds.cluster_metadata.filter_metadata.extkit."
                        "weight")]) == struct.pack("<d", 3.0)
    assert _value(seen[("request_headers",
                        "xds.virtual_host_metadata.filter_metadata.extkit.canary")]) == b"\x01"
    assert b"com.example" in (_value(seen[("request_headers", "xds.listener_metadata")]) or b"")
    assert _value(seen[("log", "metadata.filter_metadata.extkit.limit")]) == struct.pack(
        "<d", 2.5)


def test_a_property_envoys_configuration_cannot_set_is_refused(probe: Path) -> None:
    with pytest.raises(ValueError, match=r"property request\.path: not one an Envoy "
                                         r"configuration sets; give one of xds\.node\.id"):
        compare_with_envoy(probe, requests=[Exchange("GET", "/")],
                           properties={"request.path": "/x"})
    with pytest.raises(ValueError, match=r"property xds\.node\.id: Envoy holds it as text"):
        compare_with_envoy(probe, requests=[Exchange("GET", "/")],
                           properties={"xds.node.id": 1})
    with pytest.raises(ConfigError, match=r"property metadata\.filter_metadata\.a\.b: "
                                          r"metadata holds text, a bool or a number"):
        EnvoyOptions(properties={"metadata.filter_metadata.a.b": b"raw"})


@pytest.mark.parametrize(("properties", "message"), [
    ({"metadata.filter_metadata.envoy.lb.canary": "1"}, r"give the path as a tuple"),
    ({"xds.node.metadata.a.b": "1"}, r"give the path as a tuple"),
    ({"xds.route_metadata.filter_metadata.ns.k": float("nan")}, r"not a finite number"),
    ({"xds.route_metadata.filter_metadata.ns.k": 10**400}, r"not a finite number"),
    ({("xds", b"node", "id"): "n"}, r"a tuple of non-empty strings"),
    ({"xds..id": "n"}, r"a tuple of non-empty strings"),
])
def test_a_property_path_or_value_envoy_cannot_hold_is_one_clear_error(probe, properties,
                                                                      message) -> None:
    with pytest.raises(ValueError, match=message):
        ProxyWasm(probe, plugin_configuration="", root_id=ROOT_ID, properties=properties)


def test_a_dotted_namespace_given_as_a_tuple_goes_where_envoy_keeps_it(probe) -> None:
    path = ("xds", "route_metadata", "filter_metadata", "envoy.lb", "canary")
    plugin = ProxyWasm(probe, plugin_configuration="", root_id=ROOT_ID, properties={path: True})
    assert plugin.state.configured.metadata == {"xds.route_metadata": {"envoy.lb": {
        "canary": True}}}
    assert plugin.state.properties == {}  # not an exact path of its own


def test_a_node_given_only_an_id_has_no_metadata_field_on_the_wire() -> None:
    from wasm.configured import Configured
    from wasm.properties import _node

    wire = _node(Configured(node_id="n")).wire()
    assert wire.startswith(b"\x0a\x01n") and b"\x1a\x00" not in wire  # field 3 unset
    assert b"\x1a" in _node(Configured(node_id="n", node_metadata={"a": "b"})).wire()
