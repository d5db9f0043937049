"""Unix socket files: a stale one is removed, one in use is refused."""

from __future__ import annotations

import os
import socket
import stat

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
    if not stat.S_ISSOCK(st.st_mode):
        raise ServeError(f"{path} exists and is not a socket; remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: its server is gone
        return
    except OSError as exc:
        raise ServeError(f"cannot check socket {path}: {exc}") from None
    finally:
        probe.close()
    raise ServeError(f"something is already listening on {path}; stop it or choose another path")
