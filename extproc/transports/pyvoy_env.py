"""Where the pyvoy transport finds pyvoy, kept apart from this environment (see ``pyvoy``)."""

from __future__ import annotations

import os
import sys
import sysconfig

from ..errors import ServeError

PYVOY_VERSION = "1.3.0"


def pyvoy_home() -> str:
    """Where pyvoy is installed: ``$EXTPROC_PYVOY_HOME``, else ``pyvoy`` in this environment."""
    return os.environ.get("EXTPROC_PYVOY_HOME") or os.path.join(sys.prefix, "pyvoy")


def install_command(home: str | None = None) -> str:
    """The command that installs pyvoy into ``home`` (``pyvoy_install``)."""
    return (f"{sys.executable} -m extproc.transports.pyvoy_install --target "
            f"{home or pyvoy_home()}")


def check_installed() -> tuple[str, str, str]:
    """(pyvoy's Envoy binary, pyvoy's dynamic module, libpython); ServeError when missing."""
    if sys.platform != "linux":
        raise ServeError.naming("the pyvoy transport runs on Linux; use {transport=grpcio} here",
                                grpcio="grpcio")
    if sys.version_info < (3, 11):
        raise ServeError("the pyvoy transport needs Python 3.11 or newer")
    home = pyvoy_home()
    envoy = os.path.join(home, "envoy", "_bin", "envoy")
    module = os.path.join(home, "pyvoy", "_pyvoy.abi3.so")
    if not (os.path.isfile(envoy) and os.path.isfile(module)):
        raise ServeError(f"the pyvoy transport needs pyvoy {PYVOY_VERSION} in {home}; install "
                         f"it with: {install_command(home)}")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise ServeError("the pyvoy transport needs a Python built with --enable-shared "
                         "(pyvoy loads libpython into Envoy)")
    libpython = os.path.join(str(sysconfig.get_config_var("LIBDIR")),
                             str(sysconfig.get_config_var("INSTSONAME")))
    return envoy, module, libpython
