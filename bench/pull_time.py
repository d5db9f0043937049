"""Pull time of a 50 MiB module: ``extctl pull`` next to ``skopeo copy`` of the same image,
against a local docker-registry (TLS, htpasswd), alternated, medians.

    .venv/bin/python bench/pull_time.py [--size-mib 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import registry  # noqa: E402
from tests.helpers.oci import PASSWORD, USER, make_ca, start_registry  # noqa: E402


def big_module(size: int) -> bytes:
    """A valid module padded with a custom section to ``size`` bytes."""
    header = b"\x00asm\x01\x00\x00\x00"
    name = b"pad"
    payload_len = size - len(header) - 1 - 5 - 1 - len(name)
    leb = bytearray()
    value = payload_len + 1 + len(name)
    for _ in range(5):  # fixed 5-byte LEB128
        leb.append((value & 0x7F) | 0x80)
        value >>= 7
    leb[-1] &= 0x7F
    return header + b"\x00" + bytes(leb) + bytes([len(name)]) + name + os.urandom(payload_len)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xk-pull-"))
    (work / "ca").mkdir()
    ca = make_ca(work / "ca")
    reg = start_registry(work / "registry", tls=ca)
    try:
        module = work / "big.wasm"
        module.write_bytes(big_module(args.size_mib * 1024 * 1024))
        conn = registry.Connection(registry.Credentials(USER, PASSWORD, "bench"),
                                   ca_file=str(reg.ca_file))
        ref = f"oci://{reg.host}/bench/big:v1"
        registry.push(module, ref, connection=conn)
        policy = work / "policy.json"
        policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        times: dict[str, list[float]] = {"extctl pull": [], "skopeo copy": []}
        for round_no in range(args.rounds):
            order = list(times) if round_no % 2 == 0 else list(times)[::-1]
            for name in order:
                out = work / f"out-{round_no}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                started = time.perf_counter()
                if name == "extctl pull":
                    registry.pull(ref, out / "plugin.wasm", connection=conn, cache=None)
                else:
                    subprocess.run(["skopeo", "--policy", str(policy), "copy", "--src-cert-dir",
                                    str(reg.cert_dir), "--src-creds", f"{USER}:{PASSWORD}",
                                    f"docker://{reg.host}/bench/big:v1", f"dir:{out}"],
                                   check=True, capture_output=True)
                times[name].append(time.perf_counter() - started)
        base = statistics.median(times["skopeo copy"])
        print(f"{args.size_mib} MiB module, {args.rounds} alternated rounds, medians:")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"- {name}: {median:.3f} s ({median / base:.2f}x skopeo copy)")
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
