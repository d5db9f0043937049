"""Where the time goes per request: bench/run.py's harness with perf and py-spy attached.

First the Python work of one headers stream in process (no gRPC, no sockets). Then for each
candidate of a scenario (default: headers both ways; Envoy alone, Go, the minimal servicer and
envoy-extkit on both transports), three samples under the same wrk load as run.py:

1. plain: requests/s, CPU µs per request of the ext_proc server and of the Envoy under test,
   the server's context switches per request;
2. ``perf record -g`` on the server (every thread) and on the Envoy under test: every sample in
   one bucket (``KERNEL`` by syscall, ``USER`` by frame), scaled to µs per request with
   sample 1's CPU;
3. ``py-spy record --native`` (Python servers): where the Python threads are when not waiting,
   by the innermost frame (``PYTHON``), which splits the interpreter's share of step 2.

    .venv/bin/python bench/where.py [--scenario headers] [--candidates go,extkit] [--duration 5]

Profilers cost CPU too (perf at 499 Hz; py-spy at 100 Hz, pausing the process to unwind):
shares come from the profiled samples, totals from the plain one. Needs perf (linux-perf) and
py-spy; outputs under --out.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import go_ref
import run as harness

# What a perf sample was doing, from its stack (innermost frame first). A kernel sample is
# classified by the syscall it is in; a user-space one by its innermost frame (Python's native
# stacks cannot be unwound further without frame pointers; Go's can), frames that only copy or
# compare memory skipped for the frame that called them where the stack goes on.
KERNEL: tuple[tuple[str, str], ...] = (
    ("kernel: socket I/O (the bytes in and out)", r"unix_stream|sock_|tcp_|skb|__sys_sendto|"
     r"__sys_recvfrom|sendmsg|recvmsg|readv|writev"),
    ("kernel: sleeping and waking threads (futex, epoll, eventfd, scheduler)",
     r"futex|epoll|eventfd|schedule|try_to_wake_up|finish_task_switch|nanosleep|sched_yield"),
    ("kernel: other (page faults, interrupts, other syscalls)", r"."),
)
USER: tuple[tuple[str, str], ...] = (
    # Go (frame pointers: the first frame that matches, innermost first)
    ("Go: allocation", r"^runtime\.(mallocgc|newobject|growslice|makeslice|memclrNoHeap|"
     r"heapBitsSetType|nextFreeFast|nextFree|mcache|mcentral|(\(\*mcache\)))"),
    ("Go: garbage collection", r"^runtime\.(gc|scanobject|markroot|greyobject|findObject|sweep|"
     r"bgsweep|scanblock|scanstack|scanframe|wbBuf|bulkBarrier|(\(\*gcWork\))|(\(\*mspan\)))"),
    ("Go: goroutine stacks (a new goroutine per stream grows its stack)",
     r"^runtime\.(copystack|newstack|morestack|pcvalue|step|gentraceback|adjustframe|"
     r"getStackMap|findfunc|funcspdelta|adjustpointers|(\(\*moduledata\)\.textAddr)|malg|"
     r"stackalloc|stackfree)"),
    ("Go: scheduler, channels, locks (goroutine hand-offs)",
     r"^runtime\.(schedule|findrunnable|findRunnable|park|gopark|goready|ready|wakep|startm|"
     r"stopm|mPark|notesleep|notewakeup|futex|lock2|unlock2|procyield|osyield|runq|netpoll|"
     r"selectgo|sellock|selunlock|chansend|chanrecv|casgstatus|execute|mcall|goexit|newproc|"
     r"checkTimers|nanotime|stealWork|resetspinning|exitsyscall|entersyscall|reentersyscall|"
     r"(\(\*waitq\))|send|recv|acquireSudog|releaseSudog|semacquire|semrelease|gogo)"),
    ("Go: the handler (protowire decode and encode, the mutation)",
     r"^main\.|protowire|google\.golang\.org/protobuf"),
    ("Go: HTTP/2 and gRPC framing (grpc-go transport, x/net/http2, hpack)",
     r"golang\.org/x/net/http2|grpc/internal/transport|bufio\.|syscall\.|internal/poll|net\."),
    ("Go: grpc-go server (stream set-up, codec, status, context)",
     r"google\.golang\.org/grpc|github\.com/golang/protobuf|context\.|sync\."),
    # Python servers (the innermost frame only)
    ("gRPC core (C++): HTTP/2, hpack, completion queue, EventEngine", r"\(cygrpc\S*\.so\)$"),
    ("protobuf decode/encode (upb)", r"\(_message\.abi3\.so\)$"),
    ("event loop (uvloop, asyncio)", r"\(loop\.cpython\S*\.so\)$|\(_asyncio\.cpython\S*\.so\)$"),
    ("Python interpreter (bytecode, objects, refcounts, GC)", r"\(libpython\S*\.so\S*\)$"),
    ("Envoy's binary (stripped): HTTP/2 codec, router, filters; in pyvoy's, the module glue",
     r"\(envoy\)$"),
    ("pyvoy's module (Rust: the ASGI bridge)", r"\(_pyvoy\S*\.so\)$"),
    ("libc: malloc and free", r"^(_int_malloc|malloc|_int_free|cfree|free|__libc_malloc|"
     r"__libc_free|malloc_consolidate|tcache|unlink_chunk|realloc|_int_realloc)"),
    ("libc: copies and compares", r"^__mem|^__str|^memcpy|^memmove"),
    ("libc: other (threads, locks, syscall stubs)", r"\(libc\.so\.6\)$|\(\[vdso\]\)$"),
    ("Go: runtime, other", r"^runtime\."),
)
GENERIC = r"^(runtime\.memmove|runtime\.memequal|runtime\.memeqbody|runtime\.cmpbody|" \
          r"indexbytebody|runtime\.duffcopy|runtime\.duffzero|bytes\.|strings\.)"


def _frames(block: str) -> tuple[str, list[str]]:
    """(thread name, frames innermost first as 'symbol (dso)') of one ``perf script`` sample."""
    lines = block.strip().splitlines()
    thread = lines[0].strip().rsplit(" ", 1)[0].strip()
    frames = []
    for line in lines[1:]:
        found = re.match(r"\s*[0-9a-f]+ (.*) \((.*)\)$", line)
        if found:
            symbol = found.group(1).split("+0x")[0]
            frames.append(f"{symbol} ({Path(found.group(2)).name or found.group(2)})")
    return thread, frames


def classify(frames: list[str]) -> str:
    if not frames:
        return "other"
    if frames[0].endswith("([kernel.kallsyms])"):
        kernel = " ".join(f for f in frames if f.endswith("([kernel.kallsyms])"))
        return next(name for name, pattern in KERNEL if re.search(pattern, kernel))
    for frame in frames:
        if re.search(GENERIC, frame) and frame is not frames[-1]:
            continue
        for name, pattern in USER:
            if re.search(pattern, frame):
                return name
        if not frame.startswith("[unknown]"):
            break
    return "other: " + frames[0]


def perf_buckets(data: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Samples per bucket and per thread name of a ``perf record -g`` file."""
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,tid,ip,sym,dso"],
                         capture_output=True, text=True).stdout
    buckets: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    for block in out.split("\n\n"):
        if not block.strip():
            continue
        thread, frames = _frames(block)
        name = classify(frames)
        buckets["other" if name.startswith("other: ") else name] += 1
        threads[thread] += 1
    return dict(buckets), dict(threads)


