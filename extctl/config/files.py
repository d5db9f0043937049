"""Writing generated files: atomically, and an unwritable path is one clear error."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputError


def write_file(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary name and a rename, so a reader sees the
    old file or the new one, never half of one."""
    from registry.transfer_io import write_atomic

    target = Path(path)
    try:
        write_atomic(target, text.encode())
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
