"""``extctl dev``: a processor and/or Wasm modules, an echo upstream and a real Envoy on loopback,
wired together by the generated config."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

import extproc
import registry
import wasm
from extproc import FilterSpec, ServerThread
from extproc.lifecycle import Captured, capture_signals, dies_with_us

from ..config import CalloutCluster, Deployment, FilterPosition, WasmModule
from ..errors import EnvoyError, UsageError
from .echo import EchoServer
from .envoy import EnvoyProcess
from .ports import require_free
from .reload import STOP_SIGNALS, Child, watch
from .view import LiveView, summary

logger = logging.getLogger("extctl.dev")


def module_name(source: str) -> str:
    """A module's name from where it comes from: ``oci://r/f/tag:v1`` -> ``tag``."""
    stem = source.rstrip("/").rpartition("/")[2]
    return re.sub(r"[^a-z0-9-]+", "-", stem.split("@")[0].split(":")[0].lower()
                  .removesuffix(".wasm")).strip("-") or "wasm"


def fetch(module: WasmModule, workdir: Path,
          connection: registry.Connection | None = None) -> WasmModule:
    """The module with a local ``file`` Envoy can load: a remote one is fetched into
    ``workdir`` and checked against ``sha256`` (the manifest digest for an image, the body's
    sha256 for a URL, as Envoy Gateway means them); a local one is verified and inspected."""
    target = workdir / f"{module.name}.wasm"
    sha256 = f"sha256:{module.sha256}" if module.sha256 else None
    if module.url is not None:
        ca_file = connection.ca_file if connection is not None else None
        path = registry.pull_http(module.url, target, sha256=sha256, ca_file=ca_file).path
    elif module.image is not None:
        path = registry.pull(module.image, target, sha256=sha256, connection=connection,
                             cache=registry.Cache()).path
    else:
        path = Path(module.file or "").resolve()
        if not path.is_file():
            raise UsageError.naming("{wasm} {file}: no such file", file=module.file)
        if module.sha256:
            wasm.verify_file(path, module.sha256)
        wasm.inspect_file(path)  # a file Envoy could not load is refused here, by name
    return dataclasses.replace(module, file=str(path), image=None, url=None, sha256=None)


@dataclass(frozen=True)
class Reload:
    """What ``--reload`` watches: the processor's import path and directories."""

    processor: str | None
    """``MODULE:CLASS``, re-imported in a fresh interpreter on every change (None: no
    processor of the user's)."""
    app_dir: str = "."
    directories: Sequence[str] = ()
    """Where Python changes are watched; default: ``app_dir``."""
    view: bool = False
    """Whether the child records its streams for the live view."""


