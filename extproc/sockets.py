"""Unix socket files: a stale one is removed, one in use is refused; a new one is bound in a
private directory and moved into place with its final mode, and removed at exit only while it
is still the one this server made (public: ``extctl serve --reload`` places its children's
sockets with the same rules)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import tempfile

from .addresses import MAX_UDS_PATH
from .errors import ServeError


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


class PrivateBind:
    """Where a server binds its Unix socket: in a directory only this user can enter, next to
    the final path (the same file system), moved into place by :meth:`publish` once its mode
    is set. Bound in place, it would exist with the umask's mode until a chmod, open to anyone
    the umask lets in (and the umask is the whole process's: the hooks' files too); and gRPC
    and Envoy remove whatever is at the path they bind, when binding and when stopping, which
    would take another server's socket. (``ss -xl`` names the private path it was bound at.)"""

    def __init__(self, final: str) -> None:
        self.final = final
        directory = tempfile.mkdtemp(prefix=".x", dir=os.path.dirname(final))  # mode 0700
        self.directory: str | None = directory
        self.path = os.path.join(directory, "s")
        if len(os.fsencode(self.path)) > MAX_UDS_PATH:
            self.close()
            raise ServeError(f"the socket is bound in a private directory next to {final} "
                             f"first ({self.path}), which is longer than {MAX_UDS_PATH} "
                             "bytes; choose a shorter directory")

    def publish(self, mode: int) -> tuple[int, int] | None:
        """Give the bound socket ``mode`` and move it to the final path; what identifies it
        there (see :func:`remove_own`)."""
        os.chmod(self.path, mode)
        claim_socket(self.final)  # a server that started meanwhile keeps its socket
        os.rename(self.path, self.final)
        self.close()
        return identity(self.final)

    def close(self) -> None:
        directory, self.directory = self.directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


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
