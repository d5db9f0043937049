"""Build the module, then run envoy-demo.yaml's filter in a real Envoy 1.40 and check what it
does, request by request (exit status 1 on the first check that fails).

    .venv/bin/python spike/dynamic_module/demo.py

The config is envoy-demo.yaml with loopback port 0 and, in place of its direct_response, an
echo upstream (extctl's) that answers with the request it received, so the request headers
the processor changed can be checked. The processor is ``demo_procs:Demo`` (header changes
both ways, per-request state, local replies, a slow hook, a failing one); the benchmark's
``procs:BothHeaders`` of the YAML runs first.
"""

from __future__ import annotations

import concurrent.futures
import copy
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.dynamic_modules.v3 import dynamic_modules_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from google.protobuf import json_format, wrappers_pb2  # noqa: F401

from extctl.harness.echo import EchoServer
from extctl.testing import EnvoyProcess

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def config(processor: str, upstream: str) -> str:
    """envoy-demo.yaml on port 0, routing to ``upstream``, running ``processor``."""
    document: dict[str, Any] = yaml.safe_load((HERE / "envoy-demo.yaml").read_text())
    document = copy.deepcopy(document)
    document["admin"]["address"]["socket_address"]["port_value"] = 0
    listener = document["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = 0
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager["route_config"]["virtual_hosts"][0]["routes"][0] = {
        "match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "10s"}}
    module = manager["http_filters"][0]["typed_config"]
    module["filter_config"]["value"] = json.dumps(
        {"processor": processor, "path": [str(HERE), str(ROOT / "bench")]})
    host, port = upstream.rsplit(":", 1)
    document["static_resources"]["clusters"] = [{
        "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {"address": host,
                                                        "port_value": int(port)}}}}]}]}}]
    json_format.ParseDict(document, bootstrap_pb2.Bootstrap())  # a wrong field fails here
    return json.dumps(document)


def get(port: int, path: str = "/", headers: dict[str, str] | None = None,
        timeout: float = 10.0) -> tuple[int, dict[str, str], bytes, float]:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        received = {k.lower(): v for k, v in response.getheaders()}
        return response.status, received, body, time.monotonic() - started
    finally:
        connection.close()


def check(what: str, ok: bool, detail: object = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}{f': {detail}' if detail and not ok else ''}")
    if not ok:
        sys.exit(1)


def upstream_headers(body: bytes) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for name, value in json.loads(body)["headers"]:
        seen.setdefault(name, []).append(value)
    return seen


def main() -> None:
    subprocess.run(["bash", str(HERE / "build.sh")], check=True)
    os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(HERE / "build")
    with EchoServer() as echo:
        with EnvoyProcess(config("procs:BothHeaders", echo.address), log_level="info") as envoy:
            status, headers, body, _ = get(envoy.port)
            check("procs:BothHeaders: the upstream got x-extkit: 1",
                  upstream_headers(body).get("x-extkit") == ["1"], body)
            check("procs:BothHeaders: the client got x-extkit-response: 1",
                  headers.get("x-extkit-response") == "1", headers)
            check("Envoy logged the ABI version as matched",
                  "ABI version v0.2.0 matched" in envoy.log())

        with EnvoyProcess(config("demo_procs:Demo", echo.address)) as envoy:
            port = envoy.port
            status, headers, body, _ = get(port, headers={"x-internal": "secret"})
            seen = upstream_headers(body)
            check("set, add (twice) and remove reach the upstream",
                  status == 200 and seen.get("x-extkit") == ["1"]
                  and seen.get("x-seen") in (["a", "b"], ["a,b"]) and "x-internal" not in seen,
                  seen)
            check("the response hook read the request's headers (one instance per request)",
                  headers.get("x-request-path") == "/" and headers.get("x-extkit-response") == "1",
                  headers)

            status, headers, body, _ = get(port, headers={"x-deny": "1"})
            check("ImmediateResponse is a local reply (403, body, headers)",
                  (status, body, headers.get("x-why")) == (403, b"denied\n", "policy"),
                  (status, body, headers))

            status, _, body, _ = get(port, "/boom")
            check("a hook that raises fails closed with error_status and error_body",
                  (status, body) == (500, b"processor error\n"), (status, body))

            status, _, _, took = get(port, "/too-slow")
            check("no answer within message_timeout (1 s): 504", status == 504
                  and 0.9 < took < 3, (status, took))

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                slow = pool.submit(get, port, "/slow")
                time.sleep(0.05)
                fast = [pool.submit(get, port, f"/fast/{i}") for i in range(20)]
                fast_times = [f.result()[3] for f in fast]
                slow_status, _, _, slow_time = slow.result()
            check("a slow hook (0.5 s) delays only its own request",
                  slow_status == 200 and slow_time >= 0.5 and max(fast_times) < 0.3,
                  (slow_time, max(fast_times)))

            # A client that leaves while its hook runs: Envoy destroys the stream, the late
            # answer is dropped, the Processor instance is released.
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
                time.sleep(0.1)
            time.sleep(0.7)
            status, _, _, _ = get(port)
            check("a client gone mid-hook: the late answer is dropped, Envoy serves on",
                  status == 200 and envoy.process is not None and envoy.process.poll() is None)

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(lambda i: get(port, f"/n/{i}")[0], range(2000)))
            check("2000 requests, 16 at a time, all 200", statuses.count(200) == 2000,
                  {s: statuses.count(s) for s in set(statuses)})
            log = envoy.log()
            check("Envoy's log: one traceback (/boom's), no bridge failure",
                  log.count("Traceback") == 1 and "got no answer" not in log, log[-3000:])


if __name__ == "__main__":
    main()
