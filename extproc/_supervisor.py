"""Workers: a supervisor process forks one server process per address, forwards the
operator's signals to them and restarts one that dies; the admin endpoint of them all is its
own process (``extproc._admin.SupervisorAdmin``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from ._admin import SupervisorAdmin
from ._config import ServerConfig
from ._processor import Processor
from ._serve import DRAINED, FORCED, _run_loop, serve_async
from .errors import ServeError
from .lifecycle import DRAIN, FORCE, HANDLED, INTERRUPT, Stop, capture_signals, die_with_parent
from .sockets import claim_socket
from .transports import View

logger = logging.getLogger("extproc.server")

# A worker process tells its supervisor it could not start with this exit status.
_WORKER_DID_NOT_START = 3


@contextlib.contextmanager
def _admin_running(admin: SupervisorAdmin) -> Iterator[None]:
    admin.start()
    try:
        yield
    finally:
        admin.stop()


# What a worker handles: group-wide signals reach it directly, the supervisor forwards the
# rest (SIGTERM to drain, SIGQUIT to force). Ctrl-C reaches the whole group, and the
# supervisor counts it: a worker that counted it too would take the supervisor's forwarded
# SIGTERM as a second signal.
_WORKER_SIGNALS = (*DRAIN, FORCE)


class _Reports:
    """Why a worker could not start, told to its supervisor: the supervisor's one error then
    says it (a worker that logged it too would say it twice). A pipe every worker inherits;
    one line each, written at once (under PIPE_BUF, so lines never interleave)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.received: dict[str, dict[str, str]] = {}

    def send(self, listen: str, error: ServeError) -> None:
        """In a worker: ``error`` is why the worker on ``listen`` did not start."""
        os.close(self.read_fd)
        report = {"listen": listen, "message": str(error)[:1500], "where": error.where[:2000]}
        line = json.dumps(report).encode()[:select.PIPE_BUF - 1] + b"\n"
        with contextlib.suppress(OSError):
            os.write(self.write_fd, line)

    def error(self, listen: str) -> ServeError:
        """In the supervisor: the error of the worker on ``listen``, which did not start."""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, 65536):
                for line in chunk.splitlines():
                    with contextlib.suppress(ValueError):
                        report = json.loads(line)
                        self.received[report["listen"]] = report
        report = self.received.get(listen)
        if report is None:
            return ServeError(f"the worker on {listen} could not start")
        message = report["message"]
        error = ServeError(message if listen in message else f"worker on {listen}: {message}")
        error.where = report["where"]
        return error

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _worker_main(processor: type[Processor], config: ServerConfig, listen: str,
                 slot: Any, supervisor: int, view: View | None, reports: _Reports) -> int:
    die_with_parent(supervisor)
    for sig in _WORKER_SIGNALS:  # not the supervisor's handler, copied by fork
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(INTERRUPT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (INTERRUPT,))
    try:
        return _run_loop(config, serve_async(processor, config, listen, _WORKER_SIGNALS,
                                             slot=slot, supervisor=supervisor, view=view))
    except ServeError as exc:
        reports.send(listen, exc)
        return _WORKER_DID_NOT_START
    except Exception:
        logger.exception("worker on %s crashed", listen)
        return 1


def supervise(processor: type[Processor], config: ServerConfig,
              view: View | None = None) -> int:
    """Fork one worker per address; forward signals; restart a worker that dies. ``view``
    is each worker's (told about the streams it answers)."""
    if config.uds is not None:
        for path in config.addresses():
            claim_socket(path)  # fail before forking, with the path in the message
    addresses = config.addresses()
    children: dict[int, tuple[int, float]] = {}  # pid -> (worker index, start time)
    stop = Stop()
    supervisor = os.getpid()
    admin = SupervisorAdmin(config, processor.__name__)
    reports = _Reports()

    def spawn(index: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across the fork: the child unblocks them once its handlers are in place,
        # and a signal here runs after the child is in ``children``.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    admin.in_worker()
                    code = _worker_main(processor, config, addresses[index],
                                        admin.slot(index), supervisor, view, reports)
                finally:
                    logging.shutdown()
                    os._exit(code)
            children[pid] = (index, time.monotonic())
            if stop.drain:  # asked to stop while it was being forked
                os.kill(pid, signal.SIGQUIT if stop.force else signal.SIGTERM)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def on_signal(signum: int) -> None:
        if not stop.receive(signum):
            return  # the same drain, asked again (e.g. the whole group got SIGTERM)
        forward = signal.SIGQUIT if stop.force else signal.SIGTERM
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, forward)

    exit_code = DRAINED
    did_not_start: ServeError | None = None
    with capture_signals(on_signal), _admin_running(admin), contextlib.closing(reports):
        for index in range(len(addresses)):
            if stop.drain:
                break
            spawn(index)
        logger.info("supervisor %d: %d workers on %s", supervisor, config.workers,
                    ", ".join(addresses))
        while children:
            pid, status = os.wait()
            if admin.reaped(pid) or pid not in children:
                continue
            index, started = children.pop(pid)
            admin.worker_gone(index)
            code = os.waitstatus_to_exitcode(status)
            if stop.drain:
                # a worker killed by a signal while draining cut its streams
                exit_code = max(exit_code, code if code >= 0 else FORCED)
                continue
            if code == _WORKER_DID_NOT_START:
                logger.info("worker on %s could not start; stopping the others",
                            addresses[index])
                on_signal(signal.SIGTERM)
                did_not_start = did_not_start or reports.error(addresses[index])
                continue
            logger.warning("worker on %s exited with %d; restarting", addresses[index], code)
            if time.monotonic() - started < 1.0:
                time.sleep(1.0)  # a worker that dies at once must not spin the supervisor
            if not stop.drain:
                spawn(index)
    if did_not_start is not None:
        raise did_not_start
    return FORCED if stop.force else exit_code


