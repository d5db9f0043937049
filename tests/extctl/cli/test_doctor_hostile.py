"""``extctl doctor`` against admin endpoints that misbehave on purpose (stdlib servers on
loopback), run as a user runs it: the console script in a process of its own, whose exit code,
``error:`` line, elapsed time and peak RSS (``wait4``) are what is checked. Last, every subtree
of a real Envoy's answers replaced in turn by a value of another shape: a report or one
``error:`` line, never a traceback."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import extproc
from extctl.cli import cli
from extctl.cli.exits import FINDINGS, OK, TRANSPORT
from extctl.config import Deployment, WasmModule
from extctl.diagnose import admin as admin_module
from extctl.diagnose.doctor import CLUSTERS, LISTENERS, ROUTES, STATS
from extctl.testing import EnvoyProcess
from tests.helpers.common import ROOT, http
from tests.helpers.doctor import one_ext_proc_listener
from tests.helpers.hostile import Request, serve
from tests.helpers.procs import Rewrite

EXTCTL = Path(sys.executable).parent / "extctl"
MIB = 1024 * 1024
DEADLINE = 2.0
SLACK = 3.0  # the interpreter's start and imports, on a shared machine
PATHS = (LISTENERS, ROUTES, STATS, CLUSTERS)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mib: float


# A process forked from pytest inherits pytest's RSS peak into its own (Linux keeps the peak
# across exec), so a small launcher starts extctl and reads the peak of its only child.
_LAUNCH = (
    "import os, sys\n"
    "pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    f.write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def doctor(origin: str, *args: str, tmp: Path, timeout: float = DEADLINE,
           limit: float = 60) -> Run:
    """``extctl doctor --admin ORIGIN`` as its own process, and its peak RSS."""
    stamp = time.monotonic_ns()
    out, err, rss = tmp / f"out-{stamp}", tmp / f"err-{stamp}", tmp / f"rss-{stamp}"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _LAUNCH, str(rss), str(EXTCTL), "doctor", "--admin",
             origin, "--timeout", str(timeout), *args],
            stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(limit)
        except subprocess.TimeoutExpired:  # a hung doctor fails the test, not the run
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
    seconds = time.monotonic() - started
    return Run(proc.returncode, out.read_text(errors="replace"),
               err.read_text(errors="replace"), seconds, int(rss.read_text()) / 1024)


def assert_one_error(run: Run, code: int, *words: str) -> None:
    assert run.returncode == code, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for word in words:
        assert word in lines[0], lines[0]


# -- one deadline for the whole exchange ----------------------------------------------------

@pytest.fixture
def stop() -> Iterator[threading.Event]:
    """Set when the test ends: trickling handlers stop."""
    event = threading.Event()
    yield event
    event.set()


def _trickle(req: Request, data: bytes, every: float, stop: threading.Event) -> None:
    for byte in data:
        if stop.wait(every):
            return
        req.wfile.write(bytes([byte]))


HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"


@pytest.mark.parametrize("part", ["status line", "headers", "body"])
def test_a_trickled_answer_ends_at_the_deadline(tmp_path, stop, part):
    """One byte every 0.5 s (60 bytes: 30 s) in the status line, the headers or the body:
    the run ends at --timeout, every read on the way notwithstanding."""
    padding = b"X-Pad: " + b"p" * 60 + b"\r\n"

    def route(req: Request) -> None:
        if part == "status line":
            _trickle(req, b"HTTP/1.1 200 OK, eventually" + b"." * 60, 0.5, stop)
        elif part == "headers":
            req.wfile.write(b"HTTP/1.1 200 OK\r\n")
            _trickle(req, padding, 0.5, stop)
        else:
            req.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
            _trickle(req, b" " * 99, 0.5, stop)

    with serve(route) as server:
        run = doctor(server.origin, tmp=tmp_path)
    assert_one_error(run, TRANSPORT, f"no complete answer within the {DEADLINE:g}s deadline")
    assert run.seconds < DEADLINE + SLACK, run.seconds
    print(f"trickled {part}: {run.seconds:.1f}s")


def test_the_deadline_bounds_all_the_questions_together(tmp_path, stop):
    """Each answer whole within 1.6 s, four questions: the second ends at the deadline."""
    def route(req: Request) -> None:
        req.wfile.write(HEADERS)
        _trickle(req, b"{}", 0.8, stop)

    with serve(route) as server:
        run = doctor(server.origin, tmp=tmp_path)
    assert_one_error(run, TRANSPORT, f"{ROUTES}: no complete answer within the 2s deadline")
    assert run.seconds < DEADLINE + SLACK, run.seconds
    assert server.paths() == [LISTENERS, ROUTES]


def _one_endpoint(path: str) -> dict[str, bytes]:
    """Answers naming one ext_proc filter whose cluster's endpoint is the socket ``path``."""
    listeners = one_ext_proc_listener()
    clusters = {"cluster_statuses": [{"name": "x", "host_statuses": [{
        "address": {"pipe": {"path": path}},
        "health_status": {"eds_health_status": "HEALTHY"}}]}]}
    return {LISTENERS: json.dumps(listeners).encode(), ROUTES: b'{"configs": []}',
            STATS: b"cluster.x.health_check.attempt: 1\n", CLUSTERS: json.dumps(clusters).encode()}