class DevStack:
    def __init__(self, processor: type[extproc.Processor] | None, *, port: int = 10000,
                 wasm: Sequence[WasmModule] = (),
                 filter_order: Sequence[FilterPosition] = (),
                 connections: Mapping[str, registry.Connection] | None = None,
                 envoy_log_level: str = "warning", reload: Reload | None = None,
                 admin: str = "127.0.0.1:0", clusters: Sequence[CalloutCluster] = (),
                 live: LiveView | None = None) -> None:
        self.admin = admin
        self.live = live
        self.clusters = tuple(clusters)
        self.envoy_log_level = envoy_log_level
        self.processor = processor
        self.port = port
        self.wasm = wasm
        self.filter_order = filter_order
        self.connections = connections or {}
        self.reload = reload

    def run(self) -> None:
        """Until SIGINT, SIGTERM or SIGHUP; then everything started is stopped and removed.
        A port given and in use is refused first (:class:`~extctl.errors.PortInUse`)."""
        require_free(f"127.0.0.1:{self.port}", "Envoy's listener")
        if self.processor is not None:
            require_free(self.admin, "the processor's admin endpoint")
        stop = threading.Event()
        with capture_signals(lambda signum: stop.set(), STOP_SIGNALS) as captured:
            self._run(stop, captured)

    def _run(self, stop: threading.Event, captured: Captured) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="extctl-dev-"))
        server: ServerThread | None = None
        child: Child | None = None
        follower: _Follower | None = None
        following: threading.Thread | None = None
        envoy = echo = None
        try:
            socket_path = str(workdir / "extproc.sock")
            # The live view: Envoy's line about each request, the processor's record of its
            # stream, joined by x-request-id (Envoy gives it to the processor as metadata).
            access_log = workdir / "access.log"
            records = workdir / "streams.jsonl"
            live = self.live
            modules = [fetch(w, workdir, self.connections.get(w.name)) for w in self.wasm]
            processor: type[extproc.Processor] | FilterSpec | None = self.processor
            admin_url = None
            if self.reload is not None and self.reload.processor is not None:
                # Served by a child, started anew on every change; the class imported here
                # (by the command) gives the first config. Its admin port stays the same.
                child = Child(_serve_args(self.reload, self.envoy_log_level,
                                          str(records) if live is not None else None),
                              socket=socket_path, admin=self.admin,
                              # a margin for Envoy's timers: the old child only waits;
                              # then it drains what it still serves (a slow upload)
                              handover=HANDOVER + 1.5, retire_grace=RETIRE_GRACE,
                              start_timeout=START_TIMEOUT)
                if not child.start(stop) and not stop.is_set():
                    logger.error("the processor does not start (above); the next change "
                                 "that fixes it starts it")
                admin_url = f"http://{child.admin_address}"
            elif self.processor is not None:
                server = ServerThread(
                    self.processor, uds=socket_path, socket_mode=0o600, admin=self.admin,
                    view=(lambda record: live.stream(summary(record))) if live else None
                ).start()
                admin_server = getattr(server.server, "admin", None)  # grpcio transport
                if admin_server is not None:
                    admin_url = admin_server.url
            echo = EchoServer(verbose=True).start()

            def deployment(spec: type[extproc.Processor] | FilterSpec | None,
                           port: int) -> Deployment:
                return Deployment.build(
                    spec, addresses=[socket_path] if spec is not None else [],
                    upstreams=[echo.address] if echo else [], listen=f"127.0.0.1:{port}",
                    access_log=live is None,
                    access_log_file=str(access_log) if live is not None else None,
                    request_id_to_processor=True, wasm=modules,
                    filter_order=self.filter_order, clusters=self.clusters)

            def bootstrap(deployment: Deployment) -> Any:
                message = deployment.envoy_bootstrap()
                return _handing_over(message) if child is not None else message

            current = deployment(processor, self.port)
            configured = current.spec  # what the running Envoy asks the processor for
            # The live view reads Envoy's access log as it is written.
            flush = 50 if live is not None else None
            envoy = EnvoyProcess(bootstrap(current), workdir / "envoy",
                                 log_level=self.envoy_log_level, file_flush_ms=flush).start()
            tail = threading.Thread(target=_tail, args=(envoy.log_path, stop), daemon=True)
            tail.start()
            if live is not None:
                follower = _Follower(live, access_log, records)
                following = threading.Thread(target=follower.run, args=(stop,), daemon=True)
                following.start()
            changes: queue.Queue[set[str]] = queue.Queue()
            watcher = None
            watching = threading.Event()
            if self.reload is not None:
                watcher = threading.Thread(target=watch, daemon=True, kwargs={
                    "directories": self.reload.directories or [self.reload.app_dir],
                    "on_change": changes.put, "stop": stop,
                    "files": [m.file for m in modules if m.file], "ready": watching})
                watcher.start()
                watching.wait(10)  # a change saved before this would be missed
            _say(f"workdir: {workdir}")
            if current.spec is not None:
                _say(f"processor: {current.spec.name} on unix:{socket_path} "
                           f"(phases: {', '.join(current.spec.mode.phases) or 'none'})")
            if admin_url is not None:
                _say(f"metrics: {admin_url}/metrics (also /healthz, /readyz)")
            for module in modules:
                _say(f"wasm: {module.name} from {module.file}")
            _say("filters: " + " -> ".join(envoy.http_filters()))
            _say(f"upstream: http://{echo.address} (echoes the request as JSON)")
            _say(f"envoy: http://127.0.0.1:{envoy.port} (admin http://{envoy.admin_address})")
            # The curl line once a request would succeed: later, if the processor does not
            # start yet (a --reload child whose code fails).
            waiting = _Readiness(envoy, socket_path if current.spec is not None else None)
            failed = child is not None and child.process is None
            if waiting.wait(0 if failed else READY_TIMEOUT, stop):
                _say(f"try: curl -i http://127.0.0.1:{envoy.port}/hello")
            else:
                _say(f"not ready yet ({waiting.reason}); the curl line follows when it is")
            if self.reload is not None:
                _say("reload: on (Python files under "
                           f"{', '.join(self.reload.directories or [self.reload.app_dir])}"
                           f"{' and the Wasm files' if modules else ''})")
            _say("Ctrl-C stops everything.")
            wasm_files = {m.file for m in modules if m.file}
            while not stop.wait(0.1):
                if envoy.process is None or envoy.process.poll() is not None:
                    logger.error("Envoy exited; stopping")
                    break
                if not waiting.done and waiting.ready(envoy):
                    _say(f"try: curl -i http://127.0.0.1:{envoy.port}/hello")
                if child is not None and child.process is not None \
                        and child.exit_code is not None:
                    logger.error("the processor exited with %d; Envoy answers 5xx until a "
                                 "change starts it again", child.exit_code)
                    child.process = None  # reported once
                try:
                    changed = changes.get_nowait()
                except queue.Empty:
                    continue
                restart_envoy = bool(changed & wasm_files)
                if child is not None and changed - wasm_files:
                    assert self.reload is not None
                    _say(f"reloading: {', '.join(sorted(changed - wasm_files)[:3])} changed")
                    serving = child.process is not None
                    probe = _Probe(self.reload)  # the new spec, read while the child starts
                    if not child.start(stop):
                        probe.cancel()
                        if not stop.is_set():
                            logger.error("reload: the processor does not start (above); %s",
                                         "the previous code serves on" if serving else
                                         "Envoy answers 5xx until a change fixes it")
                        continue
                    spec = probe.result()
                    if spec is None:  # changed again since: the next change reloads it
                        spec = current.spec
                    assert spec is not None
                    if spec != configured:
                        restart_envoy = True  # the class asks Envoy for other phases now
                    current = deployment(spec, envoy.port)
                    _say(f"reload: {spec.name} restarted (phases: "
                               f"{', '.join(spec.mode.phases) or 'none'})")
                if restart_envoy:
                    # The new Envoy binds the port beside the old one (Envoy's listeners set
                    # SO_REUSEPORT) and is ready before the old one stops taking connections.
                    try:
                        fresh = EnvoyProcess(bootstrap(deployment(current.processor,
                                                                  envoy.port)),
                                             workdir / "envoy", log_level=self.envoy_log_level,
                                             file_flush_ms=flush).start()
                    except EnvoyError as exc:
                        logger.error("reload: the new Envoy does not start (%s); the previous "
                                     "one serves on", exc)
                        continue
                    _retire_envoy(envoy)
                    envoy, configured = fresh, current.spec
                    _say(f"reload: Envoy restarted on port {envoy.port}")
        finally:
            stop.set()
            captured.release()  # a second Ctrl-C interrupts the cleanup, as it always did
            if envoy is not None:
                envoy.stop()
            if following is not None and follower is not None:
                following.join(5)
                follower.read()  # what Envoy logged as it stopped
                follower.live.flush(final=True)
            if echo is not None:
                echo.stop()
            if server is not None:
                server.stop(grace=2)
            if child is not None:
                child.close()
            shutil.rmtree(workdir, ignore_errors=True)
            _say("stopped; removed " + str(workdir))


