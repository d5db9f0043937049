"""Benchmark harness: a real Envoy (--concurrency 1, loopback) driven by wrk; each candidate
ext_proc server on a Unix socket (``--tcp``: loopback TCP); candidates alternated round by round
in ONE run; medians of the rounds. Every scenario has the same rows: Envoy alone (the ceiling),
a compiled reference in Go (``go_extproc.go``, built here with Debian's Go packages; skipped in
one line when they are missing), a minimal hand-written grpc.aio servicer, and envoy-extkit on
both transports (``extkit``: grpc.aio, ``extkit-pyvoy``: inside an Envoy process). Every figure
is also shown as a ratio to Go's.

    .venv/bin/python bench/run.py                      # every scenario, writes bench/RESULTS.md
    .venv/bin/python bench/run.py --scenario headers --rounds 5
    .venv/bin/python bench/run.py --processor app:Redact   # your class in place of the bench's
    .venv/bin/python bench/run.py --profile            # also a py-spy flame graph per scenario
    .venv/bin/python bench/run.py --scenario observability --baseline main

``--processor module:Class`` (imported from ``--app-dir``, default the working directory) serves
your class in the envoy-extkit rows, both transports, with the processing mode derived from it;
Go and the minimal servicer stay as references doing the benchmark's work. It runs the headers
and latency scenarios unless ``--scenario`` picks others (``streamed``: 1 MiB responses from an
upstream; ``buffered``: 64 KiB JSON request bodies), and prints the tables without writing
RESULTS.md (``--output FILE`` saves them as markdown).

The ``observability`` scenario is the headers workload served without and with ``--admin``,
with tracing on, and by the code of ``--baseline REV`` (extproc and extctl as of that revision,
default: where HEAD left ``main``), so what observability costs, on and off, is measured in one run.

Per candidate: requests/s, p50/p99 latency (wrk), and the ext_proc server's CPU microseconds per
request (utime+stime of the server and all its processes, from /proc). Upstreams are a second
Envoy listener answering with ``direct_response``, so no Python upstream limits the numbers.
Only a run of every scenario with the benchmark's processors, Go and pyvoy writes RESULTS.md,
between its markers: the hand-written sections around them stay.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import go_ref  # noqa: E402
import report  # noqa: E402
from envoy.config.listener.v3 import listener_pb2  # noqa: E402
from scenarios import (  # noqa: E402
    MIB,
    SCENARIOS,
    TARGETS,
    USER_SCENARIOS,
    Candidate,
    Sample,
    Scenario,
    with_processor,
    without,
)

import extproc  # noqa: E402
from extctl.config import Deployment  # noqa: E402
from extctl.config.envoy import UPSTREAM_CLUSTER  # noqa: E402
from extctl.harness.stack import in_envoy  # noqa: E402
from extctl.testing import EnvoyProcess, find_envoy  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- measuring --------------------------------------------------------------------------------


def tool(name: str) -> str | None:
    """``name`` on PATH, else beside this Python (a venv's bin, not activated)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


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


GO_BINARY: Path | None = None  # set by main() once built
APP_DIR = Path.cwd()  # where --processor's module is imported from


def _start_server(candidate: Candidate, listen: str, addresses: list[str],
                  tcp: bool) -> subprocess.Popen[bytes] | None:
    if candidate.server is None or _inside(candidate):
        return None  # Envoy alone, or the class inside it (the dynamic module)
    kind, _, arg = candidate.server.partition(":")
    # The benchmark's processors come from bench/procs.py, a user's from --app-dir.
    path = [str(BENCH if arg.startswith("procs:") or kind != "extkit" else APP_DIR)]
    if candidate.baseline:
        path.insert(0, str(_baseline_tree(BASELINE_REVISION)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), **dict(candidate.env)}
    if kind == "minimal":
        command = [sys.executable, str(BENCH / "minimal_servicer.py"), arg, listen]
    elif kind == "go":
        if GO_BINARY is None:
            raise RuntimeError("the Go reference is not built (bench/go_ref.py)")
        command = [str(GO_BINARY), arg, listen]
    else:
        command = [sys.executable, "-m", "extctl", "serve", arg,
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


def _inside(candidate: Candidate) -> bool:
    """The candidate runs its class inside the Envoy under test (the dynamic module)."""
    return candidate.server is not None and candidate.server.startswith("module:")


def _envoy_config(scenario: Scenario, candidate: Candidate, addresses: list[str]) -> Any:
    upstream_port = _free_port() if scenario.upstream_body is not None else None
    upstreams = [f"127.0.0.1:{upstream_port}"] if upstream_port else []
    if _inside(candidate):
        message = Deployment.build(candidate.processor,
                                   dynamic_module=in_envoy(candidate.processor)[0],
                                   message_timeout=5.0, upstreams=upstreams).envoy_bootstrap()
    else:
        message = Deployment.build(
            candidate.processor, addresses=addresses if candidate.processor else [],
            processing_mode=candidate.mode, message_timeout=5.0,
            upstreams=upstreams).envoy_bootstrap()
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


# Started once the warm-up is over, given (server pid or None, Envoy's pid); what it returns is
# waited for (``.wait(timeout)``) after the sample: bench/where.py attaches perf and py-spy.
Profiler = Callable[[int | None, int], list[Any]]


def measure(scenario: Scenario, candidate: Candidate, duration: float, tcp: bool,
            profile_to: Path | None = None, profilers: Profiler | None = None) -> Sample:
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
        env = in_envoy(candidate.processor)[1] if _inside(candidate) else {}
        with EnvoyProcess(config, workdir / "envoy", concurrency=1, env=env) as envoy:
            assert envoy.process is not None
            url = envoy.url("/")
            _wrk(url, 1, scenario.connections, script)  # warm-up
            attached = []
            if profile_to is not None and server is not None:
                attached.append(subprocess.Popen(
                    [str(tool("py-spy")), "record", "-p", str(server.pid), "-d",
                     str(int(duration) - 1), "-r", "200", "-o", str(profile_to), "--nonblocking",
                     "--subprocesses"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            if profilers is not None:
                attached += profilers(server.pid if server else None, envoy.process.pid)
            before = _cpu_ticks(server.pid) if server else 0
            envoy_before = _cpu_ticks(envoy.process.pid)
            rps, p50, p99, total = _wrk(url, duration, scenario.connections, script)
            after = _cpu_ticks(server.pid) if server else 0
            envoy_after = _cpu_ticks(envoy.process.pid)
            for process in attached:
                process.wait(60)
        cpu = (after - before) / CLOCK_TICKS * 1e6 / total if server else None
        envoy_cpu = (envoy_after - envoy_before) / CLOCK_TICKS * 1e6 / total
        return Sample(rps, p50, p99, cpu, envoy_cpu)
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

    try:
        pyvoy_envoy = subprocess.run([check_installed()[0], "--version"], capture_output=True,
                                     text=True).stdout
        found = re.search(r"version: \S+?/([\d.]+)/", pyvoy_envoy)
        pyvoy = f"pyvoy {PYVOY_VERSION} (its Envoy {found.group(1) if found else '?'})"
    except extproc.ServeError:
        pyvoy = "pyvoy not installed"
    go = "Go not built"
    if GO_BINARY is not None:
        go_version = subprocess.run(["go", "version"], capture_output=True, text=True).stdout
        grpc_go = subprocess.run(["dpkg-query", "-W", "-f", "${Version}",
                                  "golang-google-grpc-dev"], capture_output=True, text=True)
        go = (f"{' '.join(go_version.split()[2:3])}, grpc-go {grpc_go.stdout or '?'} (Debian "
              "golang-google-grpc-dev)")
    return (f"Python {platform.python_version()}, grpcio {version('grpcio')}, protobuf "
            f"{version('protobuf')}, uvloop {uvloop}, Envoy {envoy}, wrk {wrk_version}, "
            f"{pyvoy}, {go}")


def _installed(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def _method(command: str, duration: float, rounds: int, tcp: bool) -> str:
    return (f"`{command}`; Envoy --concurrency 1 on loopback; ext_proc over "
            f"{'loopback TCP' if tcp else 'a Unix socket'}; wrk -t1 for {duration:g} s per "
            f"sample after a 1 s warm-up; {rounds} rounds, candidates alternated (order reversed "
            "every other round); medians of the rounds. CPU: the ext_proc server's user+system "
            "time (all its processes and threads, the pyvoy transport's Envoy included) per "
            "request. A team measures its own processor the same way with `bench/run.py "
            "--processor module:Class` (its class in the envoy-extkit rows, Go and the minimal "
            "servicer as references).")


def _pyvoy_missing() -> str | None:
    from extproc.transports.pyvoy_env import check_installed

    try:
        check_installed()
    except extproc.ServeError as exc:
        return str(exc)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per sample")
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS])
    parser.add_argument("--processor", metavar="MODULE:CLASS",
                        help="serve this Processor in the envoy-extkit rows instead of the "
                        "benchmark's (Go and the minimal servicer stay as references)")
    parser.add_argument("--app-dir", default=".",
                        help="where --processor's module is imported from (default: .)")
    parser.add_argument("--tcp", action="store_true", help="ext_proc over loopback TCP")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy flame graph of the extkit candidate, bench/flame-*.svg")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="also write this run's tables and targets as markdown to FILE")
    parser.add_argument("--baseline", default=BASELINE_REVISION,
                        help="git revision whose extproc/extctl serve the extkit-base candidate")
    args = parser.parse_args()
    globals()["BASELINE_REVISION"] = args.baseline
    for name in ["wrk"] + (["py-spy"] if args.profile else []):
        if tool(name) is None:
            sys.exit(f"bench: {name} is missing (wrk: apt-get install wrk; py-spy: pip "
                     "install py-spy)")
    chosen = [s for s in SCENARIOS if (s.name in args.scenario if args.scenario else
                                       not args.processor or s.name in USER_SCENARIOS)]
    if args.processor:
        globals()["APP_DIR"] = Path(args.app_dir).resolve()
        try:
            cls = extproc.import_processor(args.processor, str(APP_DIR))
        except extproc.ExtkitError as exc:
            sys.exit(f"bench: {exc}")
        chosen = [with_processor(s, args.processor, cls) for s in chosen]
    skipped = set()
    try:
        globals()["GO_BINARY"] = go_ref.build()
    except go_ref.Unavailable as exc:
        print(f"bench: skipping the Go reference: {exc}", file=sys.stderr)
        skipped.add("go")
    reason = _pyvoy_missing()
    if reason is not None:
        print(f"bench: skipping the pyvoy transport: {reason}", file=sys.stderr)
        skipped.add("pyvoy")
    chosen = [without(s, skipped) for s in chosen]

    command = " ".join(["bench/run.py", *sys.argv[1:]])
    before = _load()
    results = run(chosen, args.rounds, args.duration, args.tcp, args.profile)
    load = (before, _load())
    print(report.text(chosen, results, args.rounds, args.duration))
    print(f"\nload average (1 / 5 / 15 min): {load[0]} before, {load[1]} after")
    goals = report.targets(TARGETS, results) if not args.processor else []
    if goals:
        print("\n" + "\n".join(goals))
    markdown = report.markdown(
        chosen, results, _versions(), _method(command, args.duration, args.rounds, args.tcp),
        load, f"{os.cpu_count()} CPUs ({_cpu_model()})", datetime.date.today().isoformat())
    markdown += "\n" + "\n".join(goals)
    if args.output is not None:
        args.output.write_text("# Benchmark results\n\n" + markdown)
    complete = not args.processor and not args.scenario and not skipped
    if complete and not args.no_write:
        report.write_between_markers(BENCH / "RESULTS.md", markdown)
    elif not args.no_write:
        print("bench: RESULTS.md not written (only a run of every scenario with the "
              "benchmark's processors, Go and pyvoy writes it; --output FILE saves this one)",
              file=sys.stderr)


if __name__ == "__main__":
    main()
