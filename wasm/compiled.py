"""Compiled modules, reused: compiling a 3.6 MB module natively takes seconds, loading its
compiled form a few milliseconds.

- In this process: one wasmtime Engine per configuration, and the compiled Module of each
  (sha256, configuration) kept (the 32 most recent), so every ``ProxyWasm`` of a module after
  the first instantiates it at once.
- On disk: wasmtime's serialized form, in ``$XDG_CACHE_HOME/envoy-extkit/wasm/`` (or
  ``~/.cache/...``); ``EXTCTL_WASM_CACHE=off`` turns it off, ``EXTCTL_WASM_CACHE=/a/dir`` puts it
  there. A file is named by the digest of its key (the module's sha256, wasmtime's version, the
  machine and the engine configuration), written atomically (a temporary file renamed), and
  holds a header before wasmtime's bytes: a magic, the key digest, the sha256 and length of
  the bytes. Deserializing bytes wasmtime did not write is unsafe, so a file is deserialized
  only when its header matches, its bytes hash to the header's sha256, and it belongs to this
  user (or root) and is writable by no one else; anything else (corrupt, truncated, foreign,
  from another wasmtime) is compiled afresh and replaced. A cache directory that cannot be
  written is read, never required. Past 1 GiB the least recently used files are removed.

``STATS`` counts where each module came from (``compiled``, ``disk``, ``memory``); the
``wasm.compiled`` logger says the same, with the files.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import importlib.metadata
import logging
import os
import platform
import struct
import tempfile
import threading
import time
from pathlib import Path

import wasmtime
from wasmtime import _ffi as ffi

__all__ = ["CACHE_ENV", "STATS", "cache_dir", "clear_memory", "load"]

CACHE_ENV = "EXTCTL_WASM_CACHE"
STATS: collections.Counter[str] = collections.Counter()
"""How many modules were ``compiled``, read from ``disk`` or reused from ``memory``."""

_MAGIC = b"envoy-extkit cwasm 1\n"
_HEADER = struct.Struct(f"<{len(_MAGIC)}s32s32sQ")  # magic, key digest, bytes' sha256, length
_IN_MEMORY = 32
_DISK_LIMIT = 1 << 30
_STALE_TEMPORARY = 3600.0  # seconds: a temporary file left by a process that died

_log = logging.getLogger("wasm.compiled")
_lock = threading.Lock()
_engines: dict[bool, wasmtime.Engine] = {}
_modules: collections.OrderedDict[tuple[str, bool], wasmtime.Module] = (
    collections.OrderedDict())


def _configuration(fuel: bool) -> str:
    # Everything the compiled code depends on: what wasmtime checks itself, and more.
    return (f"wasmtime {importlib.metadata.version('wasmtime')}; {platform.machine()}; "
            f"consume_fuel={int(fuel)}; memory_may_move=0")


def engine(fuel: bool) -> wasmtime.Engine:
    """The engine for modules run with (``fuel``) or without a fuel budget, one per process:
    a compiled module belongs to the engine that compiled it."""
    with _lock:
        found = _engines.get(fuel)
        if found is None:
            config = wasmtime.Config()
            config.consume_fuel = fuel
            config.memory_may_move = False  # lets wasm.memory keep the base address
            found = _engines[fuel] = wasmtime.Engine(config)
        return found


def load(data: bytes, fuel: bool) -> tuple[wasmtime.Engine, wasmtime.Module, str]:
    """The compiled ``data`` (a binary module), its engine, and where it came from
    (``memory``, ``disk`` or ``compiled``). WasmtimeError when wasmtime rejects it."""
    sha256 = hashlib.sha256(data).hexdigest()
    key = (sha256, fuel)
    runtime = engine(fuel)
    with _lock:
        module = _modules.get(key)
        if module is not None:
            _modules.move_to_end(key)
    origin = "memory"
    if module is None:
        directory = cache_dir()
        key_digest = hashlib.sha256(f"{sha256}; {_configuration(fuel)}".encode()).digest()
        path = directory / f"{key_digest.hex()}.cwasm" if directory is not None else None
        module = _read(runtime, path, key_digest) if path is not None else None
        origin = "disk"
        if module is None:
            started = time.perf_counter()
            module = wasmtime.Module(runtime, data)
            origin = "compiled"
            _log.debug("compiled %s (%d bytes) in %.2f s", sha256, len(data),
                       time.perf_counter() - started)
            if path is not None:
                _write(path, key_digest, module)
        with _lock:
            _modules[key] = module
            while len(_modules) > _IN_MEMORY:
                _modules.popitem(last=False)
    STATS[origin] += 1
    return runtime, module, origin


def clear_memory() -> None:
    """Forget the modules compiled in this process (the next load reads the disk cache)."""
    with _lock:
        _modules.clear()


def cache_dir() -> Path | None:
    """Where compiled modules are kept on disk, or None (``EXTCTL_WASM_CACHE=off``)."""
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "envoy-extkit" / "wasm"


def _trusted(stat: os.stat_result) -> bool:
    """Whether a file is this user's (or root's) and no one else can write it (its header
    names its key: a file of ours renamed is refused too)."""
    return stat.st_uid in (os.geteuid(), 0) and not stat.st_mode & 0o022


def _read(runtime: wasmtime.Engine, path: Path, key_digest: bytes) -> wasmtime.Module | None:
    try:
        with open(path, "rb") as file:
            stat = os.fstat(file.fileno())
            if not _trusted(stat):
                _log.debug("not reading %s: another user could have written it", path)
                return None
            content = bytearray(stat.st_size)
            size = file.readinto(content)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _log.debug("cannot read %s: %s", path, exc)
        return None
    problem = _check(content, size, key_digest)
    if problem:
        _log.debug("ignoring %s: %s", path, problem)
        return None
    started = time.perf_counter()
    # wasmtime copies the bytes it is given: hand it the file's buffer past the header
    # (Module.deserialize would copy them twice more).
    payload = (ctypes.c_uint8 * (size - _HEADER.size)).from_buffer(content, _HEADER.size)
    pointer = ctypes.POINTER(ffi.wasmtime_module_t)()
    error = ffi.wasmtime_module_deserialize(runtime.ptr(), payload, len(payload),
                                            ctypes.byref(pointer))
    del payload
    if error:
        _log.debug("wasmtime refuses %s: %s", path, wasmtime.WasmtimeError._from_ptr(error))
        return None
    _log.debug("loaded %s in %.3f s", path, time.perf_counter() - started)
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: kept when the cache is pruned
    return wasmtime.Module._from_ptr(pointer)


def _check(content: bytearray, size: int, key_digest: bytes) -> str:
    """Why ``content`` is not a cache file of this key, or an empty string."""
    if size != len(content) or size < _HEADER.size:
        return "truncated"
    magic, key, digest, length = _HEADER.unpack_from(content)
    if magic != _MAGIC:
        return "not a file of this cache"
    if key != key_digest:
        return "the file of another module or configuration"
    if length != size - _HEADER.size:
        return "truncated or extended"
    if hashlib.sha256(memoryview(content)[_HEADER.size:]).digest() != digest:
        return "corrupt (its bytes do not match their sha256)"
    return ""


def _write(path: Path, key_digest: bytes, module: wasmtime.Module) -> None:
    try:
        payload = module.serialize()
        header = _HEADER.pack(_MAGIC, key_digest, hashlib.sha256(payload).digest(),
                              len(payload))
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(header)
                file.write(payload)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except (OSError, wasmtime.WasmtimeError) as exc:  # a read-only or full cache
        _log.debug("not caching %s: %s", path, exc)
        return
    _log.debug("cached %s", path)
    _prune(path.parent)


def _prune(directory: Path) -> None:
    """Remove the least recently used files past the size limit, and stale temporary files."""
    try:
        entries = []
        now = time.time()
        for entry in os.scandir(directory):
            stat = entry.stat(follow_symlinks=False)
            if entry.name.startswith(".tmp-"):
                if now - stat.st_mtime > _STALE_TEMPORARY:
                    os.unlink(entry.path)
            elif entry.name.endswith(".cwasm"):
                entries.append((stat.st_mtime, stat.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        for _, size, name in sorted(entries):
            if total <= _DISK_LIMIT:
                break
            os.unlink(name)
            total -= size
    except OSError as exc:
        _log.debug("cannot prune %s: %s", directory, exc)
