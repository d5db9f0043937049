"""Memory of the ext_proc server process for large BUFFERED bodies, through a real Envoy.

A processor that appends one byte to a BUFFERED request body (``procs.AppendByte``) is sent
one body of ``--size-mib`` (default 30), then, in a fresh process, three at once. Per sample:
a fresh server process and a fresh Envoy (generated config: Deployment.build, whose
listener/cluster buffer limits and ext_proc ``max_receive_message_length`` are 32 MiB for a
processor that buffers bodies), the server's VmRSS once Envoy is ready, its VmHWM (peak RSS)
once every answer is back, and its VmRSS after ``--settle`` seconds. Candidates are alternated
round by round (order reversed every other round); medians of the rounds.

Candidates: ``extkit`` (``extctl serve``, grpcio, default settings but --max-message-bytes 64
MiB; the working tree's code, or ``--revision REV``'s), ``bare`` (``minimal_servicer.py
append``: a hand-written grpc.aio servicer doing the same work), ``extkit-base`` (extproc and
extctl as of ``--baseline REV``), and variants with glibc malloc tunables in the environment
(``+mmap`` ..., see VARIANTS).

    .venv/bin/python bench/memory.py            # writes the Memory section of RESULTS.md
    .venv/bin/python bench/memory.py --rounds 3 --candidates extkit,bare --no-write
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import procs  # noqa: E402
import run as harness  # noqa: E402

from extctl.config import Deployment  # noqa: E402
from extctl.harness.echo import EchoServer  # noqa: E402
from extctl.testing import EnvoyProcess  # noqa: E402

MIB = 1024 * 1024
MAX_MESSAGE = 64 * MIB

# Environment variants (glibc malloc tunables) a candidate name may carry after a "+".
VARIANTS = {
    "mmap": {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},  # fixed: no dynamic raise
    "mmap1m": {"MALLOC_MMAP_THRESHOLD_": str(MIB)},
    "arena1": {"MALLOC_ARENA_MAX": "1"},
    "trim": {"MALLOC_TRIM_THRESHOLD_": str(128 * 1024)},
    # The state glibc converges to after freeing one 32 MiB block, from the start.
    "converged": {"MALLOC_MMAP_THRESHOLD_": str(32 * MIB), "MALLOC_TRIM_THRESHOLD_": str(64 * MIB)},
}


@dataclass
class Sample:
    start_mib: float  # VmRSS once Envoy is ready, before any request
    peak_mib: float  # VmHWM after the requests
    after_mib: float  # VmRSS after the settle


def _status(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB -> MiB
    return values


def _server(name: str, listen: str, baseline: str,
            revision: str | None = None) -> subprocess.Popen[bytes]:
    kind, _, variants = name.partition("+")
    env = {**os.environ, "PYTHONPATH": str(BENCH)}
    for variant in filter(None, variants.split("+")):
        env.update(VARIANTS[variant])
    if kind == "bare":
        command = [sys.executable, str(BENCH / "minimal_servicer.py"), "append", listen]
    else:
        if kind == "extkit-base" or (kind == "extkit" and revision is not None):
            tree = harness._baseline_tree(baseline if kind == "extkit-base" else revision)
            env["PYTHONPATH"] = f"{tree}{os.pathsep}{BENCH}"
        elif kind != "extkit":
            raise SystemExit(f"memory: unknown candidate {name!r}")
        command = [sys.executable, "-m", "extctl", "serve", "procs:AppendByte", "--uds",
                   listen, "--max-message-bytes", str(MAX_MESSAGE), "--log-level", "warning"]
    # Not from the checkout: `python -m` puts the working directory first on sys.path,
    # which would shadow the baseline tree.
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, cwd=Path(listen).parent,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(listen):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name}: server did not come up on {listen}")
        time.sleep(0.05)
    return proc


def _post(url: str, body: bytes, errors: list[str]) -> None:
    host, _, port = url.split("/")[2].partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", "/", body=body, headers={"content-type": "application/octet-stream"})
        reply = conn.getresponse()
        answer = reply.read()
        if reply.status != 200 or answer != str(len(body) + 1).encode():
            errors.append(f"{reply.status} {answer[:200]!r}")
    except Exception as exc:  # reported by the caller
        errors.append(repr(exc))
    finally:
        conn.close()


def _length(method: str, path: str, headers: object, body: bytes
            ) -> tuple[int, dict[str, str], bytes, dict[str, str]]:
    return 200, {}, str(len(body)).encode(), {}


def measure(name: str, bodies: int, size: int, settle: float, baseline: str,
            upstream: EchoServer, revision: str | None = None) -> Sample:
    workdir = Path(tempfile.mkdtemp(prefix="xk-mem-", dir="/tmp"))
    listen = str(workdir / "p.sock")
    server = _server(name, listen, baseline, revision)
    try:
        config = Deployment.build(procs.AppendByte, addresses=[listen],
                                  upstreams=[upstream.address]).envoy_bootstrap()
        with EnvoyProcess(config, workdir / "envoy", concurrency=1) as envoy:
            time.sleep(0.5)  # health checks answered, start-up garbage settled
            start = _status(server.pid)["VmRSS"]
            payload = os.urandom(size)
            errors: list[str] = []
            threads = [threading.Thread(target=_post, args=(envoy.url("/"), payload, errors))
                       for _ in range(bodies)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise RuntimeError(f"{name}: {errors}\n{envoy.log()[-2000:]}")
            peak = _status(server.pid)["VmHWM"]
            time.sleep(settle)
            after = _status(server.pid)["VmRSS"]
        return Sample(start, peak, after)
    finally:
        harness.stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)


def run(names: list[str], rounds: int, size: int, settle: float, baseline: str,
        cases: tuple[int, ...], revision: str | None = None
        ) -> dict[int, dict[str, list[Sample]]]:
    results: dict[int, dict[str, list[Sample]]] = {n: {c: [] for c in names} for n in cases}
    with EchoServer(answer=_length) as upstream:
        for round_no in range(rounds):
            order = names if round_no % 2 == 0 else names[::-1]
            for bodies in cases:
                for name in order:
                    sample = measure(name, bodies, size, settle, baseline, upstream,
                                     revision)
                    results[bodies][name].append(sample)
                    print(f"[{round_no + 1}/{rounds}] {bodies} x {size / MIB:g} MiB {name}: "
                          f"start {sample.start_mib:.0f}, peak {sample.peak_mib:.0f}, after "
                          f"{sample.after_mib:.0f} MiB", flush=True)
    return results


def report(results: dict[int, dict[str, list[Sample]]], rounds: int, size: int,
           settle: float, baseline: str, load: tuple[str, str],
           revision: str | None = None) -> str:
    unit = size / MIB
    names = list(next(iter(results.values())))
    lines = [
        "## Memory: large BUFFERED bodies (bench/memory.py)",
        "",
        f"- method: `bench/memory.py --rounds {rounds} --size-mib {unit:g} --settle "
        f"{settle:g}`; a processor appending one byte to a BUFFERED request body of "
        f"{unit:g} MiB (random bytes) through Envoy 1.40 (generated config) to an upstream; "
        "a fresh server process and Envoy per sample; candidates alternated; medians. "
        "start: VmRSS once Envoy is ready; peak: VmHWM once every answer is back; after: "
        f"VmRSS {settle:g} s later. Growth = figure - start; in bodies = growth / "
        f"{unit:g} MiB.",
        f"- `extkit` is extproc/extctl as of {revision or 'the working tree'}, `extkit-base` as "
        f"of {baseline}; `+mmap` etc. set glibc malloc tunables in the server's environment "
        "(bench/memory.py VARIANTS).",
        f"- load average (1 / 5 / 15 min): {load[0]} before, {load[1]} after",
        "",
    ]
    for bodies, samples in results.items():
        bare = samples.get("bare")
        lines += [f"### {bodies} {'body' if bodies == 1 else 'bodies at once'}", "",
                  "| candidate | start MiB | peak MiB | peak growth (bodies) | after MiB | "
                  "after growth (bodies) | peak growth / bare |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name in names:
            runs = samples[name]
            start = statistics.median(s.start_mib for s in runs)
            peak = statistics.median(s.peak_mib - s.start_mib for s in runs)
            after = statistics.median(s.after_mib - s.start_mib for s in runs)
            ratio = "-"
            if bare is not None:
                bare_peak = statistics.median(s.peak_mib - s.start_mib for s in bare)
                ratio = f"{peak / bare_peak:.2f}x"
            lines.append(
                f"| {name} | {start:.0f} | {start + peak:.0f} | {peak:.0f} ({peak / unit:.1f}) | "
                f"{start + after:.0f} | {after:.0f} ({after / unit:.1f}) | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-mib", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before 'after'")
    parser.add_argument("--candidates", default="extkit,bare",
                        help="comma-separated: extkit, bare, extkit-base, each with +VARIANT")
    parser.add_argument("--bodies", default="1,3", help="comma-separated bodies at once")
    parser.add_argument("--baseline", default=harness.BASELINE_REVISION,
                        help="git revision whose extproc/extctl serve extkit-base")
    parser.add_argument("--revision", help="serve extkit with this revision's extproc/extctl "
                        "(default: the working tree)")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    size = int(args.size_mib * MIB)
    names = args.candidates.split(",")
    cases = tuple(int(n) for n in args.bodies.split(","))
    before = harness._load()
    results = run(names, args.rounds, size, args.settle, args.baseline, cases, args.revision)
    text = report(results, args.rounds, size, args.settle, args.baseline,
                  (before, harness._load()), args.revision)
    print(text)
    if not args.no_write:
        path = BENCH / "RESULTS.md"
        current = path.read_text() if path.exists() else ""
        # Replace the previous Memory section, keep everything else.
        current = re.sub(r"\n## Memory: large BUFFERED bodies.*?(?=\n## |\Z)", "", current,
                         flags=re.S)
        path.write_text(current.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
