"""The extkit dynamic module: an Envoy HTTP filter (C, on Envoy 1.40's dynamic-module ABI
v0.2.0) that embeds CPython and runs a Processor class's hooks inside the data-plane
Envoy (``extkit_dm.c``; its Python side is :mod:`extproc.dynamic_module.bridge`).

:func:`build` compiles it for this Python environment: the module links this interpreter's
shared libpython and starts the interpreter with this environment's ``bin/python`` as program
name, so it imports what is installed here (extproc, the processor's package). It must run in
an Envoy whose ABI it was built for, on a machine with this environment at the same path (an
image built for it). ``extctl gen module`` is the command; ``extctl.config.DynamicModule``
writes the configs that load it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from ..errors import BuildError

SOURCE = Path(__file__).resolve().parent / "extkit_dm.c"
FILE_NAME = "libextkit_dm.so"
"""What Envoy loads by the name ``extkit_dm`` (``lib<name>.so`` on its search path)."""
_CALLBACK_PREFIX = "envoy_dynamic_module_callback_"

STRING, INT = 0, 1  # how the module reads an attribute from Envoy
ATTRIBUTES: dict[str, tuple[int, int]] = {
    "request.path": (0, STRING), "request.url_path": (1, STRING),
    "request.host": (2, STRING), "request.scheme": (3, STRING),
    "request.method": (4, STRING), "request.referer": (6, STRING),
    "request.useragent": (7, STRING), "request.id": (9, STRING),
    "request.protocol": (10, STRING), "request.query": (11, STRING),
    "response.code": (15, INT), "source.address": (24, STRING), "source.port": (25, INT),
    "destination.address": (26, STRING), "destination.port": (27, INT),
    "connection.id": (28, INT), "upstream.address": (41, STRING), "upstream.port": (42, INT),
}
"""The Envoy attributes (``request_attributes``, ``response_attributes``) the module sends, by
their id in the ABI's attribute enum and how Envoy 1.40 gives them."""


def unsent_attributes(request: tuple[str, ...], response: tuple[str, ...]) -> str | None:
    """What a class asks for that the module does not send, as the end of an error line; None
    when it sends them all."""
    unknown = sorted(set(request + response) - set(ATTRIBUTES))
    if not unknown:
        return None
    return (f"asks for the attributes {', '.join(unknown)}: the dynamic module sends "
            f"{', '.join(ATTRIBUTES)}")


def build(output_dir: str | os.PathLike[str], *, envoy: str | None = None,
          compiler: str = "gcc") -> Path:
    """Compile the module into ``output_dir`` (written under a temporary name, then renamed)
    and return its path. ``envoy``: the Envoy binary it will run in, checked to export every
    callback the module calls. BuildError says what is missing."""
    gcc = shutil.which(compiler)
    if gcc is None:
        raise BuildError(f"{compiler} is missing: install a C compiler (Debian: apt-get "
                         "install gcc)")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise BuildError(f"{sys.executable} has no shared libpython (Py_ENABLE_SHARED=0): "
                         "the module embeds the interpreter and needs one (Debian's python3 "
                         "and the official Docker images have it)")
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        raise BuildError(f"no Python.h in {include}: install Python's headers (Debian: "
                         "apt-get install python3-dev)")
    libdir, library, soname = (sysconfig.get_config_var(name)
                               for name in ("LIBDIR", "LDLIBRARY", "INSTSONAME"))
    if not (libdir and library and soname and (Path(libdir) / library).exists()):
        raise BuildError(f"{sys.executable}'s shared libpython is not where its build says "
                         f"({libdir}/{library}): a relocated Python; build with the "
                         "interpreter installed where it was built")
    if not sys.executable:
        raise BuildError("this Python does not know its own executable: run it by its path")
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=out)
    except OSError as exc:
        raise BuildError(f"cannot write into {out}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        command = [gcc, "-shared", "-fPIC", "-O2", "-g", "-Wall", "-Wextra",
                   "-fvisibility=hidden", "-std=gnu11", "-isystem", include,
                   f"-DDEFAULT_PYTHON={_c_string(sys.executable)}",
                   f"-DLIBPYTHON={_c_string(soname)}", str(SOURCE), "-o", temporary,
                   str(Path(libdir) / library), "-Xlinker", "-rpath", "-Xlinker", libdir,
                   "-lpthread", "-ldl"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise BuildError(f"{compiler} took more than 300 s") from None
        if done.returncode != 0:
            raise BuildError(f"{compiler} could not build the module: "
                             f"{_first_error(done.stderr)}")
        if envoy is not None:
            _check_exports(Path(temporary), envoy)
        os.chmod(temporary, 0o755)
        target = out / FILE_NAME
        os.replace(temporary, target)
        return target
    finally:
        Path(temporary).unlink(missing_ok=True)


def _c_string(text: str) -> str:
    """``text`` as a C string literal (a path may hold quotes or backslashes)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _first_error(stderr: str) -> str:
    """The line that says what went wrong: the compiler's or the linker's own, not the
    driver's summary (``collect2: error: ld returned 1 exit status``)."""
    lines = stderr.splitlines()
    for line in lines:
        if ": error:" in line and not line.startswith("collect2"):
            return line.strip()
    for line in lines:
        if "ld:" in line or "undefined reference" in line:
            return line.strip()
    return stderr.strip()[:300] or "no message"


def _check_exports(module: Path, envoy: str) -> None:
    """BuildError unless ``envoy`` exports every Envoy callback ``module`` calls."""
    nm = shutil.which("nm")
    if nm is None:
        raise BuildError("nm is missing (binutils): it checks the module against Envoy")
    wanted = _symbols(nm, module, "--undefined-only")
    there = _symbols(nm, Path(envoy), "--defined-only")
    missing = sorted(wanted - there)
    if missing:
        raise BuildError(f"{envoy} does not export what the module calls "
                         f"({', '.join(missing[:5])}): it is another Envoy release; build "
                         "against the Envoy the module will run in")


def _symbols(nm: str, binary: Path, which: str) -> set[str]:
    done = subprocess.run([nm, "-D", which, str(binary)], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise BuildError(f"nm could not read {binary}: {done.stderr.strip()[:200]}")
    return {parts[-1] for line in done.stdout.splitlines()
            if (parts := line.split()) and parts[-1].startswith(_CALLBACK_PREFIX)}