def test_a_local_processor_that_never_answers_is_asked_within_the_same_deadline(tmp_path,
                                                                                sock_dir):
    """Envoy still says healthy; the socket accepts and never answers: the doctor's own
    question ends at the run's deadline, and the endpoint is a problem."""
    import socket

    path = str(sock_dir / "p.sock")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(path)
    listening.listen(8)  # connections wait in the backlog: nobody answers
    answers = _one_endpoint(path)

    def route(req: Request) -> None:
        req.reply(200, answers[req.path])

    try:
        with serve(route) as server:
            run = doctor(server.origin, tmp=tmp_path)
    finally:
        listening.close()
    assert run.returncode == FINDINGS, run.stderr
    assert f"{path} healthy (Envoy's active health check passes)" in run.stdout
    assert f"problem: ext_proc endpoint {path} is unreachable: asked on its socket here, the " \
           "processor does not answer (Deadline Exceeded)" in run.stdout
    assert run.seconds < DEADLINE + SLACK, run.seconds


# -- bounded memory -------------------------------------------------------------------------

def _gzip_bomb(mib: int) -> bytes:
    """``mib`` MiB of ``[`` gzipped (to some 100 KiB), without holding them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"[" * MIB
    return b"".join([*(compressor.compress(chunk) for _ in range(mib)), compressor.flush()])


def _strings(count: int) -> bytes:
    """A million distinct strings: the costliest JSON per byte within the value limit."""
    return b'{"configs":[' + b",".join(b'"%028x"' % i for i in range(count)) + b"]}"


ANSWERS: dict[str, tuple[Callable[[], tuple[bytes, dict[str, str]]], str, float]] = {
    # name: (body and headers, the error, peak RSS bound in MiB)
    "60 MiB of [{},{},...]": (lambda: (b"[" + b"{}," * (20 * MIB) + b"{}]", {}),
                              "answer larger than 33554432 bytes", 120),
    "2 million values in 6 MiB": (lambda: (b"[" + b"{}," * (2 * 10 ** 6) + b"{}]", {}),
                                  "answer of more than 1000000 JSON values", 120),
    "256 MiB gzipped": (lambda: (_gzip_bomb(256), {"Content-Encoding": "gzip"}),
                        "answer larger than 33554432 bytes", 120),
    "a million strings, then more": (lambda: (_strings(admin_module.MAX_VALUES - 10), {}),
                                     "(the doctor reads at most 33554432 in all)", 250),
}


@pytest.mark.parametrize("name", list(ANSWERS))
def test_a_huge_answer_costs_bounded_memory(tmp_path, name):
    """Before: 60 MiB of ``[{},...]`` peaked at 3 GB (four answers held, 25x each)."""
    make, error, bound = ANSWERS[name]
    body, headers = make()

    def route(req: Request) -> None:
        req.reply(200, body, {"Content-Type": "application/json", **headers})

    with serve(route) as server:
        run = doctor(server.origin, tmp=tmp_path, timeout=30)
    assert_one_error(run, TRANSPORT, error)
    assert run.peak_rss_mib < bound, run.peak_rss_mib
    print(f"{name}: peak RSS {run.peak_rss_mib:.0f} MiB")


# -- wrong shapes and format characters -----------------------------------------------------

SHAPES = {
    "a list": (b"[{}, {}]", "(it is a JSON list)"),
    "a number": (b"42", "(it is a JSON number)"),
    "5000 digits": (b"9" * 5000, "a number of 5000 digits"),
    "superscript two": ('"\u00b2"'.encode(), "(it is a JSON string)"),
    "null": (b"null", "(it is a JSON null)"),
    "configs a map": (b'{"configs": {"a": 1}}', "(its 'configs' is a JSON object)"),
    "nesting 200,000 deep": (b"[" * 200_000 + b"]" * 200_000, "JSON nested too deep"),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_an_answer_of_the_wrong_shape_is_one_error_line(tmp_path, name):
    body, error = SHAPES[name]

    def route(req: Request) -> None:
        req.reply(200, body, {"Content-Type": "application/json"})

    with serve(route) as server:
        run = doctor(server.origin, tmp=tmp_path)
    assert_one_error(run, TRANSPORT, f"{server.origin}{LISTENERS}: ", error)


TRICKY = "\u202eevil\u2066x\u200by\x1b[2J\x07"


def test_an_error_status_is_one_line_with_what_the_server_said_escaped(tmp_path):
    def route(req: Request) -> None:
        req.reply(400, f"FieldMask refused {TRICKY}\n".encode() + b"x" * MIB)

    with serve(route) as server:
        run = doctor(server.origin, tmp=tmp_path)
    assert_one_error(run, TRANSPORT, f"{LISTENERS}: HTTP 400: FieldMask refused "
                     "\\u202eevil\\u2066x\\u200by\\x1b[2J\\x07\\nxxx")
    assert len(run.stderr) < 400


def test_format_characters_are_escaped_and_only_what_is_read_is_asked(tmp_path):
    listeners = {"configs": [{
        "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        "static_listeners": [{"listener": {"name": TRICKY, "filter_chains": [{"filters": [{
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                         "http_connection_manager.v3.HttpConnectionManager",
                "rds": {"route_config_name": TRICKY},
                "http_filters": [{"name": "envoy.filters.http.wasm/" + TRICKY}]}}]}]}}]}]}
    routes = {"configs": [{
        "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
        "dynamic_route_configs": [{"route_config": {"name": TRICKY, "virtual_hosts": [
            {"name": TRICKY, "routes": [{"match": {"prefix": TRICKY}}]}]}}]}]}
    answers = {LISTENERS: json.dumps(listeners).encode(), ROUTES: json.dumps(routes).encode(),
               STATS: f"wasm.remote_load_fetch_failures{TRICKY}: 1\n".encode(),
               CLUSTERS: b"{}"}

    def route(req: Request) -> None:
        req.reply(200, answers[req.path])

    with serve(route) as server:
        run = doctor(server.origin, "--wasm", TRICKY, tmp=tmp_path)
    assert run.returncode == OK, run.stderr
    for raw in ("\u202e", "\u2066", "\u200b", "\x1b", "\x07"):
        assert raw not in run.stdout + run.stderr
    escaped = "\\u202eevil\\u2066x\\u200by\\x1b[2J\\x07"
    assert f"listener {escaped}: envoy.filters.http.wasm/{escaped}" in run.stdout
    assert f"  route {escaped}/{escaped} prefix {escaped}: " in run.stdout
    assert server.paths() == list(PATHS)  # no include_eds, no unfiltered /stats


# -- every subtree of a real Envoy's answers, replaced ----------------------------------------

def _paths(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _paths(child, (*at, key))


_RAW = "\x00raw\x00"
NESTED: Any = []
for _ in range(400):
    NESTED = [NESTED]
REPLACEMENTS: dict[str, Any] = {
    "list": [], "map": {}, "int": 7, "string": "x", "null": None, "true": True,
    "superscript two": "\u00b2", "5000-digit string": "9" * 5000,
    "nesting 400 deep": NESTED, "5000-digit number": (_RAW, b"9" * 5000),
    "nesting 200,000 deep": (_RAW, b"[" * 200_000 + b"]" * 200_000),
}


# Every key the doctor reads; each is also added where it is absent, with a value of each
# shape (a route of the real answer has no typed_per_filter_config, say).
READ_KEYS = ("configs", "@type", "static_listeners", "dynamic_listeners", "listener",
    "active_state", "filter_chains", "default_filter_chain", "filters", "typed_config", "name",
    "static_route_configs", "dynamic_route_configs", "route_config", "rds", "route_config_name",
    "scoped_routes", "http_filters", "disabled", "typed_per_filter_config", "match", "prefix",
    "path", "path_separated_prefix", "safe_regex", "regex", "virtual_hosts", "routes",
    "grpc_service", "envoy_grpc", "cluster_name", "config", "vm_config", "code", "remote",
    "local", "http_uri", "uri", "filename", "processing_mode", "cluster_statuses",
    "host_statuses", "stats", "value", "address", "pipe", "socket_address", "port_value",
    "health_status", "eds_health_status", "pending_active_hc", "failed_active_health_check")
ADDED: dict[str, Any] = {"list": [1], "string": "x", "int": 7, "map": {"k": [1]}}


def _added(document: Any, at: tuple[Any, ...], key: str, value: Any) -> bytes:
    mutated = copy.deepcopy(document)
    node = mutated
    for step in at:
        node = node[step]
    node[key] = value
    return json.dumps(mutated).encode()


def _replaced(document: Any, at: tuple[Any, ...], value: Any) -> bytes:
    raw = None
    if isinstance(value, tuple) and value[0] == _RAW:
        value, raw = _RAW, value[1]
    if not at:
        mutated = value
    else:
        mutated = copy.deepcopy(document)
        parent = mutated
        for key in at[:-1]:
            parent = parent[key]
        parent[at[-1]] = value
    text = json.dumps(mutated).encode()
    return text.replace(json.dumps(_RAW).encode(), raw) if raw is not None else text


@pytest.fixture(scope="module")
def real_answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """What Envoy answers the doctor's four questions, with a processor, a Wasm module and
    one request served; the processor is gone afterwards (nothing local to ask)."""
    import tempfile

    import wasmtime

    tmp = tmp_path_factory.mktemp("envoy")
    module = tmp / "plugin.wasm"
    module.write_bytes(wasmtime.wat2wasm((ROOT / "tests/helpers/wat/add_header.wat").read_text()))
    sockets = Path(tempfile.mkdtemp(prefix="xk-", dir="/tmp"))
    socket = str(sockets / "p.sock")
    deployment = Deployment(Rewrite, addresses=[socket],
                            wasm=[WasmModule("tag", file=str(module), text="{}")])
    answers = {}
    with extproc.ServerThread(Rewrite, uds=socket), \
            EnvoyProcess(deployment.envoy_bootstrap(), tmp / "envoy") as envoy:
        assert http(envoy.port, "/").status == 200
        for path in PATHS:
            with urllib.request.urlopen(f"http://{envoy.admin_address}{path}") as answer:
                answers[path] = answer.read()
    os.rmdir(sockets)
    return answers


def _check(result: Any, context: str) -> str:
    """A report (exit 0 or 12) or one ``error:`` line with exit 10; never an exception."""
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        (context, result.exception)
    lines = result.stderr.splitlines()
    if result.exit_code == TRANSPORT:
        assert len(lines) == 1 and lines[0].startswith("error: "), (context, result.stderr)
        assert result.stdout == "", context
        return "error"
    assert result.exit_code in (OK, FINDINGS), (context, result.exit_code, result.stderr)
    if result.exit_code == OK:
        assert lines == [], (context, result.stderr)
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), (context, result.stderr)
    assert result.stdout.startswith(("Envoy admin ", "{")), (context, result.stdout[:200])
    return "report"


def _refused(at: tuple[Any, ...], value: Any) -> bool:
    """Whether a replacement makes the answer one Envoy never gives: not JSON Python reads,
    a top level that is not an object, or its list (configs, cluster_statuses) not a list."""
    if isinstance(value, tuple):
        return True
    if not at:
        return not isinstance(value, dict)
    return len(at) == 1 and not isinstance(value, list)


@pytest.mark.envoy
def test_every_subtree_of_a_real_answer_replaced_is_a_report_or_one_error_line(
        real_answers, monkeypatch):
    served = dict(real_answers)
    monkeypatch.setattr(admin_module.Admin, "get",
                        lambda self, path, budget=None: bytearray(served[path]))
    runner = CliRunner()
    args = ["doctor", "--admin", "127.0.0.1:9", "--app-dir", str(ROOT),
            "tests.helpers.procs:Rewrite", "--wasm", "tag"]
    assert _check(runner.invoke(cli, args), "unchanged") == "report"
    outcomes = {"report": 0, "error": 0}
    run = 0
    for path in (LISTENERS, ROUTES, CLUSTERS):
        document = json.loads(real_answers[path])
        for at in _paths(document):
            for name, value in REPLACEMENTS.items():
                served[path] = _replaced(document, at, value)
                run += 1
                output = ["--output", "json"] if run % 2 else []
                outcome = _check(runner.invoke(cli, [*args, *output]), f"{path} {at} {name}")
                outcomes[outcome] += 1
                # Below the top, a value of another shape is read as absent, not refused.
                assert outcome == ("error" if _refused(at, value) else "report"), \
                    (path, at, name)
        for at in _paths(document):
            node = document
            for step in at:
                node = node[step]
            if not isinstance(node, dict):
                continue
            for key in (k for k in READ_KEYS if k not in node):
                for name, value in ADDED.items():
                    served[path] = _added(document, at, key, value)
                    run += 1
                    output = ["--output", "json"] if run % 2 else []
                    context = f"{path} {at} + {key}: {name}"
                    outcome = _check(runner.invoke(cli, [*args, *output]), context)
                    outcomes[outcome] += 1
                    assert outcome == "report" or (not at and key in ("configs",
                                                                      "cluster_statuses")), \
                        context
        served[path] = real_answers[path]
    lines = real_answers[STATS].decode().splitlines()
    for index, line in enumerate(lines):
        name = line.partition(": ")[0]
        for changed in (f"{name}: \u00b2", f"{name}: {'9' * 5000}", f"{name}: -1",
                        f"{name}: {TRICKY}", f"{name}: ", f"{name}{TRICKY}: 1"):
            served[STATS] = "\n".join([*lines[:index], changed, *lines[index + 1:]]).encode()
            assert _check(runner.invoke(cli, args), f"stats {changed[:80]}") == "report"
    served[STATS] = bytes(range(256)) * 1000
    assert _check(runner.invoke(cli, args), "binary stats") == "report"
    print(f"{run} replacements: {outcomes}")
    assert outcomes["report"] > 1000
