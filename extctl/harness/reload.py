"""Restart a child process when files it runs from change: ``extctl serve --reload`` and
``extctl dev --reload``.

The child is a fresh interpreter each time, so the new code is imported from scratch; a child
that fails to start (a syntax or import error) has printed its error, and the reloader waits for
the next change instead of giving up. Changes are collected with watchfiles (what uvicorn's
reloader uses) and debounced, so an editor's burst of writes is one restart.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from extproc import ServeError
from extproc.addresses import dial_target, split_address
from extproc.lifecycle import capture_signals, dies_with_us
from extproc.sockets import claim_socket, identity, remove_own

from ..errors import UsageError
from .ports import free_port

logger = logging.getLogger("extctl.reload")

DEBOUNCE_MS = 150
#: What stops the reloader and its child: a closed terminal (SIGHUP) too.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PYTHON_SOURCES = (".py",)


class Child:
    """``extctl serve ARGS`` in a child process, started, replaced and stopped.

    A restart must be quick (the next request should see the new code), and most of a fresh
    interpreter's start is importing gRPC and Envoy's API. So a standby interpreter with those
    already imported waits for the next start and is handed the arguments then; only the
    user's code is imported after the change. Output goes where ours goes.

    With ``socket`` (the Unix socket path Envoy dials) a restart has no moment without a
    server there: each child binds a path of its own beside it, and only once it answers
    SERVING (gRPC health) is its socket renamed over ``socket`` (a rename moves the file, the
    listening socket stays bound to it), so new connections reach it; the previous child is
    stopped only then and drains its streams. A child that does not get there (an import
    error, a failing ``on_startup``) is stopped, and the previous one serves on. Without
    ``socket`` (an address, TLS, workers) the previous child stops before the next starts.

    Envoy keeps its HTTP/2 connection to the previous child, though, and gRPC's stop cancels a
    stream that comes on it after the stop began (before Envoy has read the GOAWAY): so the
    previous child is stopped ``handover`` seconds after the new one is in place, the longest
    Envoy keeps a connection (its cluster's ``max_connection_duration``, which ``extctl dev``
    sets), by when Envoy sends it no new stream.

    Two children cannot bind one admin address at once: with ``socket``, ``admin`` (the
    address the user is given) is bound here, and its connections are passed on to the admin
    endpoint of the child that serves, on a loopback port of its own.
    """

    def __init__(self, serve_args: Sequence[str], *, grace: float = 2.0,
                 socket: str | None = None, admin: str | None = None,
                 handover: float = 0.0, start_timeout: float = 60.0,
                 retire_grace: float | None = None) -> None:
        self.serve_args = list(serve_args)
        self.grace = grace
        #: how long a replaced child may drain its streams (a slow upload) before it is killed
        self.retire_grace = grace if retire_grace is None else retire_grace
        self.socket = socket
        self.handover = handover
        self.start_timeout = start_timeout
        self._closing = threading.Event()  # the handovers under way end now
        self._relay = _Relay(admin) if admin is not None and socket is not None else None
        self.process: subprocess.Popen[bytes] | None = None
        self._standby: subprocess.Popen[bytes] | None = None
        self._started = 0
        self._placed: tuple[int, int] | None = None  # the socket file we renamed to ``socket``
        self._draining: list[threading.Thread] = []

    def _spawn_standby(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(dies_with_us([sys.executable, "-m", "extctl.harness.standby"]),
                                stdin=subprocess.PIPE, start_new_session=True)

    def _launch(self, args: Sequence[str]) -> subprocess.Popen[bytes]:
        """A standby handed ``args`` (a cold one if it died waiting); another one waits then."""
        line = json.dumps(list(args)).encode() + b"\n"
        standby = self._standby or self._spawn_standby()
        assert standby.stdin is not None
        try:
            standby.stdin.write(line)
            standby.stdin.flush()
        except BrokenPipeError:  # it died waiting: start a cold one
            standby = self._spawn_standby()
            assert standby.stdin is not None
            standby.stdin.write(line)
            standby.stdin.flush()
        if self.socket is None:
            assert standby.stdin is not None
            standby.stdin.close()  # nothing more to tell it
        self._standby = self._spawn_standby()  # warm for the next change
        return standby

    def start(self, stop: threading.Event | None = None) -> bool:
        """Start a child with the code on disk now in place of the running one (if any);
        whether it serves (False: it exited or did not serve within ``start_timeout``, and the
        previous child, if any, still serves). Call from the main thread: children die with
        the thread that started them (PR_SET_PDEATHSIG)."""
        if self.socket is None:
            self.stop()
            self.process = self._launch(self.serve_args)
            return True
        self._started += 1
        # Beside the socket (a rename stays on its file system), as short as the name allows.
        own = os.path.join(os.path.dirname(self.socket), f".{os.getpid()}-{self._started}")
        admin_port = free_port() if self._relay is not None else None
        admin = ["--admin", f"127.0.0.1:{admin_port}"] if admin_port is not None else []
        process = self._launch([*self.serve_args, "--uds", own, *admin])
        if not self._wait_serving(process, own, stop):
            _terminate(process, 0)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(own)  # one that was killed leaves it
            return False
        if identity(self.socket) != self._placed:
            try:  # another server's live socket is refused, a stale one removed
                claim_socket(self.socket)
            except ServeError:
                _terminate(process, 0)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(own)
                raise
        os.rename(own, self.socket)  # from now on new connections reach the new child
        self._placed = identity(self.socket)
        logger.info("pid %d serves on unix:%s now", process.pid, self.socket)
        # Its server removes only the path it bound: the child removes this one as it
        # stops, if still its own (when we are gone too).
        assert process.stdin is not None and self._placed is not None
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write(json.dumps({"placed": self.socket,
                                            "identity": list(self._placed)}).encode() + b"\n")
            process.stdin.close()
        if self._relay is not None:
            self._relay.target = admin_port
        self._retire(self.process)
        self.process = process
        return True

    def _wait_serving(self, process: subprocess.Popen[bytes], path: str,
                      stop: threading.Event | None) -> bool:
        from ..diagnose.health import check_one

        deadline = time.monotonic() + self.start_timeout
        while process.poll() is None and not (stop is not None and stop.is_set()):
            if os.path.exists(path) and check_one(path, timeout=1.0).serving:
                return True
            if time.monotonic() > deadline:
                logger.error("the new server did not serve within %gs", self.start_timeout)
                return False
            time.sleep(0.02)  # the socket appears once the user's code is imported
        return False

    def _retire(self, process: subprocess.Popen[bytes] | None) -> None:
        """Stop ``process`` after the handover, in the background, while the new child
        serves; it drains then."""
        if process is None:
            return

        def retire() -> None:
            self._closing.wait(self.handover)
            _terminate(process, self.grace if self._closing.is_set() else self.retire_grace)

        self._draining = [t for t in self._draining if t.is_alive()]
        drain = threading.Thread(target=retire, daemon=True)
        drain.start()
        self._draining.append(drain)

    def stop(self) -> None:
        process, self.process = self.process, None
        self._closing.set()
        _terminate(process, self.grace)
        for drain in self._draining:
            drain.join()
        self._draining = []
        self._closing.clear()
        if self.socket is not None and self._placed is not None:
            # Its server bound another path: the file at ``socket`` is ours to remove (unless
            # something else has replaced it since).
            remove_own(self.socket, self._placed)
            self._placed = None

    def close(self) -> None:
        self.stop()
        standby, self._standby = self._standby, None
        _terminate(standby, 0)
        if self._relay is not None:
            self._relay.close()

    @property
    def admin_address(self) -> str | None:
        """Where the admin endpoint of the child that serves is reached: the relay's address
        (its port chosen if ``admin`` asked for any); None without one."""
        return self._relay.address if self._relay is not None else None

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()


class _Relay:
    """Connections to ``address`` passed on to 127.0.0.1:``target`` (whichever port that is
    when each comes), byte for byte."""

    def __init__(self, address: str) -> None:
        host, port = split_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family)
        self.address = dial_target(address, False, self._socket.getsockname()[1])
        self.target: int | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._socket.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._pass, args=(client,), daemon=True).start()

    def _pass(self, client: socket.socket) -> None:
        with client:
            if self.target is None:
                _refuse(client, "503 Service Unavailable", "no server serves yet\n")
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                _refuse(client, "502 Bad Gateway", "the serving child does not answer\n")
                return
            with server:
                server.settimeout(None)
                back = threading.Thread(target=_pump, args=(server, client), daemon=True)
                back.start()
                _pump(client, server)
                back.join()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._socket.close()


def _refuse(client: socket.socket, status: str, text: str) -> None:
    """An HTTP answer of our own, for a scrape or probe that reaches no child."""
    body = text.encode()
    with contextlib.suppress(OSError):
        client.sendall(f"HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: "
                       f"{len(body)}\r\nconnection: close\r\n\r\n".encode() + body)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


def seamless_socket(serve_args: Sequence[str]) -> tuple[list[str], str | None, str | None]:
    """For :class:`Child`: ``serve_args`` without ``--uds PATH`` and ``--admin ADDRESS``, PATH
    and ADDRESS (or None), when a child can be replaced without a gap: one socket (no
    workers), no TLS (the readiness check is plain gRPC health); else ``serve_args`` as they
    are and None, None."""
    args = list(serve_args)
    values = dict(itertools.pairwise(args))
    if "--uds" not in values or values.get("--workers", "1") != "1" or "--tls-cert" in args:
        return args, None, None
    for name in ("--uds", "--admin"):
        if name in args:
            at = args.index(name)
            del args[at:at + 2]
    return args, values["--uds"], values.get("--admin")


def _terminate(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    if process is None:
        return
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace + 1)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def watch(directories: Sequence[str | Path], on_change: Callable[[set[str]], None],
          stop: threading.Event, suffixes: Sequence[str] = PYTHON_SOURCES,
          files: Sequence[str | Path] = (), ready: threading.Event | None = None) -> None:
    """Call ``on_change(paths)`` for each debounced batch of changes to files ending in
    ``suffixes`` under ``directories`` (and to ``files``), until ``stop`` is set; ``ready`` is
    set once changes are being watched (a change before that would be missed)."""
    try:
        import watchfiles
    except ImportError:
        raise UsageError.naming("{reload} needs watchfiles: pip install 'envoy-extkit[envoy]'"
                                ) from None
    exact = {os.path.abspath(f) for f in files}
    roots = [os.path.abspath(d) for d in directories] + sorted({os.path.dirname(f)
                                                                 for f in exact})

    def wanted(change: object, path: str) -> bool:
        return path in exact or (path.endswith(tuple(suffixes)) and "__pycache__" not in path)

    # An empty batch after rust_timeout says the watcher runs: the first one sets ``ready``.
    for batch in watchfiles.watch(*roots, watch_filter=wanted, debounce=DEBOUNCE_MS, step=50,
                                  stop_event=stop, raise_interrupt=False, rust_timeout=100,
                                  yield_on_timeout=True):
        if ready is not None:
            ready.set()
        if batch:
            on_change({path for _, path in batch})


def serve_with_reload(serve_args: Sequence[str], directories: Sequence[str | Path]) -> int:
    """Run ``extctl serve SERVE_ARGS`` (without ``--reload``) until SIGINT, SIGTERM or SIGHUP,
    started anew whenever a Python file under ``directories`` changes (on a Unix socket: the
    new server in place before the old one stops, see :class:`Child`)."""
    args, socket_path, admin = seamless_socket(serve_args)
    child = Child(args, socket=socket_path, admin=admin)
    if admin is not None and socket_path is not None:
        logger.info("admin endpoint on http://%s (/metrics, /healthz, /readyz) for whichever "
                    "child serves", child.admin_address)
    stop = threading.Event()

    with capture_signals(lambda signum: stop.set(), STOP_SIGNALS) as captured:
        # Children are started from this (the main) thread only: they die with this process
        # (PR_SET_PDEATHSIG), which follows the thread that started them.
        changes: queue.Queue[set[str]] = queue.Queue()
        ready = threading.Event()
        watcher = threading.Thread(target=watch, args=(directories, changes.put, stop),
                                   daemon=True, kwargs={"ready": ready})
        watcher.start()
        ready.wait(10)
        try:
            if not child.start(stop) and not stop.is_set():
                logger.error("the server does not start (above); waiting for the next change")
            while not stop.is_set():
                try:
                    paths = changes.get(timeout=0.2)
                except queue.Empty:
                    pass
                else:
                    logger.warning("reloading: %s changed", ", ".join(sorted(paths)[:3]))
                    serving = child.process is not None
                    if not child.start(stop) and not stop.is_set():
                        logger.error("the new code does not start (above); %s",
                                     "the previous one serves on" if serving
                                     else "waiting for the next change")
                code = child.exit_code
                if code is not None and child.process is not None:
                    logger.error("the server exited with %d; waiting for the next change", code)
                    child.process = None  # reported once; the next change starts it again
            return 0
        finally:
            captured.release()  # a second Ctrl-C interrupts the cleanup
            child.close()
            watcher.join(2)
