"""The processor inside the data-plane Envoy, as a dynamic module HTTP filter.

A :class:`DynamicModule` in a Deployment runs the processor's class in the Envoy that proxies
the traffic (the extkit dynamic module, which embeds CPython: :mod:`extproc.dynamic_module`,
built by ``extctl gen module``)
instead of in an ext_proc server: the standalone config gets a ``dynamic_modules`` filter
where the ext_proc filter would be (Envoy Gateway's order puts it after the Wasm filters), and
no ext_proc cluster; Envoy Gateway gets an EnvoyExtensionPolicy ``dynamicModule`` entry and
the EnvoyProxy ``dynamicModules`` allowlist entry it must match.

What the module runs today is the class's header hooks: a class with body or trailer hooks is
refused here, before any Envoy sees it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from extproc import FilterSpec

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
    """Directories put first on the embedded interpreter's ``sys.path`` (where the
    processor's module is, when the module's Python environment does not have it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "python_path", tuple(self.python_path))
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

    def config(self, spec: FilterSpec) -> dict[str, Any]:
        """The filter's configuration (JSON): the class by import path, and ``python_path``."""
        check_headers_only(spec)
        if not spec.importable:
            raise ConfigError(f"{spec.name}: the dynamic module imports the class by name in "
                              "Envoy; define it in a module (not __main__ or a function)")
        return {"processor": spec.import_path, "path": list(self.python_path)}

    def config_text(self, spec: FilterSpec) -> str:
        return json.dumps(self.config(spec), separators=(",", ":"))


def check_headers_only(spec: FilterSpec) -> None:
    """ConfigError unless the class's hooks are header hooks (what the module runs)."""
    others = sorted(hook for hook in spec.hooks
                    if hook not in ("on_request_headers", "on_response_headers"))
    if others:
        raise ConfigError(f"{spec.name} defines {', '.join(others)}: the dynamic module runs "
                          "header hooks only; serve it as an ext_proc processor instead")
