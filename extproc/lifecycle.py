"""How a serving process meets the operator's signals and its parent's death (public: the
CLI's own long-running commands use the same signals and helpers).

Signals (the table of docs/how-to/serve.md):

=========  ====================================================================
SIGTERM    drain: NOT_SERVING, no new streams, in-flight ones get the grace period;
           repeated (a runtime signalling the whole group, systemd, ``timeout``), the
           same drain
SIGHUP     the same as SIGTERM (a closed terminal, a supervisor's reload): drain, exit 0
SIGINT     drain; a second SIGINT (Ctrl-C twice) cuts in-flight streams: exit 1
SIGQUIT    cut in-flight streams at once: exit 1
=========  ====================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

#: Signals that drain; repeated, they drain still.
DRAIN = (signal.SIGTERM, signal.SIGHUP)
#: Drains the first time; forces the second.
INTERRUPT = signal.SIGINT
#: Forces at once.
FORCE = signal.SIGQUIT
HANDLED = (*DRAIN, INTERRUPT, FORCE)


class Stop:
    """Counts what the operator sent: ``drain`` once anything stops the server, ``force``
    once a signal asks to cut in-flight streams."""

    __slots__ = ("drain", "force", "interrupts")

    def __init__(self) -> None:
        self.drain = False
        self.force = False
        self.interrupts = 0

    def receive(self, signum: int) -> bool:
        """Take ``signum``; True when it changed what must happen (drain or force)."""
        before = (self.drain, self.force)
        if signum == FORCE:
            self.force = True
        elif signum == INTERRUPT:
            self.interrupts += 1
            if self.interrupts > 1:
                self.force = True
        self.drain = True
        return (self.drain, self.force) != before


class Captured:
    """Signals sent to a handler until :meth:`release` (what ``capture_signals`` yields)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop
        self._installed: dict[int, Any] = {}  # signal -> the handler that was there

    def release(self) -> None:
        """Put back the handlers that were there (once; before a cleanup that a second
        Ctrl-C may interrupt)."""
        installed, self._installed = self._installed, {}
        for sig, before in installed.items():
            if self._loop is not None:
                self._loop.remove_signal_handler(sig)
            if before is not None:
                signal.signal(sig, before)


@contextlib.contextmanager
def capture_signals(handler: Callable[[int], None], signals: Sequence[int] = HANDLED, *,
                    loop: asyncio.AbstractEventLoop | None = None) -> Iterator[Captured]:
    """Send ``signals`` to ``handler(signum)`` for the block (or until the :class:`Captured`
    it gives is released), then put back what was there.

    With ``loop``, through the loop (``add_signal_handler``: the handler runs as a callback
    of the loop, never inside other code), and the signals are unblocked once the handlers
    are in place (a supervisor forks its workers with them blocked, so that none arrives
    before). Without, with ``signal.signal`` (main thread only). Off the main thread it
    raises what asyncio or ``signal`` raise, having installed nothing."""
    captured = Captured(loop)
    try:
        for sig in signals:
            before = signal.getsignal(sig)
            if loop is not None:
                loop.add_signal_handler(sig, handler, sig)
            else:
                signal.signal(sig, lambda signum, frame: handler(signum))
            captured._installed[sig] = before
        if loop is not None:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        yield captured
    finally:
        captured.release()


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """In a child of ``parent``: receive ``sig`` when the parent dies (Linux's
    PR_SET_PDEATHSIG), and exit at once when it died before this ran. Call it first thing
    in the child (before exec for a program)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        os._exit(1)


def dies_with_us(command: Sequence[str], sig: int = signal.SIGTERM,
                 any_thread: bool = False) -> list[str]:
    """``command`` made to receive ``sig`` when the thread starting it ends (Linux's
    PR_SET_PDEATHSIG, kept across exec), and not to start at all if this process is gone by
    then: through a few lines of Python that set it, check the parent and exec the command.

    No ``preexec_fn``: Python code run between fork and exec in a threaded process (gRPC's
    at-fork handlers among it) can wedge or abort the child before the program starts. The
    kernel sends the signal when the *thread* that forked ends: off the main thread (which
    alone lives as long as the process) the command is returned as is, unless ``any_thread``
    (a thread whose end must stop the program too). Off Linux, as is."""
    on_main = threading.current_thread() is threading.main_thread()
    if _prctl is None or not (on_main or any_thread):
        return list(command)
    return [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, str(os.getpid()), str(int(sig)),
            *command]


# argv: parent pid, signal, the command. prctl(PR_SET_PDEATHSIG) survives the exec.
_TRAMPOLINE = """\
import ctypes, os, sys
ctypes.CDLL(None, use_errno=True).prctl(1, int(sys.argv[2]))
if os.getppid() != int(sys.argv[1]):
    os._exit(1)
os.execvp(sys.argv[3], sys.argv[3:])
"""

_PR_SET_PDEATHSIG = 1
# Looked up here, in the parent: a child forked from a threaded parent only calls it.
_prctl: Any = None
if sys.platform == "linux":
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl
