"""What testing a Wasm filter costs in the proxy-wasm emulator next to a real Envoy, same
module, alternated rounds, medians, ratios:

- per request: the emulator runs the callbacks in this process; through Envoy it is an
  HTTP/1.1 keep-alive request on loopback, Envoy's own work and an echo upstream;
- per test: load the module and send 5 requests (the emulator) against starting Envoy with
  the module (``extctl.testing.envoy_stack``) and sending the same 5 requests.

    .venv/bin/python bench/emulator_time.py [--requests 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parent.parent

from extctl.config import WasmModule  # noqa: E402
from extctl.testing import envoy_stack  # noqa: E402
from wasm import ProxyWasm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    module = Path(tempfile.mkdtemp()) / "host_calls.wasm"
    module.write_bytes(wasmtime.wat2wasm((ROOT / "tests/helpers/wat/host_calls.wat").read_text()))
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
