"""Benchmark harness: a real Envoy (--concurrency 1, loopback) driven by wrk, each candidate
ext_proc server on a Unix socket, candidates alternated round by round in ONE run; medians.

    .venv/bin/python bench/run.py                 # all scenarios, 3 rounds, writes RESULTS.md
    .venv/bin/python bench/run.py --rounds 5 --duration 10 --no-write

Reported per candidate: requests/s, p50 and p99 latency (wrk), and the ext_proc server's CPU
microseconds per request (utime+stime of the process and its children, /proc/PID/stat).
Ratios compare candidates measured side by side; absolute numbers on a shared machine are not
comparable across runs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import procs  # noqa: E402

from extctl.envoy_config import EnvoyConfig, bootstrap  # noqa: E402
from extctl.envoy_runner import EnvoyProcess  # noqa: E402
from extproc import ProcessingMode  # noqa: E402

REQUEST_HEADERS_ONLY = ProcessingMode(request_headers=True, response_headers=False)
ENVOY_DEFAULT = ProcessingMode(request_headers=True, response_headers=True)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    server: str | None  # "minimal", "extkit:Class", or None for Envoy alone
    mode: ProcessingMode | None = None  # the Envoy config's mode (None: the class's own)


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float | None


@dataclass
class Scenario:
    name: str
    title: str
    candidates: list[Candidate]
    baseline: str
    ratios: list[tuple[str, str]] = field(default_factory=list)  # (candidate, against)


SCENARIOS = [
    Scenario(
        "headers",
        "Headers: one header set per phase, Envoy answers with direct_response",
        [
            Candidate("envoy", "Envoy alone (no ext_proc filter): the ceiling", None),
            Candidate("minimal-req", "minimal grpc.aio servicer, request headers only",
                      "minimal", REQUEST_HEADERS_ONLY),
            Candidate("extkit-req", "envoy-extkit headers-only processor (derived mode: "
                      "request headers only)", "extkit:RequestHeader"),
            Candidate("minimal-default", "minimal servicer, Envoy's default mode (request and "
                      "response headers)", "minimal", ENVOY_DEFAULT),
            Candidate("extkit-both", "envoy-extkit setting a request and a response header",
                      "extkit:BothHeaders"),
        ],
        baseline="minimal-req",
        ratios=[("extkit-req", "minimal-req"), ("extkit-both", "minimal-default"),
                ("extkit-req", "minimal-default")],
    ),
]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime are fields 14-17 (1-based) of the whole line.
    return sum(int(v) for v in fields[11:15])


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{path} never appeared")


def _start_server(candidate: Candidate, socket_path: Path) -> subprocess.Popen[bytes] | None:
    if candidate.server is None:
        return None
    env = {**os.environ, "PYTHONPATH": str(BENCH)}
    if candidate.server == "minimal":
        command = [sys.executable, str(BENCH / "minimal_servicer.py"), str(socket_path)]
    elif candidate.server.startswith("cmd:"):
        command = [*candidate.server[4:].split(), str(socket_path)]
    else:
        _, cls = candidate.server.split(":")
        command = [sys.executable, "-m", "extctl", "serve", f"procs:{cls}",
                   "--uds", str(socket_path), "--log-level", "warning"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    _wait_for(socket_path, proc)
    return proc


def _processor_class(candidate: Candidate) -> type | None:
    if candidate.server is None:
        return None
    if candidate.server == "minimal" or candidate.server.startswith("cmd:"):
        return procs.BothHeaders  # only its attributes matter; the mode is candidate.mode
    return getattr(procs, candidate.server.split(":")[1])  # type: ignore[no-any-return]


def _wrk(url: str, duration: float, connections: int) -> tuple[float, float, float, int]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", url],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors", out)
    if errors:
        raise RuntimeError(f"wrk saw errors:\n{out}")

    def pct(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return rps, pct("50"), pct("99"), total


def measure(candidate: Candidate, duration: float, connections: int) -> Sample:
    workdir = Path(tempfile.mkdtemp(prefix="xk-bench-", dir="/tmp"))
    socket_path = workdir / "p.sock"
    server = _start_server(candidate, socket_path)
    try:
        config = EnvoyConfig(_processor_class(candidate), [str(socket_path)],
                             processing_mode=candidate.mode)
        with EnvoyProcess(bootstrap(config), workdir / "envoy", concurrency=1) as envoy:
            url = envoy.url("/")
            _wrk(url, 1, connections)  # warm-up
            before = _cpu_ticks(server.pid) if server else 0
            rps, p50, p99, total = _wrk(url, duration, connections)
            after = _cpu_ticks(server.pid) if server else 0
        cpu = ((after - before) / CLOCK_TICKS * 1e6 / total) if server else None
        return Sample(rps, p50, p99, cpu)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def run(scenarios: list[Scenario], rounds: int, duration: float,
        connections: int) -> dict[str, dict[str, list[Sample]]]:
    results: dict[str, dict[str, list[Sample]]] = {}
    for scenario in scenarios:
        samples: dict[str, list[Sample]] = {c.name: [] for c in scenario.candidates}
        for round_no in range(rounds):
            order = scenario.candidates if round_no % 2 == 0 else scenario.candidates[::-1]
            for candidate in order:
                sample = measure(candidate, duration, connections)
                samples[candidate.name].append(sample)
                print(f"[{scenario.name} round {round_no + 1}] {candidate.name}: "
                      f"{sample.rps:.0f} req/s p50 {sample.p50_ms:.2f} ms "
                      f"p99 {sample.p99_ms:.2f} ms cpu {sample.cpu_us_per_request or 0:.0f} us",
                      flush=True)
        results[scenario.name] = samples
    return results


def _versions() -> str:
    from importlib.metadata import version

    envoy = subprocess.run([EnvoyProcess.__module__ and _envoy_binary(), "--version"],
                           capture_output=True, text=True).stdout.strip().split("version: ")[-1]
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (f"Python {platform.python_version()}, grpcio {version('grpcio')}, "
            f"protobuf {version('protobuf')}, envoy {envoy}, "
            f"{(wrk.stdout or wrk.stderr).splitlines()[0].split(' [')[0]}")


def _envoy_binary() -> str:
    from extctl.envoy_runner import find_envoy

    return find_envoy()


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def report(results: dict[str, dict[str, list[Sample]]], rounds: int, duration: float,
           connections: int) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {os.cpu_count()} CPUs, {_cpu_model()}",
        f"- versions: {_versions()}",
        f"- method: Envoy --concurrency 1 on loopback, ext_proc over a Unix socket, "
        f"wrk -t1 -c{connections} -d{duration:g}s per sample, {rounds} rounds alternating "
        "candidates (order reversed every other round); medians of the rounds.",
        "",
    ]
    for scenario in SCENARIOS:
        if scenario.name not in results:
            continue
        samples = results[scenario.name]
        base_rps = _median([s.rps for s in samples[scenario.baseline]])
        lines += [f"## {scenario.title}", "",
                  "| candidate | req/s | p50 ms | p99 ms | server CPU µs/req | req/s vs "
                  f"{scenario.baseline} |",
                  "|---|---:|---:|---:|---:|---:|"]
        for candidate in scenario.candidates:
            runs = samples[candidate.name]
            rps = _median([s.rps for s in runs])
            cpus = [s.cpu_us_per_request for s in runs if s.cpu_us_per_request is not None]
            cpu = f"{_median(cpus):.0f}" if cpus else "-"
            lines.append(
                f"| {candidate.name}: {candidate.description} | {rps:.0f} | "
                f"{_median([s.p50_ms for s in runs]):.2f} | "
                f"{_median([s.p99_ms for s in runs]):.2f} | {cpu} | {rps / base_rps:.2f}x |")
        lines += ["", "Ratios (medians):", ""]
        for name, against in scenario.ratios:
            a, b = samples[name], samples[against]
            rps_ratio = _median([s.rps for s in a]) / _median([s.rps for s in b])
            cpu_ratio = (_median([s.cpu_us_per_request or 0 for s in a])
                         / _median([s.cpu_us_per_request or 0 for s in b]))
            lines.append(f"- {name} / {against}: requests/s {rps_ratio:.2f}x, "
                         f"CPU per request {cpu_ratio:.2f}x")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per sample")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS])
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is missing: apt-get install -y wrk (scripts/setup.sh does it)")
    chosen = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    results = run(chosen, args.rounds, args.duration, args.connections)
    text = report(results, args.rounds, args.duration, args.connections)
    print(text)
    if not args.no_write:
        (BENCH / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
