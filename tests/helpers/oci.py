"""A real OCI registry (Debian's docker-registry) on loopback, with htpasswd auth and TLS."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx

REGISTRY_BINARY = "/usr/bin/docker-registry"
USER, PASSWORD = "extkit", "s3cret-pass"


def make_ca(directory: Path) -> dict[str, Path]:
    """A test CA and a server certificate for 127.0.0.1/localhost, signed by it (openssl)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=extkit-test-ca", "-keyout", "ca.key", "-out", "ca.pem")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")
        (directory / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem")
    return {p.name: p for p in directory.iterdir()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    host: str
    storage: Path
    ca_file: Path | None
    process: subprocess.Popen[bytes]
    log: Path
    cert_dir: Path  # holds only ca.crt: what skopeo's --cert-dir wants

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_registry(workdir: Path, *, tls: dict[str, Path] | None, auth: bool = True,
                   port: int | None = None) -> Registry:
    if not Path(REGISTRY_BINARY).exists():
        raise RuntimeError("docker-registry is missing: apt-get install -y docker-registry "
                           "(scripts/setup.sh does it)")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    port = port or free_port()
    lines = ["version: 0.1", "log:", "  level: warn", "storage:", "  filesystem:",
             f"    rootdirectory: {storage}", "  delete:", "    enabled: true",
             "http:", f"  addr: 127.0.0.1:{port}"]
    if tls:
        lines += ["  tls:", f"    certificate: {tls['server.pem']}",
                  f"    key: {tls['server.key']}"]
    if auth:
        htpasswd = workdir / "htpasswd"
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"{USER}:{hashed}\n")
        lines += ["auth:", "  htpasswd:", "    realm: extkit-test", f"    path: {htpasswd}"]
    config = workdir / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    log = workdir / "registry.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    cert_dir = workdir / "certs"
    cert_dir.mkdir(exist_ok=True)
    if tls:
        shutil.copy(tls["ca.pem"], cert_dir / "ca.crt")
    registry = Registry(f"127.0.0.1:{port}", storage, tls["ca.pem"] if tls else None,
                        process, log, cert_dir)
    scheme = "https" if tls else "http"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            verify = ssl.create_default_context(cafile=str(tls["ca.pem"])) if tls else True
            httpx.get(f"{scheme}://{registry.host}/v2/", verify=verify, timeout=1)
            return registry
        except httpx.HTTPError:
            time.sleep(0.1)
    registry.stop()
    raise RuntimeError("docker-registry did not become ready")


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("skopeo") is None:
        raise RuntimeError("skopeo is missing: apt-get install -y skopeo")
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=60)