# Where the Python threads are (py-spy --native), by the innermost frame that matches; a sample
# whose innermost frame is a blocking call is a wait and left out.
WAIT = r"^(epoll_wait|epoll_pwait|poll|select|futex|pthread_cond_wait|pthread_cond_timedwait|" \
       r"__futex|syscall|sem_wait|nanosleep|__GI___poll|__libc_recv|recv|read|accept) "
PYTHON: tuple[tuple[str, str], ...] = (
    ("the hook (the processor's own code)", r"\(procs\.py:|minimal_servicer\.py:"),
    ("protobuf decode/encode (upb)", r"upb_|_upb|PyUpb|SerializeToString|FromString"),
    ("extproc: headers and body views, mutations", r"extproc/_headers\.py|extproc/_body\.py"),
    ("extproc: the message loop, answers, wire", r"extproc/_stream\.py|extproc/_wire\.py|"
     r"extproc/_responses\.py|extproc/_mode\.py|extproc/_processor\.py|extproc/_record\.py"),
    ("extproc: the transport (grpcio servicer, pyvoy ASGI app)", r"extproc/transports/"),
    ("gRPC core (C++)", r"grpc_core|grpc_chttp2|chttp2|grpc_event_engine|absl"),
    ("grpc.aio Cython glue", r"__pyx|cygrpc|\.pyx|grpc/aio/|grpc/_"),
    ("event loop (uvloop, asyncio)", r"uvloop|uv__|uv_|asyncio/|_asyncio|run_forever"),
    ("pyvoy", r"pyvoy|_pyvoy"),
    ("Python interpreter and allocator", r"_PyEval|_Py|Py[A-Z]|malloc|free|gc_"),
)


