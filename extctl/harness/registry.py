"""A local OCI registry for trying ``extctl push`` / ``pull`` and Envoy's Wasm fetches: Debian's
``docker-registry`` (the CNCF distribution registry) on loopback, plain HTTP, no accounts,
its storage in a directory of yours or a temporary one.

    from extctl.testing import LocalRegistry
    from registry import Connection, push

    with LocalRegistry() as local:             # 127.0.0.1, a free port
        push("build/filter.wasm", f"{local.host}/filters/tagger:v1",
             connection=Connection(insecure=True))

``extctl registry`` serves one in the foreground. Debian's packaged service listens on every
interface with htpasswd accounts; this one is reachable from this machine only, which is why
it may go without accounts and TLS (``extctl ... --insecure`` speaks plain HTTP, and only to
loopback registries).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from extproc.lifecycle import dies_with_us

from ..errors import EnvoyError, PortInUse, UsageError
from .envoy import end_session
from .ports import free_port, require_free

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LocalRegistry", "find_registry"]

_CANDIDATES = ("/usr/bin/docker-registry", "docker-registry", "registry")


def find_registry() -> str:
    """The registry binary: Debian's ``docker-registry`` (or ``registry`` on the PATH)."""
    for candidate in _CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RegistryMissing("docker-registry is missing: install Debian's docker-registry "
                          "(apt-get install docker-registry), or run any OCI registry on "
                          "127.0.0.1")


class RegistryMissing(UsageError):
    """No registry binary on this machine."""


class LocalRegistry:
    """``docker-registry`` on ``127.0.0.1:port`` (0: a free one), storing in ``storage``
    (None: a temporary directory, removed at the end). ``host`` is what references start
    with (``127.0.0.1:PORT``)."""

    def __init__(self, port: int = 0, storage: str | Path | None = None,
                 start_timeout: float = 20.0) -> None:
        self.port = port
        self._own = storage is None
        self.storage = Path(storage) if storage is not None else Path()
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Self:
        binary = find_registry()
        if self.port:
            require_free(self.host, "the registry", "another registry?")
        else:
            self.port = free_port()
        try:
            return self._start(binary)
        except BaseException:  # Ctrl-C while starting too: nothing left behind
            self.stop()
            raise

    def _start(self, binary: str) -> Self:
        if self._own:
            self.storage = Path(tempfile.mkdtemp(prefix="extctl-registry-"))
        self.storage.mkdir(parents=True, exist_ok=True)
        self._workdir = Path(tempfile.mkdtemp(prefix="extctl-registry-config-"))
        config = self._workdir / "config.yml"
        # JSON is YAML: no path or address is read as YAML syntax (a " #" in a path)
        config.write_text(json.dumps({
            "version": "0.1", "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(self.storage.resolve())},
                        "delete": {"enabled": True}},
            "http": {"addr": self.host}}))
        log = self._workdir / "registry.log"
        # the registry reads REGISTRY_* variables over its config (a debug listener on every
        # interface, say): not from this environment
        environment = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with open(log, "ab") as out:
            self.process = subprocess.Popen(dies_with_us([binary, "serve", str(config)]),
                                            stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=environment,
                                            start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = log.read_text(errors="replace").strip().splitlines()
                if any("address already in use" in line for line in text):
                    raise PortInUse(f"{self.host} (the registry) is already in use: stop what "
                                    "listens there or choose another port", self.host)
                raise EnvoyError(f"docker-registry exited at start: "
                                 f"{text[-1] if text else 'no output'}")
            with contextlib.suppress(urllib.error.URLError, OSError), \
                    urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1):
                return self
            time.sleep(0.05)
        raise EnvoyError(f"docker-registry not ready after {self.start_timeout:.0f}s")

    def interrupt(self) -> None:
        """Ask the registry to stop (``wait`` then returns); safe in a signal handler."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def wait(self) -> int:
        """Until the registry exits; its exit code."""
        assert self.process is not None
        return self.process.wait()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            end_session(process, 10)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self._own and self.storage != Path():
            shutil.rmtree(self.storage, ignore_errors=True)
            self.storage = Path()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