def _retire_envoy(envoy: EnvoyProcess, timeout: float = 5.0) -> None:
    """Stop ``envoy`` now that another one serves on its port: its listeners close first (so
    the other Envoy takes every new connection), the requests under way finish (within
    ``timeout``), then it exits."""
    try:
        urllib.request.urlopen(urllib.request.Request(
            f"http://{envoy.admin_address}/drain_listeners", method="POST"), timeout=5).close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _requests_under_way(envoy):
            time.sleep(0.02)
    except OSError as exc:
        logger.debug("draining the previous Envoy: %s", exc)
    envoy.stop()


def _requests_under_way(envoy: EnvoyProcess) -> int:
    return sum(value for name, value in envoy.stats("http.").items()
               if name.endswith(".downstream_rq_active") and not name.startswith("http.admin."))


def _say(line: str) -> None:
    """A line about the stack, on stderr: stdout carries only the live view (``--output
    json``: one JSON object per line, for ``| jq``)."""
    click.echo(line, err=True)


def _serve_args(reload: Reload, log_level: str, records: str | None) -> list[str]:
    """``extctl serve``'s arguments but ``--uds`` and ``--admin`` (each child binds its own,
    see :class:`~extctl.harness.reload.Child`)."""
    assert reload.processor is not None
    return [reload.processor,
            "--app-dir", os.path.abspath(reload.app_dir), "--socket-mode", "600",
            "--grace-period", str(RETIRE_GRACE),
            "--log-level", "info" if log_level in ("debug", "trace") else "warning",
            *(["--view-records", records] if records else [])]


START_TIMEOUT = 20
"""With ``--reload``, how long a new child may take to serve before dev gives up on it (the
previous one serving on)."""

RETIRE_GRACE = 30
"""With ``--reload``, how long a replaced child may finish the streams it still serves (a slow
upload); dev itself stops its child within 2 s."""

HANDOVER = 0.5
"""With ``--reload``, the longest Envoy keeps a connection to the processor: a child replaced
by a new one gets no new stream after that long (see :class:`~extctl.harness.reload.Child`)."""


