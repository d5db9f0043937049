"""Restart a child process when files it runs from change: ``extctl serve --reload`` and
``extctl dev --reload``.

The child is a fresh interpreter each time, so the new code is imported from scratch; a child
that fails to start (a syntax or import error) has printed its error, and the reloader waits for
the next change instead of giving up. Changes are collected with watchfiles (what uvicorn's
reloader uses) and debounced, so an editor's burst of writes is one restart.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from extproc.lifecycle import capture_signals, dies_with_us

from ..errors import UsageError

logger = logging.getLogger("extctl.reload")

DEBOUNCE_MS = 150
#: What stops the reloader and its child: a closed terminal (SIGHUP) too.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PYTHON_SOURCES = (".py",)


class Child:
    """``extctl serve ARGS`` in a child process, started, stopped and restarted.

    A restart must be quick (the next request should see the new code), and most of a fresh
    interpreter's start is importing gRPC and Envoy's API. So a standby interpreter with those
    already imported waits for the next start and is handed the arguments then; only the
    user's code is imported after the change. Output goes where ours goes.
    """

    def __init__(self, serve_args: Sequence[str], *, grace: float = 2.0) -> None:
        self.serve_args = list(serve_args)
        self.grace = grace
        self.process: subprocess.Popen[bytes] | None = None
        self._standby: subprocess.Popen[bytes] | None = None

    def _spawn_standby(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(dies_with_us([sys.executable, "-m", "extctl.harness.standby"]),
                                stdin=subprocess.PIPE, start_new_session=True)

    def start(self) -> None:
        standby = self._standby or self._spawn_standby()
        assert standby.stdin is not None
        try:
            standby.stdin.write(json.dumps(self.serve_args).encode() + b"\n")
            standby.stdin.close()
        except BrokenPipeError:  # it died waiting: start a cold one
            standby = self._spawn_standby()
            assert standby.stdin is not None
            standby.stdin.write(json.dumps(self.serve_args).encode() + b"\n")
            standby.stdin.close()
        self.process = standby
        self._standby = self._spawn_standby()  # warm for the next change

    def stop(self) -> None:
        process, self.process = self.process, None
        _terminate(process, self.grace)

    def close(self) -> None:
        self.stop()
        standby, self._standby = self._standby, None
        _terminate(standby, 0)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()


def _terminate(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    if process is None or process.poll() is not None:
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
    started anew whenever a Python file under ``directories`` changes."""
    child = Child(serve_args)
    stop = threading.Event()

    with capture_signals(lambda signum: stop.set(), STOP_SIGNALS) as captured:
        # Children are started from this (the main) thread only: they die with this process
        # (PR_SET_PDEATHSIG), which follows the thread that started them.
        changes: queue.Queue[set[str]] = queue.Queue()
        child.start()
        ready = threading.Event()
        watcher = threading.Thread(target=watch, args=(directories, changes.put, stop),
                                   daemon=True, kwargs={"ready": ready})
        watcher.start()
        ready.wait(10)
        try:
            while not stop.is_set():
                try:
                    paths = changes.get(timeout=0.2)
                except queue.Empty:
                    pass
                else:
                    logger.warning("reloading: %s changed", ", ".join(sorted(paths)[:3]))
                    child.restart()
                code = child.exit_code
                if code is not None and child.process is not None:
                    logger.error("the server exited with %d; waiting for the next change", code)
                    child.process = None  # reported once; the next change starts it again
            return 0
        finally:
            captured.release()  # a second Ctrl-C interrupts the cleanup
            child.close()
            watcher.join(2)
