"""Atomic file writes: a temporary name beside the target, then a rename; and the sweep of
temporary files a killed run left behind."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

TMP_MARK = ".extctl-"
"""In every temporary name this package writes: ``.NAME.extctl-RANDOM.tmp``."""
STALE_AFTER = 3600.0


def _umask() -> int:
    try:  # Linux reports it without changing it (os.umask would, process-wide, for a moment)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_output(path: Path, data: bytes) -> None:
    """:func:`write_atomic`, an OSError (no such directory, permissions, disk full) turned
    into a one-line RegistryError."""
    from .errors import RegistryError

    try:
        write_atomic(path, data)
    except OSError as exc:
        raise RegistryError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Never leaves a half-written ``path``: readers see the old file or the new one.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask), not
    the private mode of the temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sweep(directory: Path, *, recursive: bool = False, older_than: float = STALE_AFTER) -> int:
    """Remove this package's temporary files older than ``older_than`` seconds (a run killed
    mid-write leaves them); younger ones may belong to a run in progress. Returns the count."""
    pattern = f".*{TMP_MARK}*.tmp"
    try:
        found = directory.rglob(pattern) if recursive else directory.glob(pattern)
        candidates = list(found)
    except OSError:
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for path in candidates:
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_mtime > cutoff:
                continue
            path.unlink()
            removed += 1
        except OSError:
            continue
    return removed
