"""Resolve ``module:Class`` (as ``extctl serve`` receives it) to a Processor subclass."""

from __future__ import annotations

import importlib
import os
import sys

from ._processor import Processor
from .errors import ImportFromStringError


def import_processor(spec: str, app_dir: str | None = None) -> type[Processor]:
    """Import ``package.module:Class`` (``Class`` may be dotted) and check it is a Processor.

    ``app_dir`` is put first on ``sys.path`` (made absolute, so that a later change of the
    working directory cannot hide the module).
    """
    if app_dir is not None:
        directory = os.path.abspath(app_dir)
        if directory not in sys.path:
            sys.path.insert(0, directory)
            importlib.invalidate_caches()
    module_name, sep, attrs = spec.partition(":")
    if not sep or not module_name or not attrs:
        raise ImportFromStringError(f"{spec!r} is not module:Class (e.g. app.processor:Redact)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # A missing module *inside* the user's code is their bug: show it as it is.
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise
        raise ImportFromStringError(
            f"module {module_name!r} not found (is it on PYTHONPATH / in the current "
            "directory?)") from None
    target: object = module
    for attr in attrs.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise ImportFromStringError(
                f"module {module_name!r} has no attribute {attrs!r}") from None
    if not (isinstance(target, type) and issubclass(target, Processor)):
        raise ImportFromStringError(f"{spec} is {target!r}, not an extproc.Processor subclass")
    return target
