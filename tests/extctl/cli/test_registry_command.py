"""``extctl registry``: the local registry a user starts to try push and pull, as they run it
(a background process, real ports, Ctrl-C), and ``extctl.testing.LocalRegistry``."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import wasmtime

from extctl.testing import LocalRegistry
from tests.helpers.common import alive
from tests.helpers.oci import free_port

WAT = Path(__file__).resolve().parents[2] / "helpers" / "wat"
EXTCTL = [sys.executable, "-m", "extctl"]


def _extctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXTCTL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_a_user_pushes_and_pulls_through_extctl_registry_then_stops_it(tmp_path):
    module = tmp_path / "filter.wasm"
    module.write_bytes(wasmtime.wat2wasm((WAT / "add_header.wat").read_text()))
    port, storage = free_port(), tmp_path / "images"
    served = subprocess.Popen([*EXTCTL, "registry", "--port", str(port), "--storage",
                               str(storage)], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert served.stderr is not None
        first = served.stderr.readline()  # printed once it answers
        assert first.startswith(f"registry: http://127.0.0.1:{port} "), first
        reference = f"oci://127.0.0.1:{port}/filters/tagger:v1"
        pushed = _extctl("push", str(module), reference, "--insecure", cwd=tmp_path)
        assert pushed.returncode == 0, pushed.stderr
        pulled = _extctl("pull", reference, "-o", "back.wasm", "--insecure", cwd=tmp_path)
        assert pulled.returncode == 0, pulled.stderr
        assert (tmp_path / "back.wasm").read_bytes() == module.read_bytes()
        # only loopback: the kernel's listening sockets on that port are 127.0.0.1's
        assert _listeners(port) == ["0100007F"]

        # a second one on the same port: one line, exit 5, nothing left behind
        before = _temporary_dirs()
        again = _extctl("registry", "--port", str(port), cwd=tmp_path)
        assert _temporary_dirs() == before
        assert again.returncode == 5, again.stderr
        assert again.stderr.strip().splitlines() == [
            f"error: 127.0.0.1:{port} (the registry) is already in use: another process "
            "listens there (another registry?); stop it or choose another port"]
    finally:
        served.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = served.communicate(timeout=30)
    assert served.returncode == 0, err
    assert err.strip().endswith("registry stopped")
    assert list(storage.rglob("*"))  # the user's storage kept, the images in it
    assert not _listening(port)


def _temporary_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("extctl-registry-*"))


def _listeners(port: int) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_local_registry_in_python_serves_and_cleans_up(tmp_path):
    from registry import Connection, pull, push

    module = tmp_path / "filter.wasm"
    module.write_bytes(wasmtime.wat2wasm((WAT / "add_header.wat").read_text()))
    with LocalRegistry() as local:
        storage = local.storage
        reference = f"{local.host}/filters/tagger:v1"
        digest = push(module, reference, connection=Connection(insecure=True)).digest
        result = pull(reference, tmp_path / "out.wasm", connection=Connection(insecure=True))
        assert result.digest == digest
        assert (tmp_path / "out.wasm").read_bytes() == module.read_bytes()
        assert local.process is not None
        pid = local.process.pid
    assert not storage.exists()  # its temporary storage removed
    assert not alive(pid)
