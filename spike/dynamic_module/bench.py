"""The module against the ext_proc transports, side by side in one run, headers both ways.

    .venv/bin/python spike/dynamic_module/bench.py --rounds 5 --duration 4

Measured as bench/run.py measures (copied here, not imported: run.py is being changed): Envoy
1.40 --concurrency 1 on loopback answering with direct_response, ext_proc servers on a Unix
socket, wrk -t1 after a 1 s warm-up, candidates alternated round by round (order reversed every
other round), medians of the rounds. Per candidate and round, one Envoy and one server: a wrk
sample at -c1 (p50: what the processor adds to Envoy alone) and one at -c32 (requests/s, CPU).

CPU per request counts every process the work runs in: the front Envoy (where the module's
Python runs) plus the ext_proc server and its children (the pyvoy transport's Envoy), user +
system time from /proc over the -c32 sample, divided by its requests.

Candidates: Envoy alone; the Go reference (bench/go_extproc.go, built by bench/go_ref.py when
Debian's Go packages are there); envoy-extkit on grpcio and on pyvoy (``extctl serve``); the
module (build/libextkit_dm.so in the front Envoy). All run bench/procs.py's BothHeaders (Go
does the same work), Envoy in its default mode (request and response headers).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy.extensions.filters.http.dynamic_modules.v3 import dynamic_modules_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import wrappers_pb2

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import procs  # noqa: E402

from extctl.config import Deployment  # noqa: E402
from extctl.testing import EnvoyProcess  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    server: str | None = None  # "go", "grpcio", "pyvoy"; None: no ext_proc server
    module: bool = False  # the dynamic module in the front Envoy


CANDIDATES = (
    Candidate("envoy", "Envoy alone (no filter): the ceiling"),
    Candidate("go", "Go reference ext_proc server (grpc-go, bench/go_extproc.go)", "go"),
    Candidate("extkit", "envoy-extkit, grpcio transport (extctl serve)", "grpcio"),
    Candidate("extkit-pyvoy", "envoy-extkit, pyvoy transport (its own Envoy)", "pyvoy"),
    Candidate("module", "the same Processor in the front Envoy (dynamic module)", module=True),
)


@dataclass(frozen=True)
class Sample:
    p50_c1_ms: float
    rps_c1: float
    rps_c32: float
    p50_c32_ms: float
    cpu_us: float  # per request at -c32: front Envoy + server processes
    envoy_cpu_us: float
    server_cpu_us: float


# -- measuring (bench/run.py's approach) ------------------------------------------------------


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


def _cpu_ticks(pid: int | None) -> int:
    if pid is None:
        return 0
    total = 0
    for p in _descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def _wrk(url: str, duration: float, connections: int) -> tuple[float, float, int]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency",
                          url], capture_output=True, text=True, check=True, timeout=duration + 30
                         ).stdout
    if re.search(r"Non-2xx or 3xx responses|Socket errors", out):
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"\s50%\s+([\d.]+)(us|ms|s)\b", out)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or p50 is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return float(rps.group(1)), float(p50.group(1)) * scale, int(total.group(1))


def _start_server(candidate: Candidate, listen: str,
                  go_binary: Path | None) -> subprocess.Popen[bytes] | None:
    if candidate.server is None:
        return None
    if candidate.server == "go":
        assert go_binary is not None
        command = [str(go_binary), "headers", listen]
    else:
        command = [sys.executable, "-m", "extctl", "serve", "procs:BothHeaders", "--uds",
                   listen, "--log-level", "warning", "--transport", candidate.server]
    env = {**os.environ, "PYTHONPATH": str(BENCH)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            cwd=tempfile.gettempdir())
    deadline = time.monotonic() + 60
    while not os.path.exists(listen):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{candidate.name}: server did not come up on {listen}")
        time.sleep(0.05)
    return proc


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _envoy_config(candidate: Candidate, listen: str) -> Any:
    processor = procs.BothHeaders if candidate.server else None
    message = Deployment.build(processor, addresses=[listen] if processor else [],
                               message_timeout=5.0, upstreams=[]).envoy_bootstrap()
    if candidate.module:
        listener = message.static_resources.listeners[0]
        manager = hcm_pb2.HttpConnectionManager()
        listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
        module = dynamic_modules_pb2.DynamicModuleFilter(filter_name="extkit")
        module.dynamic_module_config.name = "extkit_dm"
        module.dynamic_module_config.do_not_close = True
        module.filter_config.Pack(wrappers_pb2.StringValue(
            value=f'{{"processor": "procs:BothHeaders", "path": ["{BENCH}"]}}'))
        http_filter = hcm_pb2.HttpFilter(name="extkit")
        http_filter.typed_config.Pack(module)
        manager.http_filters.insert(0, http_filter)
        listener.filter_chains[0].filters[0].typed_config.Pack(manager)
    return message


def measure(candidate: Candidate, duration: float, go_binary: Path | None) -> Sample:
    workdir = Path(tempfile.mkdtemp(prefix="xk-dm-bench-", dir="/tmp"))
    listen = str(workdir / "p.sock")
    server = _start_server(candidate, listen, go_binary)
    try:
        with EnvoyProcess(_envoy_config(candidate, listen), workdir / "envoy",
                          concurrency=1) as envoy:
            assert envoy.process is not None
            url = envoy.url("/")
            _wrk(url, 1, 32)  # warm-up
            rps_c1, p50_c1, _ = _wrk(url, duration, 1)
            envoy_before = _cpu_ticks(envoy.process.pid)
            server_before = _cpu_ticks(server.pid if server else None)
            rps_c32, p50_c32, total = _wrk(url, duration, 32)
            envoy_cpu = _cpu_ticks(envoy.process.pid) - envoy_before
            server_cpu = _cpu_ticks(server.pid if server else None) - server_before
    finally:
        if server is not None:
            _stop(server)
        shutil.rmtree(workdir, ignore_errors=True)

    def per_request(ticks: int) -> float:
        return ticks / CLOCK_TICKS * 1e6 / total

    return Sample(p50_c1, rps_c1, rps_c32, p50_c32, per_request(envoy_cpu + server_cpu),
                  per_request(envoy_cpu), per_request(server_cpu))


# -- reporting --------------------------------------------------------------------------------


def _median(samples: list[Sample], field: str) -> float:
    return statistics.median(getattr(s, field) for s in samples)


def report(results: dict[str, list[Sample]], candidates: tuple[Candidate, ...]) -> str:
    base = results["envoy"]
    base_p50 = _median(base, "p50_c1_ms")
    base_cpu = _median(base, "cpu_us")
    lines = ["| candidate | p50 c=1 ms | added p50 c=1 ms | req/s c=32 | p50 c=32 ms | "
             "CPU µs/req (Envoy + server) | of which Envoy | of which server | "
             "added CPU µs/req |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for candidate in candidates:
        samples = results[candidate.name]
        p50 = _median(samples, "p50_c1_ms")
        cpu = _median(samples, "cpu_us")
        lines.append(
            f"| {candidate.name}: {candidate.description} | {p50:.3f} | "
            f"{p50 - base_p50:.3f} | {_median(samples, 'rps_c32'):.0f} | "
            f"{_median(samples, 'p50_c32_ms'):.2f} | {cpu:.0f} | "
            f"{_median(samples, 'envoy_cpu_us'):.0f} | {_median(samples, 'server_cpu_us'):.0f} | "
            f"{cpu - base_cpu:.0f} |")
    if "go" in results:
        go_added = _median(results["go"], "p50_c1_ms") - base_p50
        go_cpu = _median(results["go"], "cpu_us")
        go_rps = _median(results["go"], "rps_c32")
        lines += ["", "Against Go (ratios of medians; added p50 and added CPU are over Envoy "
                      "alone):", ""]
        for candidate in candidates:
            if candidate.name in ("envoy", "go"):
                continue
            samples = results[candidate.name]
            added = _median(samples, "p50_c1_ms") - base_p50
            cpu = _median(samples, "cpu_us")
            lines.append(
                f"- {candidate.name}: added p50 at c=1 **{added / go_added:.2f}x** Go's, "
                f"req/s at c=32 **{_median(samples, 'rps_c32') / go_rps:.2f}x**, CPU per "
                f"request (Envoy + server) **{cpu / go_cpu:.2f}x**, added CPU per request "
                f"**{(cpu - base_cpu) / (go_cpu - base_cpu):.2f}x**")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk sample")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is missing (apt-get install wrk)")
    subprocess.run(["bash", str(HERE / "build.sh")], check=True)
    os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(HERE / "build")
    candidates = CANDIDATES
    go_binary: Path | None = None
    try:
        import go_ref

        go_binary = go_ref.build()
    except Exception as exc:  # Go, its packages or bench/go_ref.py missing
        print(f"bench: no Go reference ({exc}); its row is left out", flush=True)
        candidates = tuple(c for c in CANDIDATES if c.name != "go")
    load_before = os.getloadavg()
    results: dict[str, list[Sample]] = {c.name: [] for c in candidates}
    for round_no in range(args.rounds):
        order = candidates if round_no % 2 == 0 else candidates[::-1]
        for candidate in order:
            sample = measure(candidate, args.duration, go_binary)
            results[candidate.name].append(sample)
            print(f"[{round_no + 1}/{args.rounds}] {candidate.name}: p50 c=1 "
                  f"{sample.p50_c1_ms:.3f} ms, {sample.rps_c32:.0f} req/s c=32, "
                  f"cpu {sample.cpu_us:.0f} us/req (envoy {sample.envoy_cpu_us:.0f}, "
                  f"server {sample.server_cpu_us:.0f})", flush=True)
    load_after = os.getloadavg()
    print()
    print(f"load average before {load_before[0]:.2f} / {load_before[1]:.2f} / "
          f"{load_before[2]:.2f}, after {load_after[0]:.2f} / {load_after[1]:.2f} / "
          f"{load_after[2]:.2f}; {args.rounds} rounds of {args.duration:g} s per wrk sample")
    print()
    print(report(results, candidates))


if __name__ == "__main__":
    main()