def _handing_over(bootstrap: Any) -> Any:
    """``bootstrap`` with a ``max_connection_duration`` of :data:`HANDOVER` on the processor's
    cluster: Envoy stops sending new streams on an older connection and opens a new one,
    which reaches the child whose socket is at the path now."""
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

    from ..config.envoy import EXT_PROC_CLUSTER

    key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    for cluster in bootstrap.static_resources.clusters:
        if cluster.name == EXT_PROC_CLUSTER:
            options = http_protocol_options_pb2.HttpProtocolOptions()
            cluster.typed_extension_protocol_options[key].Unpack(options)
            duration = options.common_http_protocol_options.max_connection_duration
            duration.FromMilliseconds(int(HANDOVER * 1000))
            cluster.typed_extension_protocol_options[key].Pack(options)
    return bootstrap


class _Probe:
    """The processor's FilterSpec from the code on disk now, read in a fresh interpreter
    while the new child starts (its errors are the child's to print)."""

    def __init__(self, reload: Reload) -> None:
        assert reload.processor is not None
        self.process = subprocess.Popen(
            dies_with_us([sys.executable, "-m", "extctl.harness.probe", reload.processor,
                          os.path.abspath(reload.app_dir)]), stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)

    def result(self) -> FilterSpec | None:
        """None when it does not import."""
        try:
            out, _ = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.cancel()
            return None
        if self.process.returncode != 0:
            return None
        return FilterSpec.from_dict(json.loads(out))

    def cancel(self) -> None:
        self.process.kill()
        self.process.communicate()


READY_TIMEOUT = 15.0
"""How long ``extctl dev`` waits for the stack to answer before it says it is not ready."""


class _Readiness:
    """Whether a request through Envoy would succeed now (the upstream runs here, started
    first): Envoy's listener takes connections and, with a processor, the processor answers
    SERVING on the socket Envoy dials and Envoy's own health check of it has passed (its
    ``/clusters``), so Envoy reaches it too."""

    def __init__(self, envoy: EnvoyProcess, socket_path: str | None) -> None:
        self.envoy = envoy
        self.socket_path = socket_path
        self.reason = ""
        self.done = False

    def ready(self, envoy: EnvoyProcess | None = None) -> bool:
        from ..config.envoy import EXT_PROC_CLUSTER
        from ..diagnose.health import check_one

        envoy = self.envoy = envoy or self.envoy
        try:
            socket.create_connection(("127.0.0.1", envoy.port), timeout=1).close()
        except OSError as exc:
            self.reason = f"Envoy's listener: {exc.strerror or exc}"
            return False
        if self.socket_path is not None:
            answer = check_one(self.socket_path, timeout=1.0)
            if not answer.serving:
                self.reason = (f"the processor on unix:{self.socket_path}: {answer.status}"
                               f"{f' ({answer.detail})' if answer.detail else ''}")
                return False
            try:
                clusters = envoy.admin("/clusters")
            except OSError as exc:
                self.reason = f"Envoy's admin: {exc}"
                return False
            if not any(line.startswith(f"{EXT_PROC_CLUSTER}::")
                       and line.endswith("::health_flags::healthy")
                       for line in clusters.splitlines()):
                self.reason = "Envoy has not found the processor healthy yet"
                return False
        self.done = True
        return True

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline or stop.wait(0.02):
                return False
        return True


class _Lines:
    """The complete lines appended to a file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.position = 0
        self.partial = b""

    def read(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.position)
                chunk = file.read()
                self.position = file.tell()
        except FileNotFoundError:
            return []
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        return lines


class _Follower:
    """Hands Envoy's access log lines and the reloaded child's stream records to the live
    view, which prints what is ready."""

    def __init__(self, live: LiveView, access_log: Path, records: Path) -> None:
        self.live = live
        self.sources = ((_Lines(access_log), live.access), (_Lines(records), live.stream))

    def read(self) -> None:
        for source, take in self.sources:
            for line in source.read():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    take(entry)

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``."""
        while not stop.wait(0.05):
            self.read()
            self.live.flush()


def _tail(path: Path, stop: threading.Event) -> None:
    """Copy Envoy's log lines to stderr, prefixed, until ``stop``."""
    position = 0
    while not stop.is_set():
        try:
            with open(path, "rb") as log:
                log.seek(position)
                chunk = log.read()
                position = log.tell()
        except FileNotFoundError:
            chunk = b""
        for line in chunk.decode(errors="replace").splitlines():
            sys.stderr.write(f"[envoy] {line}\n")
        sys.stderr.flush()
        time.sleep(0.2)
