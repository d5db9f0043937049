"""Unix socket files: a stale one is removed, one in use is refused; a new one is created
with its final mode, and removed at exit only while it is still the one this server made."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator

from ._errors import ServeError


def claim_socket(path: str) -> None:
    """Remove a stale socket file at ``path``; refuse one that something listens on."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ServeError(f"directory {directory} does not exist; create it (the volume Envoy "
                         "shares) first")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ServeError(f"cannot check socket {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ServeError(f"{path} exists and is not a socket; remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        _remove_stale(path, st)
        return
    except PermissionError:
        raise ServeError(f"a socket {path} (owner uid {st.st_uid}) is there and this user "
                         "may not connect to it to see whether it is in use; remove it as "
                         "its owner or choose another path") from None
    except OSError as exc:
        raise ServeError(f"cannot check socket {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise ServeError(f"something is already listening on {path}; stop it or choose another path")


def _remove_stale(path: str, st: os.stat_result) -> None:
    try:
        os.unlink(path)  # stale: its server is gone
    except FileNotFoundError:
        pass
    except OSError as exc:
        # e.g. a sticky directory (/tmp) and a socket another user left behind
        raise ServeError(f"a stale socket {path} (owner uid {st.st_uid}) cannot be removed: "
                         f"{exc.strerror or exc}; remove it as its owner or choose another "
                         "path") from None


@contextlib.contextmanager
def created_with_mode(mode: int) -> Iterator[None]:
    """The umask that makes a socket bound inside the block get ``mode`` itself, so it
    never exists with a wider one (a chmod after bind leaves a window in which anyone the
    umask allowed can connect). The umask is per process: files other threads create
    meanwhile get a narrower mode, never a wider one."""
    previous = os.umask(0o777 & ~mode)
    try:
        yield
    finally:
        os.umask(previous)


def identity(path: str) -> tuple[int, int] | None:
    """What tells this socket file from one a later server binds at the same path."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def remove_own(path: str, own: tuple[int, int] | None) -> None:
    """Remove the socket file at ``path`` if it is still ``own`` (a server that started
    after this one, e.g. while this one drained as an orphan, keeps its socket)."""
    if own is not None and identity(path) == own:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
