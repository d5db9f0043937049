"""The processor inside the data-plane Envoy, as a dynamic module HTTP filter.

A :class:`DynamicModule` in a Deployment runs the processor's class in the Envoy that proxies
the traffic (the extkit dynamic module, which embeds CPython: :mod:`extproc.dynamic_module`,
built by ``extctl gen module``)
instead of in an ext_proc server: the standalone config gets a ``dynamic_modules`` filter in
Envoy Gateway's order (after the Wasm filters, where ext_proc comes before them), and no
ext_proc cluster; Envoy Gateway gets an EnvoyExtensionPolicy ``dynamicModule`` entry and
the EnvoyProxy ``dynamicModules`` allowlist entry it must match.

What the module runs today is the class's hooks, for headers, bodies (every body mode a class
can ask for) and trailers: a class asking what the module would ignore (attributes, metadata,
mode overrides, extend_timeout ...), is refused here, before any Envoy sees it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from extproc import FilterSpec
from extproc.dynamic_module import unsent_attributes

from .errors import ConfigError

_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")  # Envoy Gateway's, for a module
_FILE = re.compile(r"^lib([A-Za-z0-9_.-]+)\.so$")
FILTER_NAME = "extkit"
"""The filter the module implements (``filter_name``; the module has one)."""


@dataclass(frozen=True)
class DynamicModule:
    """Where the extkit dynamic module is and how the processor's class is found in it."""

    path: str = "/usr/local/lib/envoy/libextkit_dm.so"
    """The module's absolute path where Envoy runs (in the proxy's image for Envoy Gateway,
    its ``local`` source). The standalone config names it by its file name: Envoy finds
    ``lib<name>.so`` in ``ENVOY_DYNAMIC_MODULES_SEARCH_PATH``, the path's directory."""
    name: str = "extkit-dm"
    """The module's name in the EnvoyProxy allowlist, which the policy refers to."""
    python_path: Sequence[str] = ()
    """Absolute directories put first on the embedded interpreter's ``sys.path`` (where the
    processor's module is, when the module's Python environment does not have it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "python_path", tuple(self.python_path))
        relative = [p for p in self.python_path if not os.path.isabs(p)]
        if relative:
            raise ConfigError(f"python path {relative[0]!r}: give absolute directories (as "
                              "Envoy's interpreter sees them; a relative one would be read "
                              "against Envoy's working directory)")
        if not os.path.isabs(self.path) or not _FILE.match(os.path.basename(self.path)):
            raise ConfigError(f"dynamic module {self.path!r}: give the absolute path of a "
                              "lib<name>.so file (Envoy loads modules by that name)")
        if not _NAME.match(self.name) or len(self.name) > 253:
            raise ConfigError(f"dynamic module name {self.name!r}: lower-case letters, digits, "
                              "'.' and '-' (Envoy Gateway's rule)")

    @property
    def module_name(self) -> str:
        """The name Envoy's standalone config loads it by (``lib<name>.so``)."""
        match = _FILE.match(os.path.basename(self.path))
        assert match is not None
        return match.group(1)

    @property
    def search_path(self) -> str:
        """What ``ENVOY_DYNAMIC_MODULES_SEARCH_PATH`` must be for the standalone config."""
        return os.path.dirname(self.path)

    def config(self, spec: FilterSpec, fail_open: bool = False,
               message_timeout: float | None = None) -> dict[str, Any]:
        """The filter's configuration (JSON): the class by import path, ``python_path``, and
        what Envoy's ext_proc filter would take from the policy: ``fail_open`` (no answer
        within the message timeout: continue, with no more phases, instead of 504) and the
        message timeout (the policy's, else the class's)."""
        check_runnable(spec)
        if not spec.importable:
            raise ConfigError(f"{spec.name}: the dynamic module imports the class by name in "
                              "Envoy; define it in a module (not __main__ or a function)")
        timeout = message_timeout if message_timeout is not None else spec.timeout
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout)
                and 0 < timeout <= MAX_TIMEOUT):
            raise ConfigError(f"message timeout {timeout!r}: give seconds in (0, "
                              f"{MAX_TIMEOUT:g}] (Envoy's ext_proc limit)")
        return {"processor": spec.import_path, "path": list(self.python_path),
                "fail_open": bool(fail_open), "message_timeout": float(timeout)}


MAX_TIMEOUT = 3600.0
"""The longest message timeout (seconds), as Envoy's ext_proc filter allows."""

# What the module does not run (yet), and what a class asks that it would then ignore.
_UNSUPPORTED = (
    ("forwarding_namespaces", "metadata forwarding"),
    ("typed_forwarding_namespaces", "metadata forwarding"),
)


def check_runnable(spec: FilterSpec) -> None:
    """ConfigError unless the class asks only what the module runs: its hooks, with none of
    the per-request extras of the ext_proc protocol it would otherwise silently ignore (a
    class cannot ask for GRPC bodies, which the module does not run either)."""
    unsent = unsent_attributes(spec.request_attributes, spec.response_attributes)
    if unsent:
        raise ConfigError(f"{spec.name} {unsent}; serve it as an ext_proc processor for the "
                          "others")
    asked = [f"{field} ({what})" for field, what in _UNSUPPORTED if getattr(spec, field)]
    if asked:
        raise ConfigError(f"{spec.name} sets {', '.join(asked)}: the dynamic module does not "
                          "run that yet; serve it as an ext_proc processor instead")