def py_spy_buckets(raw: Path) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames or re.search(WAIT, frames[-1]):
            continue
        name = next((n for frame in reversed(frames)  # innermost last in py-spy's raw output
                     for n, pattern in PYTHON if re.search(pattern, frame)), "other")
        counts[name] += int(count)
    return dict(counts)


class Switches:
    """Context switches of a process's threads from now until ``wait()`` (measure's end)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = self._count()
        self.total = 0

    def _count(self) -> int:
        total = 0
        for p in harness._descendants(self.pid):
            for task in Path(f"/proc/{p}/task").glob("*"):
                try:
                    status = (task / "status").read_text()
                except FileNotFoundError:
                    continue
                total += sum(int(n) for n in re.findall(r"ctxt_switches:\s+(\d+)", status))
        return total

    def wait(self, timeout: float | None = None) -> None:
        self.total = self._count() - self.start


def _perf(seconds: str, targets: list[tuple[int | None, Path]]) -> list[subprocess.Popen[bytes]]:
    started = []
    for pid, data in targets:
        if pid is not None:
            pids = ",".join(str(p) for p in harness._descendants(pid))
            started.append(subprocess.Popen(
                ["perf", "record", "-F", "499", "-g", "-p", pids, "-o", str(data), "--",
                 "sleep", seconds], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return started


def _print_buckets(title: str, buckets: dict[str, int], total_us: float) -> None:
    samples = sum(buckets.values()) or 1
    print(f"   {title} ({samples} samples), µs/req:")
    for bucket, count in sorted(buckets.items(), key=lambda kv: -kv[1]):
        print(f"     {count / samples * total_us:7.1f}  {count / samples * 100:5.1f}%  {bucket}")


def profile(scenario: harness.Scenario, candidate: harness.Candidate, duration: float,
            out: Path) -> None:
    seconds = str(max(1, int(duration) - 1))
    name = candidate.name
    switches: list[Switches] = []

    def count(server: int | None, envoy: int) -> list[Switches]:
        switches[:] = [Switches(server)] if server is not None else []
        return switches

    plain = harness.measure(scenario, candidate, duration, False, profilers=count)
    requests = plain.rps * duration
    print(f"\n== {name}: {candidate.description}")
    print(f"   {plain.rps:.0f} req/s, p50 {plain.p50_ms:.2f} ms; CPU µs/req: server "
          f"{plain.cpu_us or 0:.0f}, Envoy under test {plain.envoy_cpu_us or 0:.0f}"
          + (f"; server context switches per request {switches[0].total / requests:.1f}"
             if switches else ""))
    server_data, envoy_data = out / f"{name}-server.perf", out / f"{name}-envoy.perf"
    harness.measure(scenario, candidate, duration, False, profilers=lambda server, envoy: _perf(
        seconds, [(server, server_data), (envoy, envoy_data)]))
    for who, data, total in (("server", server_data, plain.cpu_us),
                             ("Envoy under test", envoy_data, plain.envoy_cpu_us)):
        if candidate.server is None and who == "server":
            continue
        if data.exists() and total is not None:
            buckets, threads = perf_buckets(data)
            _print_buckets(f"{who}, perf", buckets, total)
            shares = ", ".join(f"{t} {n * 100 / sum(threads.values()):.0f}%"
                               for t, n in sorted(threads.items(), key=lambda kv: -kv[1]))
            print(f"     threads: {shares}")
    if candidate.server is not None and not candidate.server.startswith("go:"):
        raw = out / f"{name}.pyspy"

        def spy(server: int | None, envoy: int) -> list[subprocess.Popen[bytes]]:
            assert server is not None
            return [subprocess.Popen(
                [str(harness.tool("py-spy")), "record", "-p", str(server), "-d", seconds,
                 "-r", "100", "--native", "--subprocesses", "-f", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]

        harness.measure(scenario, candidate, duration, False, profilers=spy)
        if raw.exists():
            buckets = py_spy_buckets(raw)
            samples = sum(buckets.values()) or 1
            print(f"   Python threads' busy samples by innermost frame (py-spy --native, "
                  f"{samples} samples): "
                  + ", ".join(f"{n} {c * 100 / samples:.0f}%"
                              for n, c in sorted(buckets.items(), key=lambda kv: -kv[1])))


def micro(streams: int = 20000) -> None:
    """The Python work of one headers stream (both phases) in process, no gRPC, no sockets:
    parse, the message loop with the hook, serialise; against the minimal servicer's."""
    import asyncio
    import time

    import minimal_servicer
    import procs
    import uvloop
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    from extproc import Processor
    from extproc._stream import answer_stream
    from extproc._wire import parse_request
    from extproc.transports.grpcio import _serialize

    def headers(pairs: list[tuple[str, str]]) -> pb.HttpHeaders:
        return pb.HttpHeaders(end_of_stream=True, headers=base_pb2.HeaderMap(headers=[
            base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]))

    first = pb.ProcessingRequest(request_headers=headers([
        (":authority", "127.0.0.1:10000"), (":path", "/"), (":method", "GET"),
        (":scheme", "http"), ("x-forwarded-proto", "http"),
        ("x-request-id", "0d2b2a5e-4f0c-4b8e-9a53-5b8f3d5c8f21")]))
    first.protocol_config.request_body_mode = 0
    second = pb.ProcessingRequest(response_headers=headers([
        (":status", "200"), ("content-length", "0"), ("date", "Mon, 01 Dec 2026 00:00:00 GMT"),
        ("server", "envoy")]))
    wire = [first.SerializeToString(), second.SerializeToString()]

    class Nothing(Processor):
        async def on_request_headers(self, headers: object) -> None:
            pass

        async def on_response_headers(self, headers: object) -> None:
            pass

    async def stream(cls: type[Processor], parsed: list[object]) -> list[bytes]:
        async def messages() -> object:
            for message in parsed:
                yield message
        return [_serialize(a) async for a in answer_stream(cls, messages(), {}, None, None, None,
                                                           encode=True)]

    async def minimal(parsed: list[object]) -> list[bytes]:
        async def messages() -> object:
            for message in parsed:
                yield message
        servicer = minimal_servicer.Minimal("headers")
        return [a.SerializeToString() async for a in servicer.Process(messages(), None)]

    async def timed() -> dict[str, float]:
        results = {}
        parsed = [parse_request(w) for w in wire]
        cases = {
            "parse both messages (upb)": lambda: [parse_request(w) for w in wire],
            "extkit: loop + hooks + serialise (messages parsed)": lambda: stream(
                procs.BothHeaders, parsed),
            "extkit: the same with empty hooks": lambda: stream(Nothing, parsed),
            "minimal servicer: generator + answers + serialise": lambda: minimal(parsed),
        }
        for label, case in cases.items():
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(streams):
                    result = case()
                    if asyncio.iscoroutine(result):
                        await result
                best = min(best, time.perf_counter() - start)
            results[label] = best / streams * 1e6
        return results

    for label, us in uvloop.run(timed()).items():
        print(f"   {us:6.1f} µs per stream  {label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--scenario", default="headers",
                        choices=[s.name for s in harness.SCENARIOS])
    parser.add_argument("--candidates", default="envoy,go,minimal,extkit,extkit-pyvoy")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/xk-where"))
    args = parser.parse_args()
    for name in ("perf", "py-spy", "wrk"):
        if harness.tool(name) is None:
            sys.exit(f"where: {name} is missing (perf: apt-get install linux-perf)")
    harness.GO_BINARY = go_ref.build()
    scenario = next(s for s in harness.SCENARIOS if s.name == args.scenario)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average: {harness._load()}")
    print("\n== in process, uvloop, best of 3 runs of 20,000 streams")
    micro()
    for name in args.candidates.split(","):
        candidate = next(c for c in scenario.candidates if c.name == name)
        profile(scenario, candidate, args.duration, args.out)
    print(f"\nload average: {harness._load()}")


if __name__ == "__main__":
    main()
