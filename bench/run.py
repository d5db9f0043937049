"""Benchmark harness: a real Envoy (--concurrency 1, loopback) driven by wrk; each candidate
ext_proc server on a Unix socket (``--tcp``: loopback TCP); candidates alternated round by round
in ONE run; medians of the rounds; ratios against the minimal hand-written servicer. The
transport is a candidate dimension: ``extkit`` is served by grpc.aio, ``extkit-pyvoy`` by the
same processor inside an Envoy process (``extctl serve --transport pyvoy``).

    .venv/bin/python bench/run.py                      # every scenario, writes bench/RESULTS.md
    .venv/bin/python bench/run.py --scenario headers --rounds 5 --no-write
    .venv/bin/python bench/run.py --profile            # also a py-spy flame graph per scenario
    .venv/bin/python bench/run.py --scenario observability --baseline main

The ``observability`` scenario is the headers workload served without and with ``--admin``,
with tracing on, and by the code of ``--baseline REV`` (extproc and extctl as of that revision,
default: where HEAD left ``main``), so what observability costs, on and off, is measured in one run.

Per candidate: requests/s, p50/p99 latency (wrk), and the ext_proc server's CPU microseconds per
request (utime+stime of the server and all its processes, from /proc). Upstreams are a second
Envoy listener answering with ``direct_response``, so no Python upstream limits the numbers.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import procs  # noqa: E402
from envoy.config.listener.v3 import listener_pb2  # noqa: E402

from extctl.config import Deployment  # noqa: E402
from extctl.config.envoy import UPSTREAM_CLUSTER  # noqa: E402
from extctl.testing import EnvoyProcess, find_envoy  # noqa: E402
from extproc import ProcessingMode  # noqa: E402

ENVOY_DEFAULT = ProcessingMode(request_headers=True, response_headers=True)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
STREAMED_BODY = (b"line with a secret in it, " * 41 + b"\n") * (MIB // (26 * 41 + 1) + 1)
STREAMED_BODY = STREAMED_BODY[:MIB]


def _json_body(size: int) -> str:
    """A JSON document of exactly ``size`` bytes."""
    items: list[dict[str, Any]] = []
    while len(json.dumps({"items": items, "pad": ""})) < size - 64:
        items.append({"id": len(items), "name": f"item-{len(items)}", "tags": ["a", "b"]})
    pad = size - len(json.dumps({"items": items, "pad": ""}))
    return json.dumps({"items": items, "pad": "x" * pad})


BUFFERED_BODY = _json_body(64 * 1024)


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    server: str | None  # "minimal:WORK", "extkit:Class", or None: Envoy alone
    processor: type | None = None  # whose processing mode Envoy uses (None: Envoy alone)
    mode: ProcessingMode | None = None  # overrides the class's derived mode
    workers: int = 1
    args: tuple[str, ...] = ()  # more `extctl serve` options
    env: tuple[tuple[str, str], ...] = ()  # more environment variables
    baseline: bool = False  # serve with the --baseline revision's code
    transport: str = "grpcio"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    candidates: tuple[Candidate, ...]
    ratios: tuple[tuple[str, str], ...]  # (candidate, against)
    upstream_body: bytes | None = None  # an upstream answering this; None: direct_response
    post_body: str | None = None  # wrk POSTs this
    connections: int = 16
    throughput: bool = False  # report MB/s of upstream_body
    note: str = ""


def _minimal(work: str, mode: ProcessingMode, description: str, name: str) -> Candidate:
    return Candidate(name, description, f"minimal:{work}", procs.BothHeaders, mode)


def _extkit(cls: type, description: str, name: str, workers: int = 1,
            **options: Any) -> Candidate:
    return Candidate(name, description, f"extkit:{cls.__name__}", cls, workers=workers,
                     **options)


def _pyvoy(cls: type, description: str, name: str = "extkit-pyvoy") -> Candidate:
    return _extkit(cls, description + ", pyvoy transport", name, transport="pyvoy")


ENVOY = Candidate("envoy", "Envoy alone (no ext_proc filter): the ceiling", None)
SCENARIOS = (
    Scenario(
        "headers",
        "Headers: one header set per phase; Envoy answers with direct_response",
        (
            ENVOY,
            _minimal("headers", ENVOY_DEFAULT, "minimal grpc.aio servicer, Envoy's default "
                     "mode (request and response headers)", "minimal"),
            _extkit(procs.BothHeaders, "envoy-extkit doing the same (derived mode: request "
                    "and response headers)", "extkit"),
            _extkit(procs.RequestHeader, "envoy-extkit request-headers-only processor "
                    "(derived mode: request headers only)", "extkit-req"),
            _minimal("headers", ProcessingMode(request_headers=True, response_headers=False),
                     "minimal servicer, request headers only (for reference)", "minimal-req"),
            _pyvoy(procs.BothHeaders, "envoy-extkit, request and response headers"),
        ),
        ratios=(("extkit", "minimal"), ("extkit-req", "minimal"),
                ("extkit-req", "minimal-req"), ("extkit-pyvoy", "minimal"),
                ("extkit-pyvoy", "extkit")),
    ),
    Scenario(
        "observability",
        "Observability: the headers workload (both headers) without and with --admin, with "
        "tracing, and with the --baseline revision's code",
        (
            _extkit(procs.BothHeaders, "envoy-extkit as of the --baseline revision",
                    "extkit-base", baseline=True),
            _extkit(procs.BothHeaders, "envoy-extkit, no --admin, no tracing", "extkit"),
            _extkit(procs.BothHeaders, "envoy-extkit with --admin (Prometheus metrics "
                    "recorded per stream and hook)", "extkit-admin",
                    args=("--admin", "127.0.0.1:0")),
            _extkit(procs.BothHeaders, "envoy-extkit with tracing on (every request sampled, "
                    "a span per stream and hook, console exporter to /dev/null)",
                    "extkit-otel", env=(("OTEL_TRACES_EXPORTER", "console"),)),
        ),
        ratios=(("extkit-admin", "extkit"), ("extkit", "extkit-base"),
                ("extkit-otel", "extkit")),
    ),
    Scenario(
        "workers",
        "Workers: envoy-extkit with 2 worker processes next to 1 (headers as above)",
        (
            _minimal("headers", ENVOY_DEFAULT, "minimal servicer (one process)", "minimal"),
            _extkit(procs.BothHeaders, "envoy-extkit, 1 worker", "extkit-1"),
            _extkit(procs.BothHeaders, "envoy-extkit, 2 workers", "extkit-2", workers=2),
        ),
        ratios=(("extkit-2", "extkit-1"), ("extkit-2", "minimal"), ("extkit-1", "minimal")),
        note="2 CPUs are shared by Envoy, wrk and the workers, so 2 workers cannot double.",
    ),
    Scenario(
        "streamed",
        "STREAMED: 1 MiB responses from an upstream, every chunk rewritten",
        (
            Candidate("envoy", "Envoy alone, same upstream", None),
            _minimal("streamed", ProcessingMode(request_headers=False, response_headers=False,
                     response_body=procs.StreamedRewrite.response_body_mode),
                     "minimal servicer rewriting each chunk", "minimal"),
            _extkit(procs.StreamedRewrite, "envoy-extkit rewriting each chunk", "extkit"),
            _pyvoy(procs.StreamedRewrite, "envoy-extkit rewriting each chunk"),
        ),
        ratios=(("extkit", "minimal"), ("extkit-pyvoy", "minimal"), ("extkit-pyvoy", "extkit")),
        upstream_body=STREAMED_BODY,
        connections=4,
        throughput=True,
    ),
    Scenario(
        "buffered",
        "BUFFERED: 64 KiB JSON request bodies, a field added, sent upstream",
        (
            Candidate("envoy", "Envoy alone, same upstream", None),
            _minimal("buffered", ProcessingMode(request_headers=False, response_headers=False,
                     request_body=procs.BufferedJson.request_body_mode),
                     "minimal servicer rewriting the JSON", "minimal"),
            _extkit(procs.BufferedJson, "envoy-extkit rewriting the JSON", "extkit"),
            _pyvoy(procs.BufferedJson, "envoy-extkit rewriting the JSON"),
        ),
        ratios=(("extkit", "minimal"), ("extkit-pyvoy", "minimal"), ("extkit-pyvoy", "extkit")),
        upstream_body=b"ok\n",
        post_body=BUFFERED_BODY,
    ),
    Scenario(
        "latency",
        "Latency at concurrency 1 (wrk -c1): what the processor adds to Envoy alone",
        (
            ENVOY,
            _minimal("headers", ENVOY_DEFAULT, "minimal servicer, both headers", "minimal"),
            _extkit(procs.BothHeaders, "envoy-extkit, both headers", "extkit"),
            _extkit(procs.RequestHeader, "envoy-extkit, request headers only", "extkit-req"),
            _pyvoy(procs.BothHeaders, "envoy-extkit, both headers"),
        ),
        ratios=(("extkit", "minimal"), ("extkit-pyvoy", "minimal")),
        connections=1,
    ),
)


# -- measuring --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            found.extend(_descendants(int(child)))
    return found


def _cpu_ticks(pid: int) -> int:
    total = 0
    for p in _descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def _listen_addresses(candidate: Candidate, workdir: Path, tcp: bool) -> tuple[str, list[str]]:
    """(what the server is told, every address Envoy must list)."""
    if tcp:
        base = _free_port() if candidate.workers == 1 else 21000 + (os.getpid() % 1000) * 4
        listen = f"127.0.0.1:{base}"
        return listen, [f"127.0.0.1:{base + i}" for i in range(candidate.workers)]
    listen = str(workdir / "p.sock")
    if candidate.workers == 1:
        return listen, [listen]
    return listen, [str(workdir / f"p-{i}.sock") for i in range(candidate.workers)]


_BASELINE: dict[str, Path] = {}


def _baseline_tree(revision: str) -> Path:
    """extproc/ and extctl/ as of ``revision``, unpacked once per run."""
    if revision not in _BASELINE:
        target = Path(tempfile.mkdtemp(prefix="xk-bench-base-", dir="/tmp"))
        atexit.register(shutil.rmtree, target, True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "extproc",
                                  "extctl"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        _BASELINE[revision] = target
    return _BASELINE[revision]


# What the extkit-base candidate runs: where this branch left main, unless --baseline says.
BASELINE_REVISION = subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
                                   capture_output=True, text=True).stdout.strip() or "main"


def _start_server(candidate: Candidate, listen: str, addresses: list[str],
                  tcp: bool) -> subprocess.Popen[bytes] | None:
    if candidate.server is None:
        return None
    kind, _, arg = candidate.server.partition(":")
    env = {**os.environ, "PYTHONPATH": str(BENCH), **dict(candidate.env)}
    if candidate.baseline:
        env["PYTHONPATH"] = f"{_baseline_tree(BASELINE_REVISION)}{os.pathsep}{BENCH}"
    if kind == "minimal":
        command = [sys.executable, str(BENCH / "minimal_servicer.py"), arg, listen]
    elif kind == "cmd":
        command = [*arg.split(), listen]
    else:
        command = [sys.executable, "-m", "extctl", "serve", f"procs:{arg}",
                   "--address" if tcp else "--uds", listen, "--workers", str(candidate.workers),
                   "--log-level", "warning", *candidate.args]
        if candidate.transport != "grpcio":  # the baseline's code may not know the option
            command += ["--transport", candidate.transport]
    # Started outside the checkout: `python -m` puts the working directory first on sys.path,
    # where it would shadow the baseline tree of PYTHONPATH.
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            cwd=tempfile.gettempdir())
    deadline = time.monotonic() + 30
    for address in addresses:
        while not _listening(address, tcp):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{candidate.name}: server did not come up on {address}")
            time.sleep(0.05)
    return proc


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server drains), then SIGKILL after 15 s."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _listening(address: str, tcp: bool) -> bool:
    if not tcp:
        return os.path.exists(address)
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def _envoy_config(scenario: Scenario, candidate: Candidate, addresses: list[str]) -> Any:
    upstream_port = _free_port() if scenario.upstream_body is not None else None
    message = Deployment.build(
        candidate.processor, addresses=addresses if candidate.processor else [],
        processing_mode=candidate.mode, message_timeout=5.0,
        upstreams=[f"127.0.0.1:{upstream_port}"] if upstream_port else []).envoy_bootstrap()
    if upstream_port is not None:
        # The upstream: a second listener of the same Envoy answering with direct_response.
        listener = listener_pb2.Listener()
        listener.CopyFrom(message.static_resources.listeners[0])
        listener.name = "upstream"
        listener.address.socket_address.port_value = upstream_port
        from envoy.extensions.filters.network.http_connection_manager.v3 import (
            http_connection_manager_pb2 as hcm_pb2,
        )

        manager = hcm_pb2.HttpConnectionManager()
        listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
        del manager.http_filters[:-1]  # the router only
        if scenario.post_body is not None:
            # Read the whole request before answering: an answer that races the upload
            # resets it, which would be counted against the candidate.
            from envoy.extensions.filters.http.buffer.v3 import buffer_pb2

            buffer = hcm_pb2.HttpFilter(name="envoy.filters.http.buffer")
            buffer.typed_config.Pack(buffer_pb2.Buffer(max_request_bytes={"value": 4 * MIB}))
            manager.http_filters.insert(0, buffer)
        route_config = manager.route_config
        route_config.max_direct_response_body_size_bytes.value = len(scenario.upstream_body or b"")
        route = route_config.virtual_hosts[0].routes[0]
        route.ClearField("route")
        route.direct_response.status = 200
        route.direct_response.body.inline_bytes = scenario.upstream_body or b""
        listener.filter_chains[0].filters[0].typed_config.Pack(manager)
        message.static_resources.listeners.append(listener)
        assert message.static_resources.clusters[-1].name == UPSTREAM_CLUSTER
    return message


def _wrk(url: str, duration: float, connections: int,
         script: Path | None) -> tuple[float, float, float, int]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if re.search(r"Non-2xx or 3xx responses|Socket errors", out):
        raise RuntimeError(f"wrk saw errors:\n{out}")

    def number(pattern: str) -> str:
        match = re.search(pattern, out)
        if match is None:
            raise RuntimeError(f"unexpected wrk output:\n{out}")
        return match.group(1)

    def percentile(p: str) -> float:
        match = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        if match is None:
            raise RuntimeError(f"unexpected wrk output:\n{out}")
        return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]

    return (float(number(r"Requests/sec:\s+([\d.]+)")), percentile("50"), percentile("99"),
            int(number(r"(\d+) requests in")))


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None


def measure(scenario: Scenario, candidate: Candidate, duration: float, tcp: bool,
            profile_to: Path | None = None) -> Sample:
    workdir = Path(tempfile.mkdtemp(prefix="xk-bench-", dir="/tmp"))
    script = None
    if scenario.post_body is not None:
        script = workdir / "post.lua"
        script.write_text('wrk.method = "POST"\nwrk.headers["content-type"] = '
                          f'"application/json"\nwrk.body = [==[{scenario.post_body}]==]\n')
    listen, addresses = _listen_addresses(candidate, workdir, tcp)
    server = _start_server(candidate, listen, addresses, tcp)
    try:
        config = _envoy_config(scenario, candidate, addresses)
        with EnvoyProcess(config, workdir / "envoy", concurrency=1) as envoy:
            url = envoy.url("/")
            _wrk(url, 1, scenario.connections, script)  # warm-up
            spy = None
            if profile_to is not None and server is not None:
                spy = subprocess.Popen(
                    ["py-spy", "record", "-p", str(server.pid), "-d", str(int(duration) - 1),
                     "-r", "200", "-o", str(profile_to), "--nonblocking", "--subprocesses"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            before = _cpu_ticks(server.pid) if server else 0
            rps, p50, p99, total = _wrk(url, duration, scenario.connections, script)
            after = _cpu_ticks(server.pid) if server else 0
            if spy is not None:
                spy.wait(60)
        cpu = (after - before) / CLOCK_TICKS * 1e6 / total if server else None
        return Sample(rps, p50, p99, cpu)
    finally:
        if server is not None:
            stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)


def run(scenarios: list[Scenario], rounds: int, duration: float, tcp: bool,
        profile: bool) -> dict[str, dict[str, list[Sample]]]:
    results: dict[str, dict[str, list[Sample]]] = {}
    for scenario in scenarios:
        samples: dict[str, list[Sample]] = {c.name: [] for c in scenario.candidates}
        for round_no in range(rounds):
            order = scenario.candidates if round_no % 2 == 0 else scenario.candidates[::-1]
            for candidate in order:
                flame = None
                if profile and round_no == rounds - 1 and candidate.name == "extkit":
                    flame = BENCH / f"flame-{scenario.name}.svg"
                sample = measure(scenario, candidate, duration, tcp, flame)
                samples[candidate.name].append(sample)
                print(f"[{scenario.name} {round_no + 1}/{rounds}] {candidate.name}: "
                      f"{sample.rps:.0f} req/s, p50 {sample.p50_ms:.2f} ms, "
                      f"p99 {sample.p99_ms:.2f} ms, cpu {sample.cpu_us or 0:.0f} us/req",
                      flush=True)
        results[scenario.name] = samples
    return results


# -- reporting --------------------------------------------------------------------------------


def _versions() -> str:
    from importlib.metadata import version

    envoy_version = subprocess.run([find_envoy(), "--version"], capture_output=True,
                                   text=True).stdout
    found = re.search(r"version: \S+?/([\d.]+)/", envoy_version)
    envoy = found.group(1) if found else envoy_version.strip()
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wrk_version = (wrk.stdout or wrk.stderr).split()[1]
    uvloop = version("uvloop") if _installed("uvloop") else "not installed"
    from extproc.transports.pyvoy_env import PYVOY_VERSION, check_installed

    pyvoy_envoy = subprocess.run([check_installed()[0], "--version"], capture_output=True,
                                 text=True).stdout
    found = re.search(r"version: \S+?/([\d.]+)/", pyvoy_envoy)
    return (f"Python {platform.python_version()}, grpcio {version('grpcio')}, protobuf "
            f"{version('protobuf')}, uvloop {uvloop}, Envoy {envoy}, wrk {wrk_version}, "
            f"pyvoy {PYVOY_VERSION} (its Envoy {found.group(1) if found else '?'})")


def _installed(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def report(results: dict[str, dict[str, list[Sample]]], rounds: int, duration: float,
           tcp: bool, load: tuple[str, str] = ("?", "?")) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {os.cpu_count()} CPUs ({_cpu_model()}), shared and noisy: compare ratios "
        "within one run, not absolute numbers across runs",
        f"- versions: {_versions()}",
        f"- method: `bench/run.py --rounds {rounds} --duration {duration:g}"
        f"{' --tcp' if tcp else ''}`; Envoy --concurrency 1 on loopback; ext_proc over "
        f"{'loopback TCP' if tcp else 'a Unix socket'}; wrk -t1 for {duration:g} s per sample "
        f"after a 1 s warm-up; {rounds} rounds, candidates alternated (order reversed every "
        "other round); medians of the rounds. CPU: the ext_proc server's user+system time "
        "(all its processes, the pyvoy transport's Envoy included) per request.",
        f"- load average (1 / 5 / 15 min) of the shared machine: {load[0]} before the run, "
        f"{load[1]} after",
        "",
    ]
    for scenario in SCENARIOS:
        samples = results.get(scenario.name)
        if samples is None:
            continue
        lines += [f"## {scenario.title}", "",
                  f"wrk -c{scenario.connections}. {scenario.note}".rstrip(), ""]
        header = "| candidate | req/s |"
        if scenario.throughput:
            header += " MB/s |"
        header += " p50 ms | p99 ms | server CPU µs/req |"
        lines += [header, "|---" * (header.count("|") - 1) + "|"]
        for candidate in scenario.candidates:
            runs = samples[candidate.name]
            rps = _med([s.rps for s in runs])
            row = f"| {candidate.name}: {candidate.description} | {rps:.0f} |"
            if scenario.throughput:
                row += f" {rps * len(scenario.upstream_body or b'') / 1e6:.1f} |"
            cpus = [s.cpu_us for s in runs if s.cpu_us is not None]
            row += (f" {_med([s.p50_ms for s in runs]):.2f} | {_med([s.p99_ms for s in runs]):.2f}"
                    f" | {f'{_med(cpus):.0f}' if cpus else '-'} |")
            lines.append(row)
        lines += ["", "Ratios of medians:", ""]
        for name, against in scenario.ratios:
            a, b = samples[name], samples[against]
            rps_ratio = _med([s.rps for s in a]) / _med([s.rps for s in b])
            cpu_ratio = _med([s.cpu_us or 0 for s in a]) / _med([s.cpu_us or 0 for s in b])
            lines.append(f"- {name} / {against}: requests/s **{rps_ratio:.2f}x**, "
                         f"CPU per request **{cpu_ratio:.2f}x**")
        if "envoy" in samples and scenario.connections == 1:
            base = _med([s.p50_ms for s in samples["envoy"]])
            for candidate in scenario.candidates:
                if candidate.name != "envoy":
                    added = _med([s.p50_ms for s in samples[candidate.name]]) - base
                    lines.append(f"- {candidate.name}: p50 added over Envoy alone "
                                 f"**{added:.2f} ms**")
        lines.append("")
    return "\n".join(lines)


TARGETS = (
    # (label, scenario, candidate, against, metric, comparison, bound)
    ("(3) extkit >= 0.95x the minimal servicer's requests/s", "headers", "extkit", "minimal",
     "rps", ">=", 0.95),
    ("(3) extkit <= 1.05x the minimal servicer's CPU per request", "headers", "extkit",
     "minimal", "cpu", "<=", 1.05),
    ("(4) headers-only extkit >= 1.6x the minimal servicer in Envoy's default mode",
     "headers", "extkit-req", "minimal", "rps", ">=", 1.6),
    ("(6) STREAMED >= 0.9x the minimal servicer", "streamed", "extkit", "minimal", "rps", ">=",
     0.9),
    ("(7) BUFFERED >= 0.9x the minimal servicer", "buffered", "extkit", "minimal", "rps", ">=",
     0.9),
    ("(8) p50 added over Envoy alone <= 0.8 ms (extkit, both headers)", "latency", "extkit",
     "envoy", "p50_added", "<=", 0.8),
    ("(8) p50 added over Envoy alone <= 0.8 ms (extkit, request headers only)", "latency",
     "extkit-req", "envoy", "p50_added", "<=", 0.8),
    ("(obs) --admin <= 1.05x the CPU per request without it", "observability",
     "extkit-admin", "extkit", "cpu", "<=", 1.05),
    ("(obs) without --admin <= 1.02x the baseline's CPU per request (nothing changes)",
     "observability", "extkit", "extkit-base", "cpu", "<=", 1.02),
    # Whether the pyvoy transport becomes the default: all six must hold in one run.
    ("pyvoy default: headers >= 1.3x the minimal servicer's requests/s", "headers",
     "extkit-pyvoy", "minimal", "rps", ">=", 1.3),
    ("pyvoy default: headers <= 0.6x the minimal servicer's CPU per request", "headers",
     "extkit-pyvoy", "minimal", "cpu", "<=", 0.6),
    ("pyvoy default: STREAMED >= 1.3x the minimal servicer's requests/s", "streamed",
     "extkit-pyvoy", "minimal", "rps", ">=", 1.3),
    ("pyvoy default: STREAMED <= 0.6x the minimal servicer's CPU per request", "streamed",
     "extkit-pyvoy", "minimal", "cpu", "<=", 0.6),
    ("pyvoy default: BUFFERED >= 1.3x the minimal servicer's requests/s", "buffered",
     "extkit-pyvoy", "minimal", "rps", ">=", 1.3),
    ("pyvoy default: BUFFERED <= 0.6x the minimal servicer's CPU per request", "buffered",
     "extkit-pyvoy", "minimal", "cpu", "<=", 0.6),
)


def targets(results: dict[str, dict[str, list[Sample]]]) -> list[str]:
    lines = ["## Targets", "", "| target | measured | met |", "|---|---:|---|"]
    for label, scenario, name, against, metric, comparison, bound in TARGETS:
        samples = results.get(scenario)
        if samples is None:
            continue
        a, b = samples[name], samples[against]
        if metric == "p50_added":
            value = _med([s.p50_ms for s in a]) - _med([s.p50_ms for s in b])
            shown = f"{value:.2f} ms"
        else:
            key = "rps" if metric == "rps" else "cpu_us"
            value = (_med([getattr(s, key) or 0 for s in a])
                     / _med([getattr(s, key) or 0 for s in b]))
            shown = f"{value:.2f}x"
        met = value >= bound if comparison == ">=" else value <= bound
        lines.append(f"| {label} | {shown} | {'yes' if met else '**no**'} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per sample")
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS])
    parser.add_argument("--tcp", action="store_true", help="ext_proc over loopback TCP")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy flame graph of the extkit candidate, bench/flame-*.svg")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--baseline", default=BASELINE_REVISION,
                        help="git revision whose extproc/extctl serve the extkit-base candidate")
    args = parser.parse_args()
    globals()["BASELINE_REVISION"] = args.baseline
    for tool in ["wrk"] + (["py-spy"] if args.profile else []):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is missing (scripts/setup.sh installs it)")
    chosen = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    before = _load()
    results = run(chosen, args.rounds, args.duration, args.tcp, args.profile)
    text = report(results, args.rounds, args.duration, args.tcp, (before, _load()))
    text += "\n".join(targets(results))
    print(text)
    if not args.no_write:
        experiments = BENCH / "EXPERIMENTS.md"
        if experiments.exists():
            text += "\n" + experiments.read_text()
        (BENCH / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
