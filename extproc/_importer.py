"""Resolve ``module:Class`` (as ``extctl serve`` receives it) to a Processor subclass."""

from __future__ import annotations

import importlib
import os
import sys

from ._frames import describe, user_frames
from ._processor import Processor
from .errors import ExtkitError, ImportFromStringError


def import_processor(spec: str, app_dir: str | None = None) -> type[Processor]:
    """Import ``package.module:Class`` (``Class`` may be dotted) and check it is a Processor.

    ``app_dir`` is put first on ``sys.path`` (made absolute, so that a later change of the
    working directory cannot hide the module). A module that raises while it is imported is
    an :class:`ImportFromStringError` whose ``where`` holds the module's own frames.
    """
    if app_dir is not None:
        directory = os.path.abspath(app_dir)
        if directory not in sys.path:
            sys.path.insert(0, directory)
            importlib.invalidate_caches()
    module_name, sep, attrs = spec.partition(":")
    if not sep or not module_name or not attrs:
        raise ImportFromStringError(f"{spec!r} is not module:Class (e.g. app.processor:Redact)")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        raise _file_given(module_name, attrs, app_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or module_name.startswith(f"{exc.name}."):
            raise ImportFromStringError(
                f"module {module_name!r} not found (is it on PYTHONPATH / in the current "
                "directory?)") from None
        # A module missing *inside* the user's code is their bug, not "not found".
        raise _raised(module_name, exc) from exc
    except ExtkitError as exc:  # e.g. a ProcessorDefinitionError at a class of theirs
        exc.where = exc.where or user_frames(exc)
        raise
    except Exception as exc:
        raise _raised(module_name, exc) from exc
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


def _raised(module_name: str, exc: BaseException) -> ImportFromStringError:
    error = ImportFromStringError(f"importing module {module_name!r} failed: {describe(exc)}")
    error.where = user_frames(exc)
    return error


def _file_given(path: str, attrs: str, app_dir: str | None) -> ImportFromStringError:
    """A file path where a module name belongs: the module (and directory) that names it."""
    # As the shell completed it (from here), else under app_dir.
    candidates = [os.path.abspath(path), os.path.abspath(os.path.join(app_dir or ".", path))]
    absolute = next((c for c in candidates if os.path.isfile(c)), candidates[0])
    directory, file = os.path.split(absolute)
    parts = [file.removesuffix(".py")]
    # Up through the packages the file is in: the module's name starts at the first
    # directory that is not one.
    while os.path.isfile(os.path.join(directory, "__init__.py")):
        directory, package = os.path.split(directory)
        parts.insert(0, package)
    module = ".".join(parts)
    if not all(part.isidentifier() for part in parts):
        return ImportFromStringError(f"{path!r} is a file path; MODULE:CLASS takes a module's "
                                     "import name (e.g. app.processor:Redact)")
    if os.path.abspath(app_dir or ".") == directory:
        return ImportFromStringError.naming(
            "{path!r} is a file path; give its module: {module}:{attrs}", path=path,
            module=module, attrs=attrs)
    shown = os.path.relpath(directory)
    return ImportFromStringError.naming(
        "{path!r} is a file path; give its module and directory: {module}:{attrs} with "
        "{app_dir=directory}", path=path, module=module, attrs=attrs,
        directory=shown if not shown.startswith("..") else directory)
