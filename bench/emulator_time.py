"""What testing a Wasm filter costs in the proxy-wasm emulator next to a real Envoy, same
module, alternated rounds, medians, ratios:

- per request: the emulator runs the callbacks in this process; through Envoy it is an
  HTTP/1.1 keep-alive request on loopback, Envoy's own work and an echo upstream;
- per test: load the module and send 5 requests (the emulator) against starting Envoy with
  the module (``extctl.testing.envoy_stack``) and sending the same 5 requests;
- module load (``ProxyWasm(...)``, start included) of host_calls.wat and of a 3.5 MB module
  (host_calls.wat and 24,000 generated functions): the first load compiles (an empty cache
  directory), a cached one reads the compiled module from disk (what a new process does) or
  reuses the one this process compiled (:mod:`wasm.compiled`).

    .venv/bin/python bench/emulator_time.py [--requests 500] [--rounds 5] [--load-rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parent.parent

from extctl.config import WasmModule  # noqa: E402
from extctl.testing import envoy_stack  # noqa: E402
from wasm import ProxyWasm, compiled  # noqa: E402

WAT = ROOT / "tests/helpers/wat/host_calls.wat"


def large_module(functions: int = 24_000) -> bytes:
    """host_calls.wat and ``functions`` more, each a loop over memory calling the one before
    (about 146 bytes of code each), exported through one function, as compiled code is."""
    base = WAT.read_text().rstrip()
    body = []
    for i in range(functions):
        then = ("(local.get $acc)" if i == 0 else
                f"(i32.add (local.get $acc) (call $f{i - 1} (local.get $a) (i32.const 0)))")
        body.append(f"""(func $f{i} (param $a i32) (param $b i32) (result i32)
          (local $i i32) (local $acc i32)
          (local.set $acc (i32.xor (local.get $a) (i32.const {i})))
          (block $out (loop $next
            (br_if $out (i32.ge_u (local.get $i) (local.get $b)))
            (local.set $acc (i32.add (i32.mul (local.get $acc) (i32.const 31))
              (i32.load8_u (i32.add (local.get $i) (i32.const {i % 4096})))))
            (if (i32.and (local.get $acc) (i32.const 1))
              (then (local.set $acc (i32.rotl (local.get $acc) (i32.const 7))))
              (else (local.set $acc (i32.sub (local.get $acc)
                                             (i32.shr_u (local.get $acc) (i32.const 3))))))
            (i32.store (i32.add (i32.const 8192) (i32.and (local.get $i) (i32.const 1020)))
                       (local.get $acc))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
          {then})""")
    work = (f'(func (export "work") (param i32 i32) (result i32) '
            f'(call $f{functions - 1} (local.get 0) (local.get 1)))')
    return bytes(wasmtime.wat2wasm(base[:-1] + "\n".join(body) + work + ")"))


def _timed(load: Callable[[], ProxyWasm], expected: str) -> float:
    started = time.perf_counter()
    plugin = load()
    elapsed = time.perf_counter() - started
    assert plugin.vm.origin == expected, (plugin.vm.origin, expected)
    return elapsed


def load_times(module: Path, rounds: int, first_rounds: int) -> dict[str, float]:
    """Median seconds of ProxyWasm(module): compiled (cache empty), from the disk cache, from
    this process's."""
    times: dict[str, list[float]] = {"compiled": [], "disk": [], "memory": []}
    saved = os.environ.get(compiled.CACHE_ENV)
    try:
        for _ in range(first_rounds):
            os.environ[compiled.CACHE_ENV] = tempfile.mkdtemp(prefix="extkit-bench-cache-")
            compiled.clear_memory()
            times["compiled"].append(_timed(lambda: ProxyWasm(module), "compiled"))
        for _ in range(rounds):
            compiled.clear_memory()
            times["disk"].append(_timed(lambda: ProxyWasm(module), "disk"))
            times["memory"].append(_timed(lambda: ProxyWasm(module), "memory"))
    finally:
        if saved is None:
            os.environ.pop(compiled.CACHE_ENV, None)
        else:
            os.environ[compiled.CACHE_ENV] = saved
    return {origin: statistics.median(found) for origin, found in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--load-rounds", type=int, default=3,
                        help="first loads (compiling) of each module")
    args = parser.parse_args()
    module = Path(tempfile.mkdtemp()) / "host_calls.wasm"
    module.write_bytes(wasmtime.wat2wasm(WAT.read_text()))
    large = module.with_name("large.wasm")
    large.write_bytes(large_module())
    for path in (module, large):
        found = load_times(path, args.rounds, args.load_rounds)
        print(f"module load, {path.name} ({path.stat().st_size:,} bytes; medians of "
              f"{args.load_rounds} first, {args.rounds} cached): first (compiling) "
              f"{found['compiled'] * 1e3:.1f} ms, cached on disk {found['disk'] * 1e3:.1f} ms, "
              f"cached in this process {found['memory'] * 1e3:.1f} ms")
    sys.stdout.flush()
    headers = {"x-copy": "v", "x-remove": "r"}
    emulated: list[float] = []
    proxied: list[float] = []
    plugin = ProxyWasm(module, plugin_configuration="bench")
    filters = [WasmModule("bench", file=str(module), text="bench")]
    with envoy_stack(wasm=filters) as stack:
        conn = http.client.HTTPConnection("127.0.0.1", stack.envoy.port, timeout=10)
        for _ in range(args.rounds):
            started = time.perf_counter()
            for _ in range(args.requests):
                assert plugin.request(path="/b", headers=headers).status == 200
            emulated.append((time.perf_counter() - started) / args.requests)
            started = time.perf_counter()
            for _ in range(args.requests):
                conn.request("GET", "/b", headers=headers)
                response = conn.getresponse()
                response.read()
                assert response.status == 200
            proxied.append((time.perf_counter() - started) / args.requests)
        conn.close()
    emulator, envoy = statistics.median(emulated), statistics.median(proxied)
    print(f"per request ({args.rounds} rounds of {args.requests}): emulator "
          f"{emulator * 1e6:.0f} us, Envoy {envoy * 1e6:.0f} us: "
          f"{emulator / envoy:.2f}x Envoy's time")
    test_emulated: list[float] = []
    test_proxied: list[float] = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        with ProxyWasm(module, plugin_configuration="bench") as fresh:
            for _ in range(5):
                assert fresh.request(path="/b", headers=headers).status == 200
        test_emulated.append(time.perf_counter() - started)
        started = time.perf_counter()
        with envoy_stack(wasm=filters) as stack:
            for _ in range(5):
                assert stack.get("/b", headers=headers).status == 200
        test_proxied.append(time.perf_counter() - started)
    emulator, envoy = statistics.median(test_emulated), statistics.median(test_proxied)
    print(f"per test (load + 5 requests, {args.rounds} rounds): emulator "
          f"{emulator * 1e3:.1f} ms, Envoy {envoy * 1e3:.0f} ms: "
          f"{emulator / envoy:.3f}x Envoy's time")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
