"""``extctl new``: project templates whose output passes its own tests on the first run.

Templates live in ``extctl/scaffold/templates/<template>/`` as ``*.tmpl`` files (so no tool
mistakes them for this project's code); ``{{name}}``, ``{{package}}`` and ``{{class_name}}``
are replaced, ``{{extkit_*}}`` say where envoy-extkit comes from (``source.py``: the install
command's argument, the README's paragraph, the image's wheel), and a path segment
``__package__`` becomes the package directory. The project is written to a temporary
directory beside the target and renamed into place, so a failure leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ScaffoldError, UsageError
from .source import ExtkitSource

WASM_LANGUAGES = ("wat", "assemblyscript")
TEMPLATES = ("extproc", *(f"wasm-{lang}" for lang in WASM_LANGUAGES))
"""Directory names under ``extctl/scaffold/templates/``."""
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")


@dataclass(frozen=True)
class ProjectNames:
    name: str
    """The project (and distribution) name: lower case, digits, '-'; given with '_', the
    '_' become '-' (``demo_proc``: distribution ``demo-proc``, package ``demo_proc``)."""

    def __post_init__(self) -> None:
        given = self.name
        object.__setattr__(self, "name", given.replace("_", "-"))
        if not _NAME.match(self.name) or self.name.endswith("-") or "--" in self.name:
            raise UsageError(f"project name {given!r}: use lower-case letters, digits and "
                             "single '-' or '_' (at most 41 characters), starting with a letter")
        package = self.package
        if keyword.iskeyword(package) or keyword.issoftkeyword(package):
            raise UsageError(f"project name {self.name!r}: {package} is a Python keyword")
        # The package (or, for Wasm projects, the helper modules beside it) must not shadow
        # a module the project imports: the standard library, envoy-extkit, its dependencies.
        if package in sys.stdlib_module_names or importlib.util.find_spec(package) is not None:
            raise UsageError(f"project name {self.name!r}: a module named {package} already "
                             "exists here and the project would shadow it; choose another")

    @property
    def package(self) -> str:
        return self.name.replace("-", "_")

    @property
    def class_name(self) -> str:
        return "".join(part.capitalize() for part in self.name.split("-"))

    def substitute(self, text: str) -> str:
        return (text.replace("{{name}}", self.name).replace("{{package}}", self.package)
                .replace("{{class_name}}", self.class_name)
                .replace("{{extkit_version}}", _extkit_version()))


def _extkit_version() -> str:
    from .. import __version__

    return __version__


def _substitute_source(text: str, source: ExtkitSource) -> str:
    arguments = source.pip_arguments
    return (text.replace("{{extkit_pip}}", f" {arguments}" if arguments else "")
            .replace("{{extkit_source}}", source.describe(_extkit_version()))
            .replace("{{extkit_wheel}}", source.wheel_hint))


# Package data drops dot-files; these template names become them.
_DOTFILES = {"gitignore": ".gitignore", "dockerignore": ".dockerignore"}


def template_files(template: str) -> dict[str, str]:
    """Relative path (``__package__`` kept) -> template text."""
    root = Path(__file__).resolve().parent / "templates" / template
    return {str(path.relative_to(root)).removesuffix(".tmpl"): path.read_text()
            for path in sorted(root.rglob("*.tmpl"))}


def new_project(template: str, name: str, parent: str | os.PathLike[str] = ".",
                source: ExtkitSource | None = None) -> Path:
    """Write the project ``name`` from ``template`` into ``parent/name``; return its path.

    ``source``: where the project's install command takes envoy-extkit from (default: where
    the running one was installed from)."""
    if template not in TEMPLATES:
        raise UsageError(f"unknown template {template!r}; one of {', '.join(TEMPLATES)}")
    names = ProjectNames(name)
    source = ExtkitSource.running() if source is None else source
    target = Path(parent) / name
    if target.exists():
        raise UsageError(f"{target} already exists: choose another name or remove it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        for relative, text in template_files(template).items():
            relative = _DOTFILES.get(relative, relative)
            path = staging / relative.replace("__package__", names.package)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_substitute_source(names.substitute(text), source))
            if relative.endswith(".sh"):
                path.chmod(0o755)
        _generate_configs(staging, names)
        staging.chmod(0o755)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _generate_configs(project: Path, names: ProjectNames) -> None:
    """Run the project's own generator (``python -m PACKAGE.deploy`` or ``python deploy.py``)
    for envoy-configs/, so what the project ships is what its code generates."""
    if (project / names.package / "deploy.py").exists():
        command = [sys.executable, "-m", f"{names.package}.deploy"]
    elif (project / "deploy.py").exists():
        command = [sys.executable, "deploy.py"]
    else:
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(project), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ScaffoldError(f"generating the project's envoy-configs failed: {last}")
